"""The telemetry tests' Mosquitto broker (session-scoped, on a free loopback port)."""

from tests.telemetry.conftest import mosquitto  # noqa: F401 - re-exported fixture
