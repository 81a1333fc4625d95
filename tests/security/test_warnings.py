"""What `check-config` warns about is also logged, once, when the gateway runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.app import _warn
from gateway.config import Settings
from tests.harness import REPO, GatewayProcess


def test_the_same_warnings_as_check_config(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(websocket={"listen": "0.0.0.0:9000"}, api={"token": ""})
    caplog.set_level("WARNING", "gateway")
    _warn(settings)
    logged = [r.getMessage() for r in caplog.records]
    assert any("security_profile = 0 on a non-loopback address" in m for m in logged)
    assert any("allow_unknown = true on a non-loopback address" in m for m in logged)
    assert any('api.token = ""' in m for m in logged)


def test_run_logs_them_once(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, {"chargers": {"CP1": {"password": "short"}}})
    gw.start()
    try:
        logs = gw.logs()
    finally:
        gw.stop()
    out = subprocess.run([sys.executable, "-m", "gateway", "check-config", "-c", str(gw.config_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    warnings = [line.removeprefix("warning: ") for line in out.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings
    for warning in warnings:
        assert logs.count(warning) == 1, (warning, logs)
