"""The HTTP binding end to end: a device POSTs OCPP-J CALLs and long-polls for the CSMS's calls.

Relay mode against a CSMS built on the `ocpp` package; standalone mode; id checks; the timeout of
a call for a device that does not poll."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from gateway.app import running
from gateway.config import Settings
from tests.e2e.peers import CSMS_GOOD_TAG, CSMS_INTERVAL, CSMS_TX_ID, CsmsServer, RpcError
from tests.harness import free_port

pytestmark = pytest.mark.timeout(60)
NOW = "2030-01-02T03:04:05Z"


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, **config: Any) -> AsyncIterator[Any]:
    base: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "websocket": {"listen": f"127.0.0.1:{free_port()}", "call_timeout": 2.0},
        "http": {"enabled": True, "listen": f"127.0.0.1:{free_port()}", "path": "/ocpp-http"},
        "api": {"listen": f"127.0.0.1:{free_port()}"},
        "logging": {"level": "DEBUG"},
    }
    for k, v in config.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and k in base else v
    async with running(Settings(**base)) as gw, aiohttp.ClientSession() as http:
        gw.base = f"http://127.0.0.1:{gw.http.port}/ocpp-http"
        gw.client = http
        yield gw


async def call(gw: Any, cid: str, action: str, payload: dict[str, Any]) -> list[Any]:
    async with gw.client.post(f"{gw.base}/{cid}", json=[2, str(uuid.uuid4()), action, payload],
                              timeout=aiohttp.ClientTimeout(total=15)) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def poll(gw: Any, cid: str, wait: float) -> list[Any] | None:
    async with gw.client.get(f"{gw.base}/{cid}/calls", params={"wait": str(wait)},
                             timeout=aiohttp.ClientTimeout(total=wait + 10)) as r:
        if r.status == 204:
            return None
        assert r.status == 200, await r.text()
        return await r.json(content_type=None)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def until(condition: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_http_device_full_session_through_the_relay(tmp_path: Path) -> None:
    cid = "HTTP1"
    async with CsmsServer(subprotocols=("ocpp1.6",)) as csms, gateway(tmp_path, upstream={"url": csms.url}) as gw:
        assert (await call(gw, cid, "Heartbeat", {}))[0] == 3  # starts the session (and its upstream link)
        session = await csms.wait_session(cid)
        assert session.subprotocol == "ocpp1.6"
        await until(lambda: gw.hub.sessions[cid].upstream_state.value == "online")
        boot = await call(gw, cid, "BootNotification", {"chargePointVendor": "ACME", "chargePointModel": "H1"})
        assert boot[2]["interval"] == CSMS_INTERVAL and boot[2]["status"] == "Accepted"
        assert (await call(gw, cid, "Authorize", {"idTag": CSMS_GOOD_TAG}))[2]["idTagInfo"]["status"] == "Accepted"
        start = await call(gw, cid, "StartTransaction", {"connectorId": 1, "idTag": CSMS_GOOD_TAG, "meterStart": 0,
                                                         "timestamp": NOW})
        assert start[2]["transactionId"] == CSMS_TX_ID
        await call(gw, cid, "MeterValues", {"connectorId": 1, "transactionId": CSMS_TX_ID, "meterValue": [
            {"timestamp": NOW, "sampledValue": [{"value": "10"}]}]})
        stop = await call(gw, cid, "StopTransaction", {"transactionId": CSMS_TX_ID, "meterStop": 10, "timestamp": NOW})
        assert stop[0] == 3
        # a bad CALL gets the 1.6 CALLERROR
        bad = await call(gw, cid, "StatusNotification", {"connectorId": 1})
        assert bad[0] == 4 and bad[2] == "OccurenceConstraintViolation"
        async with gw.client.post(f"{gw.base}/{cid}", data=b"not json") as r:
            assert r.status == 200 and (await r.json())[:3] == [4, "-1", "FormationViolation"]

        # a CSMS command reaches the device by long poll; its answer goes back to the CSMS
        async def device() -> None:
            frame = await poll(gw, cid, 5)
            assert frame is not None and frame[0] == 2 and frame[2] == "RemoteStartTransaction"
            assert frame[3] == {"idTag": "T9", "connectorId": 1}
            async with gw.client.post(f"{gw.base}/{cid}/calls", json=[3, frame[1], {"status": "Accepted"}]) as r:
                assert r.status == 204

        task = asyncio.create_task(device())
        assert await session.cp.raw_call("RemoteStartTransaction", {"idTag": "T9", "connectorId": 1}) == {
            "status": "Accepted"}
        await task
        # nothing else is waiting
        assert await poll(gw, cid, 0.2) is None
        # the device does not poll: the CSMS gets a timeout error after [websocket].call_timeout
        with pytest.raises(RpcError) as info:
            await session.cp.raw_call("Reset", {"type": "Soft"})
        assert info.value.code == "GenericError"
        # ... and the expired call is not handed out later
        assert await poll(gw, cid, 0.2) is None


async def test_http_standalone_ids_and_idle_sessions(tmp_path: Path) -> None:
    async with gateway(tmp_path, http={"idle_timeout": 0.5}, websocket={"allow_unknown": False},
                       chargers={"DEV1": {}}) as gw:
        boot = await call(gw, "DEV1", "BootNotification", {"chargePointVendor": "A", "chargePointModel": "B"})
        assert boot[2]["status"] == "Accepted"
        assert gw.hub.sessions["DEV1"].link.transport == "http"
        for path, status in [("STRANGER", 404), ("a%3Ab", 400), ("x" * 49, 400)]:
            async with gw.client.post(f"{gw.base}/{path}", json=[2, "1", "Heartbeat", {}]) as r:
                assert r.status == status, path
        async with gw.client.get(f"{gw.base}/DEV1/calls", params={"wait": "soon"}) as r:
            assert r.status == 400
        # the session ends after idle_timeout without requests, and a new request starts another
        await until(lambda: "DEV1" not in gw.hub.sessions, timeout=5)
        assert (await call(gw, "DEV1", "Heartbeat", {}))[0] == 3
        assert "DEV1" in gw.hub.sessions


async def test_http_authentication_follows_the_websocket_rules(tmp_path: Path) -> None:
    from gateway.security import hash_password

    chargers = {"SEC1": {"password": "s3cret-s3cret-s3cret"},
                "SEC2": {"password": hash_password(b"an0ther-s3cret-pw")}}
    config = {"websocket": {"security_profile": 1, "max_auth_failures": 4}, "chargers": chargers}
    async with gateway(tmp_path, **config) as gw:
        async def post(cid: str, auth: str | None) -> int:
            headers = {"Authorization": auth} if auth else {}
            async with gw.client.post(f"{gw.base}/{cid}", json=[2, "1", "Heartbeat", {}], headers=headers) as r:
                return r.status

        assert await post("SEC1", basic("SEC1", "s3cret-s3cret-s3cret")) == 200
        assert await post("SEC2", basic("SEC2", "an0ther-s3cret-pw")) == 200  # a hashed password
        # failures (the same 401 for each): none, wrong password, another charger's user, an unknown id
        assert await post("SEC1", None) == 401
        assert await post("SEC1", basic("SEC1", "wrong")) == 401
        assert await post("SEC1", basic("SEC2", "an0ther-s3cret-pw")) == 401
        assert await post("NOBODY", basic("NOBODY", "s3cret-s3cret-s3cret")) == 401
        # then this address is slowed down, even with the right password
        assert await post("SEC1", basic("SEC1", "s3cret-s3cret-s3cret")) == 429


async def test_http_device_follows_a_password_the_csms_changed(tmp_path: Path) -> None:
    """The CSMS sets a new AuthorizationKey on an HTTP device (ChangeConfiguration, fetched by long
    poll, answered Accepted): the binding accepts the new one, the old one until the new one has been
    used once, then only the new one, and still after a restart (data_dir/credentials.json)."""
    cid, old, new = "ROT1", "old-password-0123456", "new-password-6543210"
    config: dict[str, Any] = {"websocket": {"security_profile": 1, "max_auth_failures": 0},
                              "chargers": {cid: {"password": old}}}

    async def post(gw: Any, password: str) -> int:
        async with gw.client.post(f"{gw.base}/{cid}", json=[2, str(uuid.uuid4()), "Heartbeat", {}],
                                  headers={"Authorization": basic(cid, password)}) as r:
            return r.status

    async with CsmsServer(subprotocols=("ocpp1.6",)) as csms:
        async with gateway(tmp_path, upstream={"url": csms.url}, **config) as gw:
            assert await post(gw, old) == 200
            session = await csms.wait_session(cid)
            await until(lambda: gw.hub.sessions[cid].upstream_state.value == "online")
            assert await post(gw, new) == 401  # not yet

            async def device() -> None:
                headers = {"Authorization": basic(cid, old)}
                async with gw.client.get(f"{gw.base}/{cid}/calls", params={"wait": "5"}, headers=headers) as r:
                    frame = await r.json(content_type=None)
                assert frame[2] == "ChangeConfiguration" and frame[3]["value"] == new
                async with gw.client.post(f"{gw.base}/{cid}/calls", json=[3, frame[1], {"status": "Accepted"}],
                                          headers=headers) as r:
                    assert r.status == 204

            task = asyncio.create_task(device())
            assert await session.cp.raw_call("ChangeConfiguration", {"key": "AuthorizationKey", "value": new}) == {
                "status": "Accepted"}
            await task
            await until(lambda: (tmp_path / "data" / "credentials.json").exists(), timeout=5)  # hashed and stored
            assert await post(gw, old) == 200  # the device may apply the new key at its next reboot
            assert await post(gw, new) == 200
            await asyncio.sleep(0.3)  # the book forgets the old one (saved in a task)
            assert await post(gw, old) == 401
        async with gateway(tmp_path, upstream={"url": csms.url}, **config) as gw:  # across a restart
            assert await post(gw, old) == 401
            assert await post(gw, new) == 200


async def test_strict_mode_refuses_an_http_device_while_the_csms_is_unreachable(tmp_path: Path) -> None:
    dead = f"ws://127.0.0.1:{free_port()}/ocpp"
    async with gateway(tmp_path, upstream={"url": dead, "offline_mode": "strict", "connect_timeout": 2.0}) as gw:
        async with gw.client.post(f"{gw.base}/STRICT2", json=[2, "1", "Heartbeat", {}]) as r:
            assert r.status == 503
        assert "STRICT2" not in gw.hub.sessions
