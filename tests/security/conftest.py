"""Certificates made once per test session with scripts/make-test-certs (openssl), and an in-process
gateway with a charger-facing TLS server."""

from __future__ import annotations

import contextlib
import shutil
import ssl
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from gateway.app import running
from gateway.config import Settings
from tests.harness import REPO, free_port

CHARGERS = ("CP2", "CP3", "CP3B", "MIX3")


@dataclass
class Certs:
    dir: Path
    rogue: Path  # another CA, with a certificate that also says CN=CP3

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def client(self, charger_id: str | None = None, *, rogue: bool = False,
               maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        """What a charger uses: trusts the test CA; presents `charger_id`'s certificate if given."""
        ctx = ssl.create_default_context(cafile=self.path("ca.pem"))
        if charger_id:
            base = (self.rogue if rogue else self.dir) / charger_id
            ctx.load_cert_chain(f"{base}.pem", f"{base}.key")
        if maximum is not None:
            with warnings.catch_warnings():  # old TLS versions on purpose
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = ssl.TLSVersion.TLSv1
                ctx.maximum_version = maximum
        return ctx

    def server(self, require_client: bool = True) -> ssl.SSLContext:
        """What a profile-3 CSMS uses: the test server certificate, client certificates from the CA."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.path("server.pem"), self.path("server.key"))
        ctx.load_verify_locations(self.path("ca.pem"))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_NONE
        return ctx


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    base = tmp_path_factory.mktemp("certs")
    script = str(REPO / "scripts" / "make-test-certs")
    subprocess.run([script, str(base / "ca"), *CHARGERS], check=True, capture_output=True, timeout=60)
    subprocess.run([script, str(base / "rogue"), "CP3"], check=True, capture_output=True, timeout=60)
    return Certs(base / "ca", base / "rogue")


def tls_settings(certs: Certs, profile: int) -> dict[str, Any]:
    return {"security_profile": profile, "tls_cert": certs.path("server.pem"), "tls_key": certs.path("server.key"),
            "tls_ca": certs.path("ca.pem")}


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, **config: Any) -> AsyncIterator[Any]:
    """The real gateway in this test's event loop; `gw.url(id)` is ws:// or wss:// as configured."""
    base: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "websocket": {"listen": f"127.0.0.1:{free_port()}"},
        "api": {"listen": f"127.0.0.1:{free_port()}"},
        "logging": {"level": "DEBUG"},
    }
    for k, v in config.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and k in base else v
    settings = Settings(**base)
    scheme = "wss" if settings.websocket.security_profile >= 2 else "ws"
    async with running(settings) as gw:
        gw.url = lambda cid: f"{scheme}://127.0.0.1:{gw.ws_port}/ocpp/{cid}"
        yield gw


# -- figures of the attack tests (test_attacks.py), printed at the end of the run -----------------------

FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("attacks on the site LAN: figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
