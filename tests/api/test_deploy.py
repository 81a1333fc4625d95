"""Deployment files: the systemd unit is valid (systemd-analyze, where installed) and stops the
gateway with SIGTERM; the Docker image's HEALTHCHECK asks /healthz through `ocpp-gateway health`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness import REPO

UNIT = REPO / "config" / "ocpp-gateway.service"
BINARY = "/opt/ocpp-gateway/.venv/bin/ocpp-gateway"


def test_systemd_unit_runs_the_gateway_and_stops_it_with_sigterm() -> None:
    text = UNIT.read_text()
    assert f"ExecStart={BINARY} run -c /etc/ocpp-gateway/gateway.toml" in text
    assert "KillSignal=SIGTERM" in text and "RestartPreventExitStatus=2" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    fake = tmp_path / "ocpp-gateway"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    unit = tmp_path / "ocpp-gateway.service"
    unit.write_text(UNIT.read_text().replace(BINARY, str(fake)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_docker_healthcheck_uses_healthz() -> None:
    text = (REPO / "docker" / "Dockerfile").read_text()
    assert 'HEALTHCHECK' in text and '"ocpp-gateway", "health"' in text
    expose = next(line for line in text.splitlines() if line.startswith("EXPOSE"))
    assert "8080" in expose.split() and "9000" in expose.split()
