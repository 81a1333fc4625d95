"""Real processes for the lifecycle tests: gateways (tests/harness.py) and one Mosquitto per test
(the broker's log shows which client ids connected and which took over another)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.harness import REPO, GatewayProcess
from tests.telemetry.services import MOSQUITTO, Mosquitto, need


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    need(MOSQUITTO, "mosquitto")
    server = Mosquitto(tmp_path / "mosquitto", extra=("log_type information",)).start()
    yield server
    server.stop()


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Gateway processes (not started: call .start()); all are stopped by PID after the test."""
    made: list[GatewayProcess] = []

    def make(config: dict[str, Any] | None = None, name: str = "gw") -> GatewayProcess:
        gw = GatewayProcess(tmp_path, config, name=name)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.stop()


def run_once(config_path: Path, *args: str, timeout: float = 60.0, env: dict[str, str] | None = None,
             command: str = "run") -> subprocess.CompletedProcess[str]:
    """`python -m gateway COMMAND -c FILE ARGS` to its end (a start that must fail, a store command)."""
    import os

    return subprocess.run([sys.executable, "-m", "gateway", command, "-c", str(config_path), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        time.sleep(0.05)
