"""Real services on loopback for the telemetry tests: Mosquitto, InfluxDB 1.x, a paho subscriber,
and a small InfluxDB v2 write endpoint that forwards into the real InfluxDB.

Every process is started here on a free port and stopped by its PID.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.harness import free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
# Started as root, mosquitto drops to the `mosquitto` user, which cannot read the test's private
# temporary directory (persistence, keys): keep it as the user who runs the tests.
_RUN_AS = ["user root"] if os.geteuid() == 0 else []
INFLUXD = shutil.which("influxd") or "/usr/bin/influxd"


def need(binary: str, package: str) -> None:
    """Skip the test when a service binary is missing (scripts/test installs the packages)."""
    import pytest

    path = binary if os.path.isabs(binary) else shutil.which(binary)
    if not path or not os.access(path, os.X_OK):
        pytest.skip(f"{binary} not installed (Debian package {package}; scripts/test installs it)")


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.05)


class _Process:
    proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        """SIGTERM the process we started (by PID), SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def shipped_broker_settings() -> tuple[str, ...]:
    """The settings of the compose stack's broker (docker/mosquitto.conf) without its listener,
    storage and access lines, which a test or bench broker sets itself."""
    from tests.harness import REPO

    lines = [line.strip() for line in (REPO / "docker" / "mosquitto.conf").read_text().splitlines()]
    return tuple(line for line in lines if line and not line.startswith("#") and line.split()[0] not in
                 ("listener", "persistence", "persistence_location", "allow_anonymous"))


class Mosquitto(_Process):
    """`mosquitto -c conf` on 127.0.0.1:port, anonymous, with persistence (so a subscriber's
    persistent session and its queued QoS 1 messages survive a broker restart)."""

    def __init__(self, directory: Path, extra: tuple[str, ...] = ()) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join([
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.dir}/",
            "autosave_interval 1",
            f"log_dest file {self.dir / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_queued_messages 100000",
            *extra,
            *_RUN_AS,
            "",
        ]))

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "Mosquitto":
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self


class Influx(_Process):
    """InfluxDB 1.x (`influxd run -config conf`) with meta/data/wal under `directory`."""

    def __init__(self, directory: Path, auth: bool = False) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.auth: tuple[str, str] | None = None
        rpc = free_port()
        self.conf = self.dir / "influxdb.conf"
        self.conf.write_text(f"""
reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{self.dir}/meta"
[data]
  dir = "{self.dir}/data"
  wal-dir = "{self.dir}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
  auth-enabled = {"true" if auth else "false"}
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
""")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Influx":
        log = open(self.dir / "influxd.log", "ab")
        self.proc = subprocess.Popen([INFLUXD, "run", "-config", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as r:
                    if r.status == 204:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"influxd did not start: {(self.dir / 'influxd.log').read_text()[-2000:]}")
            time.sleep(0.1)

    def q(self, query: str, db: str | None = None) -> dict[str, Any]:
        params = {"q": query, "epoch": "ns"}
        if db:
            params["db"] = db
        request = urllib.request.Request(f"{self.url}/query", data=urllib.parse.urlencode(params).encode())
        if self.auth:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.loads(r.read())

    def create_admin(self, user: str, password: str) -> None:
        """With auth-enabled, the first user must be an admin (InfluxDB allows creating it unauthenticated)."""
        self.q(f"CREATE USER \"{user}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES")
        self.auth = (user, password)

    def create_db(self, name: str) -> None:
        self.q(f'CREATE DATABASE "{name}"')

    def rows(self, db: str, query: str) -> list[dict[str, Any]]:
        """The rows of a SELECT as dicts (column -> value)."""
        out: list[dict[str, Any]] = []
        for result in self.q(query, db).get("results", []):
            for series in result.get("series", []) or []:
                for values in series["values"]:
                    row = dict(zip(series["columns"], values))
                    row.update(series.get("tags") or {})
                    out.append(row)
        return out


class Subscriber:
    """An independent paho client that records every message it gets (topic, payload, retain)."""

    def __init__(self, port: int, topics: list[str], *, client_id: str = "", persistent: bool = False,
                 v5: bool = False) -> None:
        self.messages: list[paho.MQTTMessage] = []
        self._lock = threading.Lock()
        self.topics = topics
        self.connected = threading.Event()
        protocol = paho.MQTTv5 if v5 else paho.MQTTv311
        kwargs: dict[str, Any] = {"client_id": client_id, "protocol": protocol}
        if not v5:
            kwargs["clean_session"] = not persistent
        self.client = paho.Client(CallbackAPIVersion.VERSION2, **kwargs)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.connected.wait(5), "subscriber did not connect"

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        for t in self.topics:
            client.subscribe(t, qos=1)
        time.sleep(0.05)
        self.connected.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def on(self, topic: str) -> list[paho.MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def json(self, topic: str) -> list[Any]:
        return [json.loads(m.payload) for m in self.on(topic) if m.payload]

    def last(self, topic: str, timeout: float = 10.0) -> Any:
        wait_for(lambda: self.json(topic), timeout, f"a message on {topic}")
        return self.json(topic)[-1]

    def topics_seen(self) -> set[str]:
        with self._lock:
            return {m.topic for m in self.messages}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class V2WriteEndpoint:
    """A stand-in for InfluxDB 2's write API (InfluxDB 1.6 has no /api/v2/write): aiohttp serving
    `POST /api/v2/write?org=&bucket=&precision=` with `Authorization: Token ...`; it checks token, org,
    bucket and precision, un-gzips the body, and forwards the line protocol to the real InfluxDB
    1.x `/write?db=<bucket>&precision=<precision>`, so the points can be read back from the real
    database. Runs in its own thread with its own event loop."""

    def __init__(self, influx: Influx, token: str, org: str, bucket: str) -> None:
        self.influx, self.token, self.org, self.bucket = influx, token, org, bucket
        self.port = free_port()
        self.requests: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self._stop: Any = None
        self._thread = threading.Thread(target=self._main, daemon=True, name="v2-write-endpoint")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "V2WriteEndpoint":
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def _main(self) -> None:
        import asyncio

        from aiohttp import ClientSession, web

        async def write(request: web.Request) -> web.Response:
            q = request.query
            auth = request.headers.get("Authorization", "")
            body = await request.read()
            gzipped = request.headers.get("Content-Encoding", "") == "gzip"
            self.requests.append({"query": dict(q), "auth": auth, "gzip": gzipped})
            if auth != f"Token {self.token}":
                return web.json_response({"code": "unauthorized", "message": "unauthorized access"}, status=401)
            if q.get("org") != self.org:
                return web.json_response({"code": "not found", "message": f"organization {q.get('org')!r} not found"},
                                         status=404)
            if q.get("bucket") != self.bucket:
                return web.json_response({"code": "not found", "message": "bucket not found"}, status=404)
            precision = q.get("precision", "ns")
            if precision not in ("ns", "us", "ms", "s"):
                return web.json_response({"code": "invalid", "message": "bad precision"}, status=400)
            if gzipped and body[:2] == b"\x1f\x8b":  # aiohttp usually inflates Content-Encoding: gzip itself
                body = gzip.decompress(body)
            async with ClientSession() as s:
                async with s.post(f"{self.influx.url}/write", params={"db": self.bucket, "precision": precision},
                                  data=body) as r:
                    text = await r.text()
                    if r.status != 204:
                        return web.json_response({"code": "invalid", "message": text}, status=r.status)
            return web.Response(status=204)

        async def run() -> None:
            app = web.Application()
            app.router.add_post("/api/v2/write", write)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._stop = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

        asyncio.run(run())

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
