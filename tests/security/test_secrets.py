"""No secret in logs, the traffic journal, `check-config` output or error messages: a gateway process
with every kind of secret configured, driven through good and failed logins, an operator call that
sets a charger's AuthorizationKey, unreachable MQTT and InfluxDB (connection errors logged), and
API requests with and without the token. Also: the REST API requires its token beyond loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.security import basic_header
from tests.e2e.rawpeers import RawCsms
from tests.harness import REPO, GatewayProcess, free_port

PW = "Charger-Pass-7f3a9c21"
KEY16 = "A1B2C3D4E5F60718293A4B5C6D7E8F9012345678"
NEW_KEY = "FEDCBA98765432100123456789ABCDEFFEDCBA98"
WRONG = "Wrong-Guess-5e6f7a8b9c"
UP_PW = "Upstream-Pass-0d1e2f3a4b"
API_TOKEN = "Api-Token-9988776655aabb"
MQTT_PW = "Mqtt-Pass-1a2b3c4d5e"
INFLUX_TOKEN = "Influx-Token-6f7e8d9c0b"
SECRETS = [PW, KEY16, NEW_KEY, WRONG, UP_PW, API_TOKEN, MQTT_PW, INFLUX_TOKEN]


def forms(secret: str) -> list[str]:
    """A secret as it could show up: itself, lower case, in a Basic header (with any id), as hex bytes."""
    out = [secret, secret.lower()]
    for user in ("S1", "S16", "UNKNOWN"):
        out.append(base64.b64encode(f"{user}:{secret}".encode()).decode()[8:])  # past the id's own bytes
    try:
        raw = bytes.fromhex(secret)
        out += [base64.b64encode(b"S16:" + raw).decode()[4:], raw.hex()]
    except ValueError:
        pass
    return out


def api(port: int, path: str, token: str | None = None, body: Any = None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=None if body is None else json.dumps(body).encode(),
                                 method="GET" if body is None else "POST", headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_no_secret_leaks(gateway_factory: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    api_port = free_port()
    def answer(text: str) -> str | None:
        msg = orjson.loads(text)
        if msg[0] != 2:
            return None
        return orjson.dumps([3, msg[1], {"currentTime": "2026-01-01T00:00:00Z", "interval": 300,
                                         "status": "Accepted"}]).decode()

    async with RawCsms(answer) as csms:
        config = {
            "websocket": {"security_profile": 1, "max_auth_failures": 100},
            "upstream": {"url": csms.url, "connect_timeout": 2.0},
            "api": {"listen": f"0.0.0.0:{api_port}", "token": API_TOKEN},
            "mqtt": {"url": f"mqtt://gw:{MQTT_PW}@127.0.0.1:{free_port()}", "reconnect_min": 0.2, "reconnect_max": 0.5},
            "influx": {"url": f"http://127.0.0.1:{free_port()}", "org": "o", "bucket": "b", "token": INFLUX_TOKEN,
                       "retry_min": 0.2, "retry_max": 0.5, "flush_interval": 0.1},
            "logging": {"level": "DEBUG", "journal": str(tmp_path / "journal.jsonl")},
            "chargers": {"S1": {"password": PW, "upstream_password": UP_PW}, "S16": {"password": KEY16}},
        }
        gw = gateway_factory(config)

        # the API beyond loopback: token required (everything but health, page and OpenAPI)
        assert api(api_port, "/api/v1/chargers")[0] == 401
        assert api(api_port, "/api/v1/chargers", token=WRONG)[0] == 401
        assert api(api_port, "/metrics")[0] == 401
        assert api(api_port, "/api/v1/chargers", token=API_TOKEN)[0] == 200

        # logins: right, wrong password, someone else's id, unknown id
        async with connect(gw.url("S1"), subprotocols=["ocpp2.0.1"],
                           additional_headers={"Authorization": basic_header("S1", PW)}) as ws:
            await ws.send('[2,"b1","BootNotification",{"reason":"PowerUp","chargingStation":{"model":"M","vendorName":"V"}}]')
            (conn,) = await csms.wait_connections(1)
            assert conn.headers["Authorization"] == basic_header("S1", UP_PW)
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))[0] == 3
        for cid, header in (("S1", basic_header("S1", WRONG)), ("S1", basic_header("S16", KEY16)),
                            ("UNKNOWN", basic_header("UNKNOWN", PW)), ("S16", basic_header("S16", WRONG))):
            try:
                async with connect(gw.url(cid), subprotocols=["ocpp2.0.1"], additional_headers={"Authorization": header}):
                    raise AssertionError("connected")
            except InvalidStatus as exc:
                assert exc.response.status_code == 401
                assert not any(s.encode() in (exc.response.body or b"") for s in SECRETS)

        # a 1.6 charger with its AuthorizationKey; the operator sets a new key through the API
        async with connect(gw.url("S16"), subprotocols=["ocpp1.6"],
                           additional_headers={"Authorization": basic_header("S16", bytes.fromhex(KEY16))}) as ws:
            await ws.send('[2,"b1","BootNotification",{"chargePointVendor":"ACME","chargePointModel":"M1"}]')
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))[0] == 3
            async def charger() -> None:
                async for message in ws:
                    msg = orjson.loads(message)
                    if msg[0] == 2:
                        await ws.send(orjson.dumps([3, msg[1], {"status": "Accepted"}]).decode())

            task = asyncio.create_task(charger())
            status, body = await asyncio.to_thread(api, api_port, "/api/v1/chargers/S16/calls/ChangeConfiguration",
                                                   API_TOKEN, {"key": "AuthorizationKey", "value": NEW_KEY})
            task.cancel()
            assert status == 200, body
        await asyncio.sleep(1.5)  # MQTT and InfluxDB reconnect attempts fail and are logged meanwhile
        assert gw.stop() == 0
        logs = gw.logs()
        journal = (tmp_path / "journal.jsonl").read_text() if (tmp_path / "journal.jsonl").exists() else ""

    assert "authentication of 'S1'" in logs and "ChangeConfiguration" in journal + logs  # there is something to search
    assert "mqtt" in logs.lower() and "influx" in logs.lower()

    # check-config with the same secrets
    out = subprocess.run([sys.executable, "-m", "gateway", "check-config", "-c", str(gw.config_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    # and a configuration error next to the secrets
    bad = tmp_path / "bad.toml"
    bad.write_text(gw.config_path.read_text().replace("security_profile = 1", "security_profile = 9"))
    err = subprocess.run([sys.executable, "-m", "gateway", "check-config", "-c", str(bad)], cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    assert err.returncode == 2 and "websocket.security_profile" in err.stderr

    for name, text in (("logs", logs), ("journal", journal), ("check-config", out.stdout + out.stderr),
                       ("config error", err.stdout + err.stderr)):
        for secret in SECRETS:
            for form in forms(secret):
                assert form not in text, f"{secret!r} (as {form!r}) appears in {name}"


def test_api_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[api]\nlisten = "0.0.0.0:8080"\ntoken = ""\n')
    out = subprocess.run([sys.executable, "-m", "gateway", "check-config", "-c", str(cfg)], cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "api.token" in out.stderr
