"""Credentials the CSMS changes through the gateway: after a charger accepts a new 1.6
AuthorizationKey or 2.x BasicAuthPassword the gateway accepts it (the old one until the new one has
been used once), presents it upstream, and keeps it across a restart; 1.6 upstream keys go as raw
bytes."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from gateway.security import basic_header
from tests.e2e.rawpeers import RawConnection, RawCsms
from tests.security.conftest import gateway

KEY_A = "00112233445566778899AABBCCDDEEFF00112233"
KEY_B = "FFEEDDCCBBAA99887766554433221100FFEEDDCC"
PW_A, PW_B = "first-password-0123", "second-password-4567"
BOOT16 = '[2,"b1","BootNotification",{"chargePointVendor":"ACME","chargePointModel":"M1"}]'
BOOT201 = '[2,"b1","BootNotification",{"reason":"PowerUp","chargingStation":{"model":"M1","vendorName":"ACME"}}]'


def answer(text: str) -> str | None:
    msg = orjson.loads(text)
    if msg[0] != 2:
        return None
    return orjson.dumps([3, msg[1], {"currentTime": "2026-01-01T00:00:00Z", "interval": 300,
                                     "status": "Accepted"}]).decode()


async def login(gw: Any, cid: str, secret: str | bytes, subprotocol: str) -> ClientConnection:
    ws = await connect(gw.url(cid), subprotocols=[subprotocol],  # type: ignore[list-item]
                       additional_headers={"Authorization": basic_header(cid, secret)})
    await ws.send(BOOT16 if subprotocol == "ocpp1.6" else BOOT201)
    assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))[0] == 3
    return ws


async def refused(gw: Any, cid: str, secret: str | bytes, subprotocol: str) -> None:
    with pytest.raises(InvalidStatus) as info:
        await connect(gw.url(cid), subprotocols=[subprotocol],  # type: ignore[list-item]
                      additional_headers={"Authorization": basic_header(cid, secret)})
    assert info.value.response.status_code == 401


async def csms_sets(conn: RawConnection, ws: ClientConnection, call: str, reply: str) -> None:
    await conn.ws.send(call)
    assert await asyncio.wait_for(ws.recv(), 5) == call
    await ws.send(reply)
    assert await asyncio.wait_for(conn.received.get(), 5) == reply


async def drain(csms: RawCsms) -> None:
    for c in csms.connections:
        while not c.received.empty():
            c.received.get_nowait()


async def test_16_authorization_key_change_is_followed(tmp_path: Path) -> None:
    async with RawCsms(answer) as csms:
        config: dict[str, Any] = {"websocket": {"security_profile": 1, "max_auth_failures": 0},
                                  "upstream": {"url": csms.url},
                                  "chargers": {"K16": {"password": KEY_A, "upstream_password": KEY_A}}}
        async with gateway(tmp_path, **config) as gw:
            ws = await login(gw, "K16", bytes.fromhex(KEY_A), "ocpp1.6")
            conns = await csms.wait_connections(1)
            # 1.6 upstream: the key's raw bytes (J16 §6.2.2)
            assert conns[0].headers["Authorization"] == basic_header("K16", bytes.fromhex(KEY_A))
            await drain(csms)
            await csms_sets(conns[0], ws, '[2,"ck1","ChangeConfiguration",{"key":"AuthorizationKey","value":"%s"}]' % KEY_B,
                            '[3,"ck1",{"status":"Accepted"}]')
            await ws.close()
            await asyncio.sleep(0.5)  # the new key is hashed and stored in a worker thread
            # until the new key has been used, the old one still works (a charger may apply it at its reboot)
            ws = await login(gw, "K16", bytes.fromhex(KEY_A), "ocpp1.6")
            await ws.close()
            ws = await login(gw, "K16", KEY_B, "ocpp1.6")  # the new one, here as hex text
            conns = await csms.wait_connections(3)
            assert conns[-1].headers["Authorization"] == basic_header("K16", bytes.fromhex(KEY_B))  # what the CSMS set
            await ws.close()
            await asyncio.sleep(0.3)
            await refused(gw, "K16", bytes.fromhex(KEY_A), "ocpp1.6")  # now the old one is gone
        data = tmp_path / "data" / "credentials.json"
        assert stat.S_IMODE(data.stat().st_mode) == 0o600
        stored = json.loads(data.read_text())["K16"]
        assert stored["password"].startswith("pbkdf2_sha256$") and KEY_B not in stored["password"]
        async with gateway(tmp_path, **config) as gw:  # across a restart
            await refused(gw, "K16", bytes.fromhex(KEY_A), "ocpp1.6")
            ws = await login(gw, "K16", bytes.fromhex(KEY_B), "ocpp1.6")
            await ws.close()


async def test_2x_basic_auth_password_change_and_a_rejected_one(tmp_path: Path) -> None:
    async with RawCsms(answer) as csms:
        async with gateway(tmp_path, websocket={"security_profile": 1, "max_auth_failures": 0},
                           upstream={"url": csms.url},
                           chargers={"P2": {"password": PW_A, "upstream_password": PW_A}}) as gw:
            ws = await login(gw, "P2", PW_A, "ocpp2.0.1")
            (conn,) = await csms.wait_connections(1)
            await drain(csms)
            item = '{"component":{"name":"SecurityCtrlr"},"variable":{"name":"BasicAuthPassword"},"attributeValue":"%s"}'
            result = '{"component":{"name":"SecurityCtrlr"},"variable":{"name":"BasicAuthPassword"},"attributeStatus":"%s"}'
            # a change the charger rejects changes nothing
            await csms_sets(conn, ws, '[2,"sv1","SetVariables",{"setVariableData":[%s]}]' % (item % "rejected-password-000"),
                            '[3,"sv1",{"setVariableResult":[%s]}]' % (result % "Rejected"))
            await csms_sets(conn, ws, '[2,"sv2","SetVariables",{"setVariableData":[%s]}]' % (item % PW_B),
                            '[3,"sv2",{"setVariableResult":[%s]}]' % (result % "Accepted"))
            await ws.close()
            await asyncio.sleep(0.5)
            await refused(gw, "P2", "rejected-password-000", "ocpp2.0.1")
            ws = await login(gw, "P2", PW_B, "ocpp2.0.1")
            conns = await csms.wait_connections(2)
            assert conns[-1].headers["Authorization"] == basic_header("P2", PW_B)
            await ws.close()
            await asyncio.sleep(0.3)
            await refused(gw, "P2", PW_A, "ocpp2.0.1")


def test_security_profile_changes_are_recognised() -> None:
    from datetime import datetime, timezone

    from adapters.credentials import new_secret, new_security_profile
    from gateway.ports import Exchange
    from gateway.protocol.frames import OcppVersion

    def ex(version: OcppVersion, action: str, request: dict[str, Any], response: dict[str, Any],
           origin: str = "csms") -> Exchange:
        return Exchange(charger_id="C", version=version, origin=origin, action=action, message_id="m", request=request,
                        response=response, answered_by="charger", received_at=datetime.now(timezone.utc))

    v16, v201 = OcppVersion.V16, OcppVersion.V201
    assert new_security_profile(ex(v16, "ChangeConfiguration", {"key": "SecurityProfile", "value": "2"},
                                   {"status": "Accepted"})) == 2
    assert new_security_profile(ex(v16, "ChangeConfiguration", {"key": "SecurityProfile", "value": "2"},
                                   {"status": "Rejected"})) is None
    sv = {"setVariableData": [{"component": {"name": "SecurityCtrlr"}, "variable": {"name": "SecurityProfile"},
                               "attributeValue": "3"}]}
    ok = {"setVariableResult": [{"component": {"name": "SecurityCtrlr"}, "variable": {"name": "SecurityProfile"},
                                 "attributeStatus": "RebootRequired"}]}
    assert new_security_profile(ex(v201, "SetVariables", sv, ok)) == 3
    # a charger's own CALL never counts, nor a key change it did not accept
    assert new_secret(ex(v16, "ChangeConfiguration", {"key": "AuthorizationKey", "value": KEY_B},
                         {"status": "Accepted"}, origin="charger")) is None
    assert new_secret(ex(v16, "ChangeConfiguration", {"key": "AuthorizationKey", "value": KEY_B},
                         {"status": "NotSupported"})) is None
    assert new_secret(ex(v16, "ChangeConfiguration", {"key": "AuthorizationKey", "value": KEY_B},
                         {"status": "RebootRequired"})) == KEY_B
