"""The telemetry tests' Mosquitto broker and InfluxDB (session-scoped, on free loopback ports)."""

from tests.telemetry.conftest import influx, mosquitto  # noqa: F401 - re-exported fixtures
