"""The charger port's contract, the same on both transports (`[websocket].transport`: websockets and
picows): subprotocol negotiation, Basic auth and its failed-login limit, TLS profiles 2 and 3, the
1009 / 1007 / 1002 closes, keepalive both ways and the dead peer, permessage-deflate over a long
exchange, back-pressure from a charger that does not read, /healthz and malformed opening requests.

The gateway runs in this test's event loop; the peers are the `websockets` and `ocpp` packages, and
a raw socket where a library would not send what is tested (or would answer pings by itself)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import struct
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.app import running
from gateway.config import Settings
from gateway.security import basic_header
from tests.harness import free_port
from tests.security.conftest import Certs, certs, tls_settings  # noqa: F401 - `certs` is a fixture

pytestmark = pytest.mark.timeout(60)
TRANSPORTS = ["websockets", "picows"]
BOOT16 = '[2,"b1","BootNotification",{"chargePointVendor":"ACME","chargePointModel":"M1"}]'
PW = "correct-horse-battery"


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, transport: str, **config: Any) -> AsyncIterator[Any]:
    base: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "websocket": {"listen": f"127.0.0.1:{free_port()}", "transport": transport},
        "api": {"listen": f"127.0.0.1:{free_port()}"},
        "logging": {"level": "DEBUG"},
    }
    for k, v in config.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and k in base else v
    settings = Settings(**base)
    scheme = "wss" if settings.websocket.security_profile >= 2 else "ws"
    async with running(settings) as running_gw:
        gw: Any = running_gw
        gw.url = lambda cid: f"{scheme}://127.0.0.1:{gw.ws_port}/ocpp/{cid}"
        yield gw


async def rpc(ws: ClientConnection, text: str | bytes, timeout: float = 5.0) -> list[Any]:
    async with asyncio.timeout(timeout):
        await ws.send(text)
        return list(orjson.loads(await ws.recv()))


async def closed_code(ws: ClientConnection, timeout: float = 10.0) -> int | None:
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    return ws.close_code


# -- a raw client: frames as the test writes them -----------------------------------------------------


def client_frame(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    head = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n) if n < 65536 \
        else bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return bytes([head]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawCharger:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, response: bytes) -> None:
        self.reader, self.writer, self.response = reader, writer, response

    @classmethod
    async def open(cls, port: int, path: str, protocol: str | None = "ocpp1.6", extra: str = "") -> RawCharger:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        offer = f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else ""
        writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}{extra}\r\n".encode())
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        return cls(reader, writer, response)

    async def frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """The next frame from the gateway: (opcode, payload); (-1, b"") at EOF."""
        async with asyncio.timeout(timeout):
            try:
                head = await self.reader.readexactly(2)
            except asyncio.IncompleteReadError:
                return -1, b""
            n = head[1] & 0x7F
            if n == 126:
                n = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            return head[0] & 0x0F, await self.reader.readexactly(n)

    async def close_code(self) -> int | None:
        """The code of the gateway's close frame (frames before it are skipped); None at EOF."""
        for _ in range(100):
            opcode, payload = await self.frame()
            if opcode == 8:
                return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005
            if opcode == -1:
                return None
        raise AssertionError("no close frame")

    def close(self) -> None:
        self.writer.close()


# -- the contract -------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_subprotocol_negotiation(tmp_path: Path, transport: str) -> None:
    async with gateway(tmp_path, transport, websocket={"versions": ["ocpp2.0.1", "ocpp1.6"]}) as gw:
        async with connect(gw.url("N1"), subprotocols=["ocpp1.6", "ocpp2.0.1"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "ocpp1.6"  # the charger's preference among the allowed ones
            assert (await rpc(ws, BOOT16))[0] == 3
        async with connect(gw.url("N2"), subprotocols=["ocpp2.1", "ocpp2.0.1"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "ocpp2.0.1"
        for offered in (["ocpp1.5"], None):  # none in common: 101 without the header, then 1002
            async with connect(gw.url("N3"), subprotocols=offered) as ws:  # type: ignore[arg-type]
                assert ws.response is not None and ws.response.status_code == 101
                assert "Sec-WebSocket-Protocol" not in ws.response.headers
                assert await closed_code(ws) == 1002
        assert "N3" not in gw.hub.sessions


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_basic_auth_refusals_and_the_failed_login_limit(tmp_path: Path, transport: str) -> None:
    async with gateway(tmp_path, transport, websocket={"security_profile": 1, "max_auth_failures": 2},
                       chargers={"CP1": {"password": PW}}) as gw:
        good = {"Authorization": basic_header("CP1", PW)}
        async with connect(gw.url("CP1"), subprotocols=["ocpp1.6"], additional_headers=good) as ws:  # type: ignore[list-item]
            assert (await rpc(ws, BOOT16))[0] == 3
        statuses = []
        for _ in range(3):
            with pytest.raises(InvalidStatus) as info:
                await connect(gw.url("CP1"), subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                              additional_headers={"Authorization": basic_header("CP1", "wrong-wrong-wrong")},
                              local_addr=("127.0.0.2", 0))
            r = info.value.response
            statuses.append(r.status_code)
            if r.status_code == 401:
                assert r.body == b'{"error":"authentication failed"}'
                assert r.headers["WWW-Authenticate"].startswith("Basic realm=")
            else:
                assert int(r.headers["Retry-After"]) >= 1
        assert statuses == [401, 401, 429]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_tls_profiles_2_and_3(tmp_path: Path, transport: str, certs: Certs) -> None:  # noqa: F811
    from ocpp import v16

    async with gateway(tmp_path, transport, websocket={**tls_settings(certs, 2), "allow_unknown": False},
                       chargers={"CP2": {"password": PW}, "CP3": {"security_profile": 3}}) as gw:
        async with connect(gw.url("CP2"), subprotocols=["ocpp1.6"], ssl=certs.client(),  # type: ignore[list-item]
                           additional_headers={"Authorization": basic_header("CP2", PW)}) as ws:
            assert (await rpc(ws, BOOT16))[0] == 3
        with pytest.raises(InvalidStatus) as info:  # profile 2 without the password
            await connect(gw.url("CP2"), subprotocols=["ocpp1.6"], ssl=certs.client())  # type: ignore[list-item]
        assert info.value.response.status_code == 401
        # profile 3: the client certificate is the charger's identity (an `ocpp` package charger)
        async with connect(gw.url("CP3"), subprotocols=["ocpp1.6"], ssl=certs.client("CP3")) as ws:  # type: ignore[list-item]
            cp = v16.ChargePoint("CP3", ws, response_timeout=5)
            task = asyncio.create_task(cp.start())
            try:
                answer = await cp.call(v16.call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
                assert answer.status == "Accepted"
            finally:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        with pytest.raises(InvalidStatus) as info:  # someone else's certificate
            await connect(gw.url("CP3"), subprotocols=["ocpp1.6"], ssl=certs.client("CP2"))  # type: ignore[list-item]
        assert info.value.response.status_code == 401


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_frames_that_break_the_rules_close_with_their_code(tmp_path: Path, transport: str) -> None:
    async with gateway(tmp_path, transport, websocket={"max_frame_size": 65536}) as gw:
        async with connect(gw.url("BIG"), subprotocols=["ocpp1.6"], max_size=None) as ws:  # type: ignore[list-item]
            await ws.send('[2,"big","DataTransfer",{"vendorId":"x","data":"' + "A" * 70_000 + '"}]')
            assert await closed_code(ws) == 1009
        async with connect(gw.url("FRAG"), subprotocols=["ocpp1.6"], max_size=None) as ws:  # type: ignore[list-item]
            # fragments: each small, the message over the limit
            await ws.send(iter(['[2,"f","DataTransfer",{"vendorId":"x","data":"', *["B" * 30_000] * 3, '"}]']))
            assert await closed_code(ws) == 1009
        async with connect(gw.url("UTF"), subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            await ws.send(b'[2,"u1","Heartbeat",{"x":"\xff\xfe"}]', text=True)
            assert await closed_code(ws) == 1007
        async with connect(gw.url("OK"), subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            # a fragmented message is reassembled; a binary one gets a CALLERROR; the connection goes on
            await ws.send(iter(['[2,"h1","Heart', 'beat",{}]']))
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))[:2] == [3, "h1"]
            assert (await rpc(ws, b"\x00\x01"))[:3] == [4, "-1", "FormationViolation"]
            assert (await rpc(ws, '[2,"h2","Heartbeat",{}]'))[:2] == [3, "h2"]
        # what a library will not send: a continuation with no message begun, reserved bits
        for bad in (client_frame(0x0, b"[]"), client_frame(0x1, b"[]", rsv1=True),
                    bytes([0xA1]) + client_frame(0x1, b"[]")[1:]):
            raw = await RawCharger.open(gw.ws_port, "/ocpp/RAW")
            assert raw.response.startswith(b"HTTP/1.1 101")
            raw.writer.write(bad)
            assert await raw.close_code() == 1002
            raw.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_keepalive_both_ways_and_the_dead_peer(tmp_path: Path, transport: str) -> None:
    async with gateway(tmp_path, transport, websocket={"ping_interval": 0.3, "ping_timeout": 0.6}) as gw:
        # a charger that answers pings (websockets does) stays, and its own pings are answered
        async with connect(gw.url("ALIVE"), subprotocols=["ocpp1.6"], ping_interval=None) as ws:  # type: ignore[list-item]
            for i in range(4):
                latency = await asyncio.wait_for(await ws.ping(), 5)
                assert latency >= 0
                assert (await rpc(ws, f'[2,"h{i}","Heartbeat",{{}}]'))[:2] == [3, f"h{i}"]
                await asyncio.sleep(0.4)  # past an interval and a timeout, in all
        # a raw socket that never answers: pinged, then dropped (a close frame, then the socket goes)
        raw = await RawCharger.open(gw.ws_port, "/ocpp/DEAD")
        opcodes = []
        for _ in range(10):
            opcode, _ = await raw.frame(timeout=10)
            opcodes.append(opcode)
            if opcode == -1:
                break
        raw.close()
        assert opcodes[0] == 0x9 and opcodes[-1] == -1, opcodes
        assert 0x8 in opcodes, opcodes


async def test_a_charger_that_talks_is_not_pinged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """picows: any frame from a charger proves the link as a pong does, so a charger that talks is
    never pinged; one quiet for ping_interval is, and if it then answers nothing it is dropped
    within ping_interval + ping_timeout of its last frame."""
    interval, timeout = 0.4, 0.6
    caplog.set_level(logging.INFO, logger="gateway")
    async with gateway(tmp_path, "picows", websocket={"ping_interval": interval, "ping_timeout": timeout,
                                                      "max_messages_per_second": 0}) as gw:
        loop = asyncio.get_running_loop()
        # the schemas compile in a worker thread at the start, in this test's process: the event
        # loop (the test's and the gateway's) may stall meanwhile, longer than an interval
        until = loop.time() + 30
        while not any("schemas ready" in r.getMessage() for r in caplog.records) and loop.time() < until:
            await asyncio.sleep(0.05)
        raw = await RawCharger.open(gw.ws_port, "/ocpp/TALKS")
        assert raw.response.startswith(b"HTTP/1.1 101")
        talked: list[int] = []
        until = loop.time() + 5 * interval  # the first check comes after one to two intervals
        for i in range(100):  # bounded: one Heartbeat every 0.1 s for 2 s
            if loop.time() >= until:
                break
            try:
                raw.writer.write(client_frame(0x1, f'[2,"h{i}","Heartbeat",{{}}]'.encode()))
                last_sent = loop.time()
                talked.append((await raw.frame())[0])
            except ConnectionError:
                pytest.fail(f"a charger that talked was dropped (frames it got: {talked})")
            await asyncio.sleep(0.1)
        assert len(talked) >= 10 and 0x9 not in talked, talked
        quiet: list[tuple[int, float]] = []
        for _ in range(20):
            opcode, _ = await raw.frame(timeout=5)
            quiet.append((opcode, loop.time() - last_sent))
            if opcode == -1:
                break
        raw.close()
        opcodes = [op for op, _ in quiet]
        assert 0x9 in opcodes and opcodes[-1] == -1 and 0x8 in opcodes, quiet
        pinged_after = quiet[opcodes.index(0x9)][1]
        assert interval - 0.05 <= pinged_after <= 2 * interval + 0.5, quiet  # quiet for an interval, not before
        closed_after = quiet[opcodes.index(0x8)][1]
        assert pinged_after + timeout - 0.05 <= closed_after <= interval + timeout + 1.0, quiet


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_permessage_deflate_over_a_long_exchange(tmp_path: Path, transport: str) -> None:
    async with gateway(tmp_path, transport, websocket={"max_messages_per_second": 0}) as gw:
        async with connect(gw.url("ZIP"), subprotocols=["ocpp1.6"], compression="deflate") as ws:  # type: ignore[list-item]
            assert ws.response is not None
            assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert ws.protocol.extensions, "negotiated"
            assert (await rpc(ws, BOOT16))[0] == 3
            for i in range(300):  # the compression context carries over from message to message
                data = ("x%d-" % i) * (i * 7 % 900) + os.urandom(i % 50).hex()
                text = orjson.dumps([2, f"d{i}", "DataTransfer", {"vendorId": "v", "data": data}]).decode()
                answer = await rpc(ws, text)
                assert answer[:2] == [3, f"d{i}"] and "status" in answer[2], answer
            # a compression bomb is measured inflated: 4 MB of "A" are a few kB on the wire
            await ws.send('[2,"z","DataTransfer",{"vendorId":"x","data":"' + "A" * 4_000_000 + '"}]')
            assert await closed_code(ws) == 1009


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_charger_that_does_not_read_holds_back_only_its_own_sends(tmp_path: Path, transport: str) -> None:
    async with gateway(tmp_path, transport) as gw:
        slow = await connect(gw.url("SLOW"), subprotocols=["ocpp1.6"], max_queue=1, max_size=None,  # type: ignore[list-item]
                             compression=None)
        try:
            assert (await rpc(slow, BOOT16))[0] == 3
            link = gw.hub.sessions["SLOW"].link
            big = '[2,"x","DataTransfer",{"vendorId":"v","data":"' + os.urandom(32_500).hex() + '"}]'
            sent = 0
            blocked: asyncio.Task[None] | None = None
            for _ in range(2000):  # bounded: socket buffers on loopback hold a few MB at most
                blocked = asyncio.create_task(link.send(big))
                done, _ = await asyncio.wait({blocked}, timeout=0.5)
                if not done:
                    break  # the gateway waits for the charger to read: back-pressure
                blocked.result()
                sent += 1
            assert blocked is not None and not blocked.done(), f"{sent} sends never waited"
            # another charger is served meanwhile
            async with connect(gw.url("OTHER"), subprotocols=["ocpp1.6"]) as other:  # type: ignore[list-item]
                assert (await rpc(other, BOOT16))[0] == 3
            # the charger reads: every message arrives, whole and in order, and the waiting send ends
            for _ in range(sent + 1):
                assert len(await asyncio.wait_for(slow.recv(), 10)) == len(big)
            await asyncio.wait_for(blocked, 10)
        finally:
            await slow.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_healthz_and_malformed_opening_requests(tmp_path: Path, transport: str) -> None:
    async with gateway(tmp_path, transport) as gw:
        def healthz() -> dict[str, Any]:
            with urllib.request.urlopen(f"http://127.0.0.1:{gw.ws_port}/healthz", timeout=5) as r:
                assert r.status == 200
                return dict(json.loads(r.read()))

        h = await asyncio.to_thread(healthz)
        assert h["status"] == "ok" and {"chargers", "buffered_bytes", "dropped_handshakes"} <= set(h)

        async def status_of(request: bytes) -> int:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.ws_port)
            try:
                writer.write(request)
                return int((await asyncio.wait_for(reader.readline(), 5)).split()[1])
            finally:
                writer.close()

        plain = b"GET /ocpp/CP1 HTTP/1.1\r\nHost: gw\r\n\r\n"
        assert await status_of(plain) == 426  # not an upgrade
        upgrade = (b"GET /ocpp/CP1 HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Version: 13\r\n")
        assert await status_of(upgrade + b"Sec-WebSocket-Key: short\r\n\r\n") == 400
        assert await status_of(upgrade + b"\r\n") == 400  # no key
        # a raw client with "Connection: keep-alive, Upgrade" (as browsers send) is upgraded
        raw = await RawCharger.open(gw.ws_port, "/ocpp/KA")
        assert raw.response.startswith(b"HTTP/1.1 101")
        raw.close()
