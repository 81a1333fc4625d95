"""Relay benchmark for the OCPP site gateway: `python -m bench.relay` (see bench/README.md)."""
