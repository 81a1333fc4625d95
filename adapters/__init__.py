"""Adapters: one outside technology each, behind a port defined in `gateway.ports`."""
