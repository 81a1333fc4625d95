"""The charger-facing WebSocket server and the relay, checked on the wire with raw peers.

Handshake rules (OCPP-J §3), bad input per version, newest-connection-wins, keep-alive, and the
relay's byte-for-byte promise, against the real gateway process or the real gateway in-process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.app import running
from gateway.config import Settings
from gateway.errors import CallFailed
from tests.e2e.rawpeers import RawCsms
from tests.harness import GatewayProcess, free_port

BOOT16 = '[2,"b1","BootNotification",{"chargePointVendor":"ACME","chargePointModel":"M1"}]'
BOOT201 = '[2,"b1","BootNotification",{"reason":"PowerUp","chargingStation":{"model":"M1","vendorName":"ACME"}}]'


async def rpc(ws: ClientConnection, text: str, timeout: float = 3.0) -> list[Any]:
    await ws.send(text)
    return orjson.loads(await asyncio.wait_for(ws.recv(), timeout))


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def inproc(tmp_path: Path, **config: Any) -> AsyncIterator[Any]:
    """The gateway in this test's event loop (to reach its hub directly)."""
    base: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "websocket": {"listen": f"127.0.0.1:{free_port()}"},
        "logging": {"level": "DEBUG"},
    }
    for k, v in config.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and k in base else v
    async with running(Settings(**base)) as gw:
        gw.url = lambda cid: f"ws://127.0.0.1:{gw.ws_port}/ocpp/{cid}"
        yield gw


# -- handshake ------------------------------------------------------------------------------------


def test_healthz_on_the_charger_port(gateway_factory: Callable[..., GatewayProcess]) -> None:
    gw = gateway_factory()
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.ws_port}/healthz", timeout=3) as r:
        assert r.status == 200
        assert json.loads(r.read())["status"] == "ok"


async def test_ids_are_decoded_validated_and_unknown_ones_refused(gateway_factory: Callable[..., GatewayProcess]) -> None:
    gw = gateway_factory({"websocket": {"allow_unknown": False}, "chargers": {"CP 001": {}, "KNOWN": {}}})
    # percent-decoded: "CP%20001" is the configured "CP 001"
    async with connect(gw.url("CP%20001"), subprotocols=["ocpp1.6"]) as ws:
        assert (await rpc(ws, BOOT16))[0] == 3
    for path, status in [
        ("UNKNOWN", 404),  # allow_unknown = false
        ("a%3Ab", 400),  # ':' is the Basic-auth separator (2.0.1 Part 4 §3.1.1)
        ("x" * 49, 400),  # at most 48 characters
        ("a%2Fb", 400),  # no path or topic separators
        ("bad%FF", 400),  # not UTF-8
    ]:
        with pytest.raises(InvalidStatus) as info:
            async with connect(gw.url(path), subprotocols=["ocpp1.6"]):
                pass
        assert info.value.response.status_code == status, path
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://127.0.0.1:{gw.ws_port}/elsewhere/KNOWN", subprotocols=["ocpp1.6"]):
            pass
    assert info.value.response.status_code == 404


async def test_subprotocol_negotiation(gateway_factory: Callable[..., GatewayProcess]) -> None:
    gw = gateway_factory({"websocket": {"versions": ["ocpp2.0.1", "ocpp1.6"]}})
    # the charger's order of preference decides among the versions the gateway allows
    async with connect(gw.url("N1"), subprotocols=["ocpp1.6", "ocpp2.0.1"]) as ws:
        assert ws.subprotocol == "ocpp1.6"
    async with connect(gw.url("N2"), subprotocols=["ocpp2.1", "ocpp2.0.1"]) as ws:
        assert ws.subprotocol == "ocpp2.0.1"  # 2.1 is not enabled here
    # no common subprotocol: the handshake completes without the header, then the gateway closes
    for offered in (["ocpp1.5"], None):
        async with connect(gw.url("N3"), subprotocols=offered) as ws:  # type: ignore[arg-type]
            assert ws.response is not None and ws.response.status_code == 101
            assert "Sec-WebSocket-Protocol" not in ws.response.headers
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 3)
            assert ws.close_code == 1002


async def test_permessage_deflate_is_offered(gateway_factory: Callable[..., GatewayProcess]) -> None:
    gw = gateway_factory()
    async with connect(gw.url("Z1"), subprotocols=["ocpp1.6"], compression="deflate") as ws:
        assert ws.response is not None
        assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert (await rpc(ws, BOOT16))[0] == 3


def test_ping_keepalive_and_dead_peer_detection(gateway_factory: Callable[..., GatewayProcess]) -> None:
    """The gateway pings; a charger that never answers is disconnected after ping_timeout.

    A raw socket plays the charger so that no library answers the pings for it."""
    from websockets.client import ClientProtocol
    from websockets.uri import parse_uri

    gw = gateway_factory({"websocket": {"ping_interval": 0.3, "ping_timeout": 0.6}})
    proto = ClientProtocol(parse_uri(gw.url("P1")))
    request = proto.connect()
    request.headers["Sec-WebSocket-Protocol"] = "ocpp1.6"
    proto.send_request(request)
    sock = socket.create_connection(("127.0.0.1", gw.ws_port), timeout=5)
    sock.sendall(proto.data_to_send()[0])
    received = b""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            break
        received += data
    sock.close()
    frames = received.split(b"\r\n\r\n", 1)[1]  # after the HTTP 101 response
    assert received.startswith(b"HTTP/1.1 101")
    assert frames[:1] == b"\x89", "the first frame from the gateway is a ping (0x89)"
    assert b"\x88" in frames[1:], "then a close frame, since no pong came"


async def test_newest_connection_wins(gateway_factory: Callable[..., GatewayProcess]) -> None:
    gw = gateway_factory()
    first = await connect(gw.url("DUP"), subprotocols=["ocpp1.6"])
    assert (await rpc(first, BOOT16))[0] == 3
    async with connect(gw.url("DUP"), subprotocols=["ocpp1.6"]) as second:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(first.recv(), 3)
        assert first.close_code == 1000
        assert (await rpc(second, '[2,"h1","Heartbeat",{}]'))[0] == 3


# -- bad input ------------------------------------------------------------------------------------

BAD_INPUT = [
    # (frame, 1.6 answer, 2.0.1 answer, 2.1 answer); None = no answer (the spec says ignore)
    ("not json", [4, "-1", "FormationViolation"], [4, "-1", "RpcFrameworkError"], [4, "-1", "RpcFrameworkError"]),
    ('{"a": 1}', [4, "-1", "FormationViolation"], [4, "-1", "RpcFrameworkError"], [4, "-1", "RpcFrameworkError"]),
    ('[9,"t1",{}]', None, [4, "t1", "MessageTypeNotSupported"], None),
    ('[2,42,"Heartbeat",{}]', [4, "-1", "FormationViolation"], [4, "-1", "RpcFrameworkError"], [4, "-1", "RpcFrameworkError"]),
    (f'[2,"{"i" * 37}","Heartbeat",{{}}]', [4, "-1", "FormationViolation"], [4, "-1", "RpcFrameworkError"],
     [4, "-1", "RpcFrameworkError"]),
    ('[2,"u1","FlyToTheMoon",{}]', [4, "u1", "NotImplemented"], [4, "u1", "NotImplemented"], [4, "u1", "NotImplemented"]),
    ('[2,"w1","Heartbeat",{"unexpected":true}]', [4, "w1", "FormationViolation"], [4, "w1", "FormatViolation"],
     [4, "w1", "FormatViolation"]),
]
SCHEMA_CASES = {
    "ocpp1.6": [
        ('[2,"s1","StatusNotification",{"connectorId":1,"status":"Available"}]', "OccurenceConstraintViolation"),
        ('[2,"s2","StatusNotification",{"connectorId":"1","errorCode":"NoError","status":"Available"}]',
         "TypeConstraintViolation"),
        ('[2,"s3","Authorize",{"idTag":"123456789012345678901"}]', "PropertyConstraintViolation"),
        ('[2,"s4","RemoteStartTransaction",{"idTag":"x"}]', "NotSupported"),
    ],
    "ocpp2.0.1": [
        ('[2,"s1","StatusNotification",{"timestamp":"2026-01-01T00:00:00Z","evseId":1,"connectorId":1}]',
         "OccurrenceConstraintViolation"),
        ('[2,"s2","Heartbeat",{"customData":{"vendorId":5}}]', "TypeConstraintViolation"),
        ('[2,"s4","RequestStartTransaction",{"idToken":{"idToken":"x","type":"Central"},"remoteStartId":1}]',
         "NotSupported"),
    ],
}


@pytest.mark.parametrize("version_index, subprotocol", [(1, "ocpp1.6"), (2, "ocpp2.0.1"), (3, "ocpp2.1")])
async def test_bad_input_gets_the_versions_answer_and_the_connection_survives(
    gateway_factory: Callable[..., GatewayProcess], version_index: int, subprotocol: str
) -> None:
    gw = gateway_factory({"websocket": {"max_frame_size": 65536}})
    async with connect(gw.url(f"BAD{version_index}"), subprotocols=[subprotocol]) as ws, \
            connect(gw.url(f"GOOD{version_index}"), subprotocols=[subprotocol]) as good:
        for case in BAD_INPUT:
            expected = case[version_index]
            await ws.send(case[0])
            if expected is None:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(ws.recv(), 0.4)
            else:
                answer = orjson.loads(await asyncio.wait_for(ws.recv(), 3))
                assert answer[:3] == expected, case[0]
                assert len(answer) == 5 and isinstance(answer[3], str) and answer[4] == {}
            # the connection survives every one of these, and other chargers never notice
            assert (await rpc(ws, '[2,"hb","Heartbeat",{}]'))[:2] == [3, "hb"]
            assert (await rpc(good, '[2,"hb","Heartbeat",{}]'))[:2] == [3, "hb"]
        for frame, code in SCHEMA_CASES.get(subprotocol, []):
            answer = await rpc(ws, frame)
            assert answer[0] == 4 and answer[2] == code, frame
        # binary frames are not OCPP-J
        await ws.send(b'[2,"bin","Heartbeat",{}]')
        answer = orjson.loads(await asyncio.wait_for(ws.recv(), 3))
        assert answer[:2] == [4, "-1"]
        # an oversized frame closes that connection with 1009 (message too big); nothing else
        await ws.send('[2,"big","DataTransfer",{"vendorId":"x","data":"' + "A" * 70000 + '"}]')
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 3)
        assert ws.close_code == 1009
        assert (await rpc(good, '[2,"hb2","Heartbeat",{}]'))[:2] == [3, "hb2"]


# -- relay ----------------------------------------------------------------------------------------


async def test_frames_are_relayed_byte_for_byte(gateway_factory: Callable[..., GatewayProcess]) -> None:
    def answer(text: str) -> str | None:
        msg = orjson.loads(text)
        if msg[0] == 2:
            # odd spacing, a vendor field, a number with a trailing zero: must arrive untouched
            return '[3, "%s" ,{"currentTime" : "2026-01-01T00:00:00.000Z", "interval":60, "status":"Accepted", "x-vendor": 1.50}]' % msg[1]
        return None

    async with RawCsms(answer) as csms:
        gw = gateway_factory({"upstream": {"url": csms.url}})
        async with connect(gw.url("RAW1"), subprotocols=["ocpp1.6"]) as ws:
            (conn,) = await csms.wait_connections(1)
            assert conn.path == "/ocpp/RAW1" and conn.subprotocol == "ocpp1.6"
            frames = [
                '[2, "m1", "BootNotification", {"chargePointVendor": "ACME",   "chargePointModel": "M1"}]',
                '[2,"m2","DataTransfer",{"vendorId":"com.acme","messageId":"Diag","data":"{\\"t\\": 21.50, \\"ü\\": [1,2]}"}]',
                '[2,"m3","MeterValues",{"connectorId":1,"meterValue":[{"timestamp":"2026-01-01T00:00:00Z",'
                '"sampledValue":[{"value":"1.50","format":"SignedData","measurand":"Energy.Active.Import.Register"}]}]}]',
            ]
            for text in frames:
                await ws.send(text)
                assert await asyncio.wait_for(conn.received.get(), 3) == text
                reply = await asyncio.wait_for(ws.recv(), 3)
                assert reply == answer(text)
            # and the CSMS's CALL reaches the charger untouched, its answer the CSMS untouched
            csms_call = '[2,"c-1","DataTransfer",  {"vendorId":"com.acme","data":"x", "customExt": {"a": 1.0}}]'
            await conn.ws.send(csms_call)
            assert await asyncio.wait_for(ws.recv(), 3) == csms_call
            charger_reply = '[3,"c-1",{"status":"Accepted","data":"weird  spacing ","vendorThing":0.10}]'
            await ws.send(charger_reply)
            assert await asyncio.wait_for(conn.received.get(), 3) == charger_reply


async def test_upstream_credentials_are_the_configured_ones(gateway_factory: Callable[..., GatewayProcess]) -> None:
    async with RawCsms(lambda t: None) as csms:
        gw = gateway_factory({"upstream": {"url": csms.url}, "chargers": {"SEC1": {"upstream_password": "up-secret-16chars"}}})
        # the charger presents its own credentials to the gateway; they must not travel upstream
        own = "Basic " + base64.b64encode(b"SEC1:charger-own-password").decode()
        async with connect(gw.url("SEC1"), subprotocols=["ocpp2.0.1"], additional_headers={"Authorization": own}):
            (conn,) = await csms.wait_connections(1)
            expected = "Basic " + base64.b64encode(b"SEC1:up-secret-16chars").decode()
            assert conn.headers.get("Authorization") == expected
            assert conn.subprotocol == "ocpp2.0.1"
        async with connect(gw.url("NOPW"), subprotocols=["ocpp2.0.1"], additional_headers={"Authorization": own}):
            conns = await csms.wait_connections(2)
            assert "Authorization" not in conns[1].headers
        assert "up-secret-16chars" not in gw.logs()


async def test_gateway_calls_use_own_ids_and_their_answers_stay_in_the_gateway(tmp_path: Path) -> None:
    async with RawCsms(lambda t: None) as csms:
        async with inproc(tmp_path, upstream={"url": csms.url}) as gw:
            async with connect(gw.url("GWC"), subprotocols=["ocpp1.6"]) as ws:
                (conn,) = await csms.wait_connections(1)
                session = gw.hub.sessions["GWC"]
                task = asyncio.create_task(session.call_charger("GetConfiguration", {"key": ["HeartbeatInterval"]}))
                call = orjson.loads(await asyncio.wait_for(ws.recv(), 3))
                assert call[0] == 2 and call[1].startswith("gw-") and call[2] == "GetConfiguration"
                # a CSMS call arriving meanwhile waits: one CALL in flight towards the charger
                await conn.ws.send('[2,"csms-1","Reset",{"type":"Soft"}]')
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(ws.recv(), 0.3)
                await ws.send(orjson.dumps([3, call[1], {"configurationKey": [], "unknownKey": ["HeartbeatInterval"]}]).decode())
                assert (await asyncio.wait_for(task, 3))["unknownKey"] == ["HeartbeatInterval"]
                # now the CSMS's call goes out, and only its answer is relayed upstream
                assert orjson.loads(await asyncio.wait_for(ws.recv(), 3))[:3] == [2, "csms-1", "Reset"]
                await ws.send('[3,"csms-1",{"status":"Accepted"}]')
                assert await asyncio.wait_for(conn.received.get(), 3) == '[3,"csms-1",{"status":"Accepted"}]'
                assert conn.received.empty()  # the gateway's own reply never reached the CSMS
                # a CALLERROR from the charger is raised to the gateway caller
                task = asyncio.create_task(session.call_charger("Reset", {"type": "Hard"}))
                call = orjson.loads(await asyncio.wait_for(ws.recv(), 3))
                await ws.send(orjson.dumps([4, call[1], "NotSupported", "no", {}]).decode())
                with pytest.raises(CallFailed) as info:
                    await asyncio.wait_for(task, 3)
                assert info.value.code == "NotSupported"
                assert conn.received.empty()


async def test_upstream_reconnects_and_state_is_tracked(tmp_path: Path) -> None:
    async with RawCsms(lambda t: '[3,"%s",{"currentTime":"2026-01-01T00:00:00Z"}]' % orjson.loads(t)[1]) as csms:
        async with inproc(tmp_path, upstream={"url": csms.url, "reconnect_min": 0.1, "reconnect_max": 0.5}) as gw:
            async with connect(gw.url("RC1"), subprotocols=["ocpp1.6"]) as ws:
                (conn,) = await csms.wait_connections(1)
                session = gw.hub.sessions["RC1"]
                await until(lambda: session.upstream_state.value == "online")
                await conn.ws.close()  # the CSMS drops the link
                conns = await csms.wait_connections(2, timeout=5)
                assert conns[1].path == "/ocpp/RC1"
                await until(lambda: session.upstream_state.value == "online")
                assert (await rpc(ws, '[2,"h","Heartbeat",{}]'))[:2] == [3, "h"]
            # the charger left: its upstream link is closed too (2.0.1 Part 4 §6.3)
            await asyncio.sleep(0.2)
            assert "RC1" not in gw.hub.sessions
            assert conns[1].ws.close_code is not None


async def test_simultaneous_upstream_dials_are_capped(tmp_path: Path) -> None:
    async with RawCsms(lambda t: None, handshake_delay=0.3) as csms:
        async with inproc(tmp_path, upstream={"url": csms.url, "max_concurrent_dials": 2}) as gw:
            clients = [await connect(gw.url(f"D{i}"), subprotocols=["ocpp1.6"]) for i in range(6)]
            try:
                await csms.wait_connections(6, timeout=10)
                assert csms.max_concurrent_handshakes == 2
            finally:
                for c in clients:
                    await c.close()


async def test_unreachable_csms_buffer_mode_answers_locally(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens here
    async with inproc(tmp_path, upstream={"url": f"ws://127.0.0.1:{dead}/ocpp", "reconnect_min": 0.2}) as gw:
        async with connect(gw.url("OFF1"), subprotocols=["ocpp1.6"]) as ws:
            answer = await rpc(ws, '[2,"h","Heartbeat",{}]')
            assert answer[:2] == [3, "h"] and "currentTime" in answer[2]
            assert gw.hub.sessions["OFF1"].upstream_state.value in ("offline", "connecting")


async def test_unreachable_csms_strict_mode_refuses_the_charger(tmp_path: Path) -> None:
    dead = free_port()
    async with inproc(tmp_path, upstream={"url": f"ws://127.0.0.1:{dead}/ocpp", "offline_mode": "strict"}) as gw:
        with pytest.raises(InvalidStatus) as info:
            async with connect(gw.url("STRICT1"), subprotocols=["ocpp1.6"]):
                pass
        assert info.value.response.status_code == 503
        assert "STRICT1" not in gw.hub.sessions


async def test_keepalive_pings_are_spread_over_the_interval(gateway_factory: Callable[..., GatewayProcess]) -> None:
    """Chargers that connect together (after an outage) are not all pinged in the same instant."""
    from websockets.client import ClientProtocol
    from websockets.uri import parse_uri

    gw = gateway_factory({"websocket": {"ping_interval": 2.0, "ping_timeout": 5.0}})

    async def first_ping_after(n: int) -> float:
        proto = ClientProtocol(parse_uri(gw.url(f"SPREAD{n}")))
        request = proto.connect()
        request.headers["Sec-WebSocket-Protocol"] = "ocpp1.6"
        proto.send_request(request)
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.ws_port)
        writer.write(proto.data_to_send()[0])
        opened = None
        buffer = b""
        try:
            while True:
                buffer += await asyncio.wait_for(reader.read(65536), 10)
                if opened is None and b"\r\n\r\n" in buffer:
                    opened = time.monotonic()
                    buffer = buffer.split(b"\r\n\r\n", 1)[1]
                if opened is not None and buffer[:1] == b"\x89":
                    return time.monotonic() - opened
        finally:
            writer.close()

    delays = await asyncio.gather(*(first_ping_after(n) for n in range(20)))
    assert all(2.0 - 0.2 <= d <= 4.0 + 0.5 for d in delays), delays  # interval + a share of one interval
    assert max(delays) - min(delays) > 0.8, delays  # spread, not one burst
