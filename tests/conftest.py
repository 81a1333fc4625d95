from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.harness import SHARED_CACHE, GatewayProcess


def pytest_configure(config: pytest.Config) -> None:
    SHARED_CACHE.append(Path(tempfile.mkdtemp(prefix="ocppgw-test-cache-")))


def pytest_unconfigure(config: pytest.Config) -> None:
    while SHARED_CACHE:
        shutil.rmtree(SHARED_CACHE.pop(), ignore_errors=True)


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Start gateways (child processes) with config overrides; all are stopped after the test."""
    started: list[GatewayProcess] = []

    def start(config: dict[str, Any] | None = None, name: str = "gw", **kw: Any) -> GatewayProcess:
        gw = GatewayProcess(tmp_path, config, name=name)
        started.append(gw)
        return gw.start(**kw)

    yield start
    for gw in started:
        gw.stop()
