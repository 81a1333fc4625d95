"""Sans-I/O OCPP-J protocol core: framing, error codes, schemas, the one-outstanding-CALL queue."""
