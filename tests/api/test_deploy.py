"""Deployment files: the systemd unit is valid (systemd-analyze, where installed) and stops the
gateway with SIGTERM; the Docker image's HEALTHCHECK asks /healthz through `ocpp-gateway health`;
the compose stack publishes the API with the token from `.env` (a gateway started with the compose
environment serves it); the lock files pin every dependency with hashes and are what the scripts and
the image install; the package builds with SPDX licence metadata and no deprecation warning."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tests.harness import REPO, GatewayProcess, free_port

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


# ----------------------------------------------------------------------------------- compose + .env

def _dotenv(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, as `docker compose` reads them."""
    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"{name} is required by compose.yaml ({arg}) but docker/.env.example does not set it")
        return arg if op == ":-" else ""
    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)


def test_compose_publishes_the_api_with_the_token_from_dotenv(tmp_path: Path) -> None:
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    dotenv = _dotenv(REPO / "docker" / ".env.example")
    gw = compose["services"]["gateway"]
    ports = [_interpolate(str(p), dotenv).split("#")[0].strip() for p in gw["ports"]]
    assert "8080:8080" in ports, ports  # the API's container port, published
    env = {k: _interpolate(str(v), dotenv) for k, v in gw["environment"].items()}
    assert env["OCPPGW_API__LISTEN"] == "0.0.0.0:8080"
    assert env["OCPPGW_API__TOKEN"] == dotenv["API_TOKEN"] and len(dotenv["API_TOKEN"]) >= 20

    # a gateway with the compose environment (on a free loopback port instead of 0.0.0.0:8080, and
    # without the stack's broker and InfluxDB, which are host names of the compose network)
    api_port = free_port()
    env = {k: v for k, v in env.items() if not k.startswith(("OCPPGW_MQTT__", "OCPPGW_INFLUX__"))}
    env["OCPPGW_API__LISTEN"] = f"127.0.0.1:{api_port}"
    proc = GatewayProcess(tmp_path, {"api": {"listen": "127.0.0.1:1"}})  # the environment wins over the file
    proc.start(env=env)
    try:
        base = f"http://127.0.0.1:{api_port}"

        def get(path: str, token: str | None = None, host: str | None = None) -> int:
            request = urllib.request.Request(base + path)
            if token:
                request.add_header("Authorization", f"Bearer {token}")
            if host:
                request.add_header("Host", host)
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    return int(r.status)
            except urllib.error.HTTPError as exc:
                return int(exc.code)

        assert get("/healthz") == 200
        assert get("/api/v1/chargers") == 401
        assert get("/api/v1/chargers", dotenv["API_TOKEN"]) == 200
        assert get("/metrics", dotenv["API_TOKEN"]) == 200
        assert get("/api/v1/chargers", dotenv["API_TOKEN"], host="gateway.example:8080") == 421  # API_ALLOWED_HOSTS=[]
        assert not (proc.dir / "data" / "api-token").exists()  # the .env token is used, none generated
    finally:
        proc.stop()


# ---------------------------------------------------------------------------------------- lock files

def _pins(path: Path) -> dict[str, tuple[str, int]]:
    """{name: (version, number of hashes)} of a pip-compile --generate-hashes file."""
    text = path.read_text()
    out: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        m = re.match(r"([A-Za-z0-9_.-]+)==([^ ;\\\n]+)", block)
        if m:
            out[canonicalize_name(m.group(1))] = (m.group(2), block.count("--hash=sha256:"))
    return out


def test_lock_files_pin_every_dependency_with_hashes() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    runtime = _pins(REPO / "requirements.lock")
    full = _pins(REPO / "requirements-test.lock")
    wanted = {"requirements.lock": (runtime, project["project"]["dependencies"] + project["build-system"]["requires"]),
              "requirements-test.lock": (full, project["project"]["dependencies"] + project["build-system"]["requires"]
                                         + [r for extra in ("test", "bench")
                                            for r in project["project"]["optional-dependencies"][extra]])}
    regenerate = "run scripts/lock (then scripts/test) and commit pyproject.toml with both lock files"
    for name, (pins, requirements) in wanted.items():
        for text in requirements:
            req = Requirement(text)
            key = canonicalize_name(req.name)
            assert key in pins, f"{req.name} (pyproject.toml) is not pinned in {name}: {regenerate}"
            version, hashes = pins[key]
            assert SpecifierSet(str(req.specifier)).contains(version, prereleases=True), \
                f"{name} pins {req.name}=={version}, outside pyproject.toml's {req.specifier}: {regenerate}"
        assert all(n >= 1 for _, n in pins.values()), f"{name}: a pin without --hash"
    # both files name the same version of every package they share
    assert {k: v[0] for k, v in runtime.items()} == {k: full[k][0] for k in runtime}


def test_scripts_and_image_install_from_the_lock_files() -> None:
    run = (REPO / "scripts" / "run").read_text()
    test = (REPO / "scripts" / "test").read_text()
    image = (REPO / "docker" / "Dockerfile").read_text()
    assert "pip install --quiet --require-hashes -r requirements.lock" in run
    assert "pip install --quiet --require-hashes -r requirements-test.lock" in test
    assert "pip install --no-cache-dir --require-hashes -r requirements.lock" in image
    for text in (run, test, image):  # then the project alone, built with the locked setuptools
        assert re.search(r"pip install .*--no-deps --no-build-isolation", text)
    # the image holds every package the project ships and the files its build needs
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in include:
        assert f"COPY {pattern.rstrip('*')} ./{pattern.rstrip('*')}" in image, pattern
    assert "COPY pyproject.toml README.md LICENSE ./" in image and "COPY requirements.lock ./" in image


# ------------------------------------------------------------------------------------------ licence

def test_package_builds_with_spdx_licence_and_no_deprecation_warning(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                             "data", ".mypy_cache", ".ruff_cache", ".pytest_cache"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "deprecated" not in output.lower(), [line for line in output.splitlines() if "deprecat" in line.lower()]
    wheel = next((tmp_path / "dist").glob("ocpp_site_gateway-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        names = z.namelist()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert any(n.startswith("simulator/") for n in names) and any(n.startswith("adapters/static/") for n in names)

