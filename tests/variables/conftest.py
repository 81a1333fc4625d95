"""The real Mosquitto of the telemetry tests, for the variables-on-MQTT test."""

from tests.telemetry.conftest import mosquitto  # noqa: F401 - a fixture, used by name
