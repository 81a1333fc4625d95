"""Session-scoped real services for the telemetry tests (started on free loopback ports, stopped by PID)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.telemetry.services import INFLUXD, MOSQUITTO, Influx, Mosquitto
from tests.telemetry.services import need as _need


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    _need(MOSQUITTO, "mosquitto")
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influx]:
    _need(INFLUXD, "influxdb")
    server = Influx(tmp_path_factory.mktemp("influxdb")).start()
    yield server
    server.stop()


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker for one test (for tests that stop and restart it)."""
    _need(MOSQUITTO, "mosquitto")
    broker = Mosquitto(tmp_path / "own-mosquitto").start()
    yield broker
    broker.stop()


@pytest.fixture
def own_influx(tmp_path: Path) -> Iterator[Influx]:
    """An InfluxDB for one test (for tests that stop and restart it)."""
    _need(INFLUXD, "influxdb")
    server = Influx(tmp_path / "own-influxdb").start()
    yield server
    server.stop()
