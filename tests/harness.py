"""Test harness: run the real gateway as a child process on free loopback ports.

Every process a test starts here is stopped by its PID when the test ends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# compiled schema validators shared by the gateways of one test run (set by tests/conftest.py; each
# would otherwise compile ~390 schemas, seconds of CPU beside the test, in its own data_dir/cache)
SHARED_CACHE: list[Path] = []


def _port_range() -> tuple[int, int]:
    """Ports the kernel never hands out on its own: below its ephemeral range (Linux: 32768-60999)
    or, when that leaves too few, above it."""
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    if low - 1 - 10_000 >= 1024:
        return low - 1 - 10_000, low - 1
    return high + 1, 65535


def _worker_slice(low: int, high: int) -> tuple[int, int]:
    """With the suite spread over processes (pytest-xdist: PYTEST_XDIST_WORKER "gw0", "gw1", ...),
    each takes its own slice of the range, so two never check and hand out the same port."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 1):
        return low, high
    size = (high - low) // int(count)
    start = low + size * (int(worker[2:]) % int(count))
    return start, start + size


_PORTS = _worker_slice(*_port_range())
_next_port = [_PORTS[0] + (os.getpid() * 7919) % (_PORTS[1] - _PORTS[0])]


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, for a server a test is about to start.

    Not one the kernel picks (bind to port 0): the kernel gives the same ports to outgoing
    connections, and the tests open thousands, so between this call and the server's bind one of
    them could take it (EADDRINUSE at listen). These come from outside the ephemeral range, in
    turn (a port is not given twice in a run until the range wraps), each checked by a bind and
    listen here."""
    low, high = _PORTS
    for _ in range(high - low):
        port = _next_port[0]
        _next_port[0] = low + (port + 1 - low) % (high - low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
                s.listen(1)
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_toml(path: Path, config: dict[str, Any]) -> None:
    """Write a (two-level, plus [chargers.ID]) config dict as TOML."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in config.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables:
        if name == "chargers":
            for cid, ctable in table.items():
                lines.append(f'\n[chargers."{cid}"]')
                lines.extend(f"{k} = {_toml_value(v)}" for k, v in ctable.items())
            continue
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
    path.write_text("\n".join(lines) + "\n")


class GatewayProcess:
    """The gateway started with `python -m gateway run -c FILE` on free ports.

    `config` is merged over a test baseline (websocket on a free loopback port, data_dir
    under `tmp_path`, standalone). `url(charger_id)` gives the charger-facing URL.
    """

    def __init__(self, tmp_path: Path, config: dict[str, Any] | None = None, name: str = "gw") -> None:
        self.dir = tmp_path / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ws_port = free_port()
        base: dict[str, Any] = {
            "site_id": "testsite",
            "data_dir": str(self.dir / "data"),
            "websocket": {"listen": f"127.0.0.1:{self.ws_port}", "path": "/ocpp"},
            "api": {"listen": f"127.0.0.1:{free_port()}"},
            "logging": {"level": "DEBUG", "format": "text"},
        }
        if SHARED_CACHE:
            base["cache_dir"] = str(SHARED_CACHE[0])
        for key, value in (config or {}).items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        self.config = base
        self.config_path = self.dir / "gateway.toml"
        write_toml(self.config_path, base)
        self.log_path = self.dir / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, charger_id: str) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ocpp/{charger_id}"

    def start(self, timeout: float = 15.0, env: dict[str, str] | None = None) -> "GatewayProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(self.config_path)],
            cwd=str(REPO),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ws_port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gateway not healthy within {timeout}s:\n{self.logs()}")

    def api_token(self) -> str:
        """The API token the gateway generated into its data_dir (or the configured one)."""
        configured = self.config.get("api", {}).get("token")
        if configured is not None:
            return str(configured)
        return (Path(self.config["data_dir"]) / "api-token").read_text().strip()

    def api(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
        """One request to the gateway's REST API with its token; (status, parsed JSON or text)."""
        import json

        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://{self.config['api']['listen']}{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.api_token()}")
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            status, raw, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
        return status, json.loads(raw or b"null") if ctype.startswith("application/json") else raw.decode()

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not stop in time. Returns the exit code."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode
