"""Helpers for the operations tests: an in-process gateway with its API on free loopback ports,
chargers built on the `ocpp` package, and an HTTP client that checks every answer against the
OpenAPI document the gateway serves."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import jsonschema
import orjson
from ocpp.routing import on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.client import connect

from gateway.app import running
from gateway.config import Settings
from tests.harness import free_port


async def until(condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def inproc(tmp_path: Path, **config: Any) -> AsyncIterator[Any]:
    """The real gateway in this test's event loop, charger port and API on free loopback ports."""
    base: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "websocket": {"listen": f"127.0.0.1:{free_port()}"},
        "api": {"listen": f"127.0.0.1:{free_port()}"},
    }
    for k, v in config.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and k in base else v
    async with running(Settings(**base)) as gw:
        assert gw.api is not None, "the API did not start"
        gw.url = lambda cid: f"ws://127.0.0.1:{gw.ws_port}/ocpp/{cid}"
        gw.api_url = f"http://127.0.0.1:{gw.api.port}"
        gw.api_token = gw.api.token  # configured, or generated into data_dir (adapters/api_guard.py)
        TOKENS[gw.api_url] = gw.api_token
        try:
            yield gw
        finally:
            TOKENS.pop(gw.api_url, None)


TOKENS: dict[str, str] = {}  # API base URL -> its token, for api_client(base) without token=


# -- the OpenAPI check ----------------------------------------------------------------------------


class OpenApi:
    """Finds the documented response for (method, path, status) and validates a body against it."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.checked: set[tuple[str, str, int]] = set()
        self._paths = []
        for template in doc["paths"]:
            pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
            self._paths.append((re.compile(pattern), template))

    def template(self, path: str) -> str:
        for pattern, template in self._paths:
            if pattern.match(path):
                return template
        raise AssertionError(f"{path} is not in the OpenAPI document")

    def check(self, method: str, path: str, status: int, content_type: str, body: bytes) -> None:
        template = self.template(path.split("?", 1)[0])
        operation = self.doc["paths"][template].get(method.lower())
        assert operation is not None, f"{method} {template} is not documented"
        response = operation["responses"].get(str(status))
        assert response is not None, f"{method} {template} -> {status} is not documented"
        media = content_type.split(";")[0].strip()
        assert media in response["content"], f"{method} {template} -> {status}: {media} is not documented"
        schema = response["content"][media]["schema"]
        if media == "application/json":
            root = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                    "components": self.doc["components"], **schema}
            jsonschema.Draft202012Validator(root).validate(orjson.loads(body))
        self.checked.add((method.upper(), template, status))


class Api:
    """aiohttp client for the gateway's API; every answer is checked against the OpenAPI doc."""

    def __init__(self, base: str, openapi: OpenApi, token: str | None = None) -> None:
        self.base = base
        self.openapi = openapi
        self.token = token
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))

    async def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                      token: str | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        hdrs = dict(headers or {})
        tok = token if token is not None else self.token
        if method.upper() in ("POST", "PUT", "PATCH", "DELETE"):
            hdrs.setdefault("Content-Type", "application/json")  # the API refuses other writes
        if tok:
            hdrs["Authorization"] = f"Bearer {tok}"
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        async with self.http.request(method, self.base + path, data=data, headers=hdrs) as r:
            content = await r.read()
            ctype = r.headers.get("Content-Type", "")
            self.openapi.check(method, path, r.status, ctype, content)
            parsed = orjson.loads(content) if ctype.startswith("application/json") else content.decode()
            return r.status, parsed, dict(r.headers)

    async def get(self, path: str, **kw: Any) -> tuple[int, Any, dict[str, str]]:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any, dict[str, str]]:
        return await self.request("POST", path, body, **kw)

    async def close(self) -> None:
        await self.http.close()


@contextlib.asynccontextmanager
async def api_client(base: str, token: str | None = None) -> AsyncIterator[Api]:
    """A client of the API at `base`, presenting `token` (default: the token of the gateway
    `inproc` started there; "" = none)."""
    token = TOKENS.get(base) if token is None else token
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/api/v1/openapi.json") as r:
            assert r.status == 200
            doc = await r.json()
    api = Api(base, OpenApi(doc), token)
    try:
        yield api
    finally:
        await api.close()


# -- chargers (the `ocpp` package) ----------------------------------------------------------------


class Charger16(Cp16):
    """Answers Reset (Accepted) and GetConfiguration (after `slow` seconds); everything else gets
    the ocpp package's own CALLERROR NotImplemented (no handler)."""

    slow = 0.0
    resets: list[str]

    @on("Reset")
    async def on_reset(self, type: str) -> Any:  # noqa: A002 - the OCPP field name
        self.resets.append(type)
        return result16.Reset(status="Accepted")

    @on("GetConfiguration")
    async def on_get_configuration(self, **kw: Any) -> Any:
        await asyncio.sleep(self.slow)
        return result16.GetConfiguration(configuration_key=[{"key": "HeartbeatInterval", "readonly": False,
                                                              "value": "300"}])

    async def boot(self) -> Any:
        return await self.call(call16.BootNotification(charge_point_vendor="ACME", charge_point_model="Wallbox 7"))

    async def status(self, connector: int, status: str, error: str = "NoError") -> Any:
        return await self.call(call16.StatusNotification(connector_id=connector, error_code=error, status=status))

    async def start_tx(self, connector: int, id_tag: str = "TAG1", meter_start: int = 1000) -> Any:
        return await self.call(call16.StartTransaction(connector_id=connector, id_tag=id_tag, meter_start=meter_start,
                                                       timestamp=_now()))

    async def meter(self, connector: int, transaction_id: int, power_w: float, energy_wh: float) -> Any:
        return await self.call(call16.MeterValues(connector_id=connector, transaction_id=transaction_id, meter_value=[{
            "timestamp": _now(),
            "sampledValue": [
                {"value": str(power_w / 1000), "measurand": "Power.Active.Import", "unit": "kW"},
                {"value": str(energy_wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            ]}]))


class Charger201(Cp201):
    @on("Reset")
    async def on_reset(self, type: str, **kw: Any) -> Any:  # noqa: A002
        return result201.Reset(status="Accepted")

    async def boot(self) -> Any:
        return await self.call(call201.BootNotification(charging_station={"model": "M2", "vendor_name": "ACME"},
                                                        reason="PowerUp"))

    async def status(self, evse: int, connector: int, status: str) -> Any:
        return await self.call(call201.StatusNotification(timestamp=_now(), connector_status=status, evse_id=evse,
                                                          connector_id=connector))


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@contextlib.asynccontextmanager
async def charger(url: str, charger_id: str, version: str = "1.6") -> AsyncIterator[Any]:
    """A charger connected to `url` with its message loop running; closed on exit."""
    cls, sub = (Charger16, "ocpp1.6") if version == "1.6" else (Charger201, "ocpp2.0.1")
    ws = await connect(url, subprotocols=[sub])  # type: ignore[list-item]
    cp = cls(charger_id, ws, response_timeout=5)
    cp.resets = []
    cp.ws = ws
    task = asyncio.create_task(cp.start())
    try:
        yield cp
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        await ws.close()


def csms_answer(text: str) -> str | None:
    """A CSMS that accepts everything and issues transaction id 4242."""
    frame = json.loads(text)
    if frame[0] != 2:
        return None
    answers = {
        "BootNotification": {"status": "Accepted", "currentTime": "2030-01-01T00:00:00Z", "interval": 300},
        "StartTransaction": {"transactionId": 4242, "idTagInfo": {"status": "Accepted"}},
        "StopTransaction": {"idTagInfo": {"status": "Accepted"}},
        "Heartbeat": {"currentTime": "2030-01-01T00:00:00Z"},
        "Authorize": {"idTagInfo": {"status": "Accepted"}},
    }
    return json.dumps([3, frame[1], answers.get(frame[2], {})])
