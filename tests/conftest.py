from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.harness import GatewayProcess


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
