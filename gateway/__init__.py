"""OCPP site gateway: the core. Knows OCPP and the gateway's rules; imports no transport library."""

__version__ = "0.2.0"
