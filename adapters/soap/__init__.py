"""OCPP-S (SOAP 1.5 and 1.6) chargers: server, codec, generated contract and 1.5 <-> 1.6 conversion."""
