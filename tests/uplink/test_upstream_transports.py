"""The upstream link's contract, on each transport that can carry it (websockets and picows), over
real sockets on loopback.

What must hold on both: the URL `{url}/{charger_id}`, exactly the charger's subprotocol offered and
checked in the answer (not accepted: close 1002 and `LinkFailed`), HTTP Basic with the per-charger
password (1.6 AuthorizationKey as raw bytes), `User-Agent`, TLS against the configured CA with the
gateway's client certificate and the host name checked, every dial failure a `LinkFailed` with a
reason (401, 404, 500, a redirect not followed, refused, silent), a close by the CSMS reported with
its code and reason, 1009 for a message over `max_frame_size` (fragmented or not), 1007 for invalid
UTF-8, fragmented messages reassembled, binary skipped, ping/pong latency, a silent CSMS declared
dead within ping_interval + ping_timeout (its socket reset, not closed), writes in order through
`send`, `send_now` and back-pressure, and the fast reader's first refusal. A link that delivers by
itself (`PushUpstreamLink.pump`) keeps the order and stops reading while its handler is busy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ssl
import struct
import time
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Response
from websockets.utils import apply_mask

from adapters.upstream_picows import PicowsUpstreamConnector
from adapters.upstream_ws import WsUpstreamConnector
from gateway.config import Settings
from gateway.errors import LinkClosed, LinkFailed
from gateway.ports import FastUpstreamLane, PushUpstreamLink
from gateway.protocol.frames import OcppVersion
from tests.security.conftest import Certs, certs  # noqa: F401 - the session's test certificates (fixture)

pytestmark = pytest.mark.timeout(60)

KEY16 = "0001020304050607FFFFFFFFFFFFFFFFFFFFFFFF"  # J16 §6.2.2's example AuthorizationKey


@pytest.fixture(params=["websockets", "picows"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def connector(transport: str, url: str, **upstream: Any) -> Any:
    """The transport's connector (built directly: OCPPGW_UPSTREAM__TRANSPORT may name the other one)."""
    websocket = upstream.pop("websocket", {})
    settings = Settings(upstream={"url": url, "compression": False, **upstream}, websocket=websocket)
    return (PicowsUpstreamConnector if transport == "picows" else WsUpstreamConnector)(settings)


async def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    async with asyncio.timeout(timeout):
        while not (result := check()):
            await asyncio.sleep(0.01)
    return result


class Csms:
    """A websockets CSMS: records each connection's request, offered subprotocols and close code."""

    def __init__(self, accept: bool = True, status: int | None = None, location: str | None = None) -> None:
        self.accept = accept
        self.status = status
        self.location = location
        self.requests: list[dict[str, Any]] = []
        self.conns: list[ServerConnection] = []
        self.got: list[str] = []
        self.closed: list[tuple[int | None, str | None]] = []
        self.connected = asyncio.Event()

    def _select(self, conn: ServerConnection, offered: Any) -> Any:
        return offered[0] if self.accept and offered else None

    def _process(self, conn: ServerConnection, request: Any) -> Response | None:
        self.requests.append({"path": request.path, "headers": dict(request.headers.raw_items()),
                              "cert": conn.transport.get_extra_info("peercert")})
        if self.status is None:
            return None
        headers = Headers()
        if self.location:
            headers["Location"] = self.location
        return Response(self.status, HTTPStatus(self.status).phrase, headers, b"no")

    async def _handler(self, ws: ServerConnection) -> None:
        self.conns.append(ws)
        self.connected.set()
        try:
            async for message in ws:
                if isinstance(message, str):
                    self.got.append(message)
        finally:
            self.closed.append((ws.close_code, ws.close_reason))

    async def start(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> "Csms":
        self.server = await serve(self._handler, host, 0, ssl=tls, select_subprotocol=self._select,
                                  process_request=self._process, max_size=None)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, host: str = "127.0.0.1", scheme: str = "ws") -> str:
        return f"{scheme}://{host}:{self.port}/ocpp"

    async def stop(self) -> None:
        self.server.close()
        async with asyncio.timeout(10):
            await self.server.wait_closed()


@pytest.fixture
async def csms() -> AsyncIterator[Csms]:
    peer = await Csms().start()
    yield peer
    await peer.stop()


class RawCsms:
    """A CSMS on a plain TCP socket that answers the opening handshake itself and then writes
    whatever frame bytes the test gives it; it answers pings until told to go silent (then it
    reads nothing more at all)."""

    def __init__(self, subprotocol: str = "ocpp1.6") -> None:
        self.subprotocol = subprotocol
        self.connected = asyncio.Event()
        self.got: list[tuple[int, bytes]] = []  # (opcode, payload) of each frame from the client
        self.silent = False
        self.writer: asyncio.StreamWriter | None = None
        self.reader: asyncio.StreamReader | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> "RawCsms":
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        key = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                   if line.lower().startswith("sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: "
                     + self.subprotocol.encode() + b"\r\n\r\n")
        self.reader, self.writer = reader, writer
        self.connected.set()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while not self.silent:
                opcode, payload = await self._frame(reader)
                self.got.append((opcode, payload))
                if self.silent:  # the frame read while going silent is kept, but not answered
                    break
                if opcode == 0x9:
                    self.send(0xA, payload)
                elif opcode == 0x8:  # the closing handshake: answered, then the server closes TCP
                    self.send(0x8, payload[:2])
                    writer.close()
                    return

    @staticmethod
    async def _frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await reader.readexactly(8))
        mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
        data = await reader.readexactly(n)
        return b0 & 0x0F, apply_mask(data, mask)

    def send(self, opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> None:
        n = len(payload)
        first = (0x80 if fin else 0) | rsv | opcode
        head = struct.pack("!BB", first, n) if n < 126 else struct.pack("!BBH", first, 126, n)
        assert self.writer is not None
        self.writer.write(head + payload)

    def closes(self) -> list[int]:
        return [struct.unpack("!H", p[:2])[0] for op, p in self.got if op == 0x8 and len(p) >= 2]

    async def stop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.server.close()
        async with asyncio.timeout(10):
            await self.server.wait_closed()


@pytest.fixture
async def raw() -> AsyncIterator[RawCsms]:
    peer = await RawCsms().start()
    yield peer
    await peer.stop()


def implements(link: object, port: type) -> bool:
    return isinstance(link, port)


async def read_next(link: Any) -> str:
    return str(await asyncio.wait_for(link.recv(), 10))


async def ended(link: Any) -> str:
    """The reason the link reports once it has ended (every message before is read and dropped)."""
    async with asyncio.timeout(15):
        while True:
            try:
                await link.recv()
            except LinkClosed as exc:
                return str(exc)


# -- the opening handshake -------------------------------------------------------------------------


async def test_url_subprotocol_basic_and_user_agent(transport: str, csms: Csms) -> None:
    link16 = await connector(transport, csms.url()).connect("AL1000", OcppVersion.V16, KEY16)
    link201 = await connector(transport, csms.url()).connect("CP 1/é", OcppVersion.V201, "correct-horse-battery")
    try:
        r16, r201 = csms.requests
        assert r16["path"] == "/ocpp/AL1000" and r201["path"] == "/ocpp/CP%201%2F%C3%A9"
        assert r16["headers"]["Sec-WebSocket-Protocol"] == "ocpp1.6"  # exactly the charger's, nothing else
        assert r201["headers"]["Sec-WebSocket-Protocol"] == "ocpp2.0.1"
        # J16 §6.2.2: the AuthorizationKey's raw bytes; 2.x: the password's UTF-8
        assert r16["headers"]["Authorization"] == "Basic QUwxMDAwOgABAgMEBQYH////////////////"
        assert r201["headers"]["Authorization"] == "Basic " + base64.b64encode(
            "CP 1/é:correct-horse-battery".encode()).decode()
        assert r16["headers"]["User-Agent"] == "ocpp-site-gateway"
        assert "Sec-WebSocket-Extensions" not in r16["headers"]  # compression off
        await link16.send('[2,"1","Heartbeat",{}]')
        await until(lambda: csms.got)
    finally:
        await link16.close()
        await link201.close()


async def test_a_subprotocol_not_accepted_is_closed_1002(transport: str) -> None:
    csms = await Csms(accept=False).start()
    try:
        with pytest.raises(LinkFailed, match="did not accept subprotocol ocpp1.6"):
            await connector(transport, csms.url()).connect("CP1", OcppVersion.V16, None)
        await until(lambda: csms.closed)
        assert csms.closed[0][0] == 1002
    finally:
        await csms.stop()


@pytest.mark.parametrize("status", [401, 404, 500, 302])
async def test_http_refusals_fail_the_dial_with_the_status(transport: str, status: int) -> None:
    csms = await Csms(status=status, location="/elsewhere" if status == 302 else None).start()
    try:
        with pytest.raises(LinkFailed, match=str(status)):
            await connector(transport, csms.url()).connect("CP1", OcppVersion.V16, "secret-password-1")
        assert len(csms.requests) == 1  # a redirect is not followed
    finally:
        await csms.stop()


async def test_refused_and_silent_servers_fail_the_dial(transport: str) -> None:
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, never answers
    port = silent.sockets[0].getsockname()[1]
    try:
        with pytest.raises(LinkFailed):
            await connector(transport, f"ws://127.0.0.1:{port}/ocpp", connect_timeout=0.5).connect(
                "CP1", OcppVersion.V16, None)
    finally:
        silent.close()
        await silent.wait_closed()
    with pytest.raises(LinkFailed):  # nobody listens there now
        await connector(transport, f"ws://127.0.0.1:{port}/ocpp").connect("CP1", OcppVersion.V16, None)


async def test_tls_with_the_ca_the_client_certificate_and_the_host_name(transport: str, certs: Certs) -> None:  # noqa: F811 - the fixture
    tls = {"ca_file": certs.path("ca.pem"), "client_cert": certs.path("gateway-client.pem"),
           "client_key": certs.path("gateway-client.key"), "connect_timeout": 5.0}
    csms = await Csms().start("127.0.0.1", certs.server())
    other = await Csms().start("127.0.0.2", certs.server())  # its certificate names 127.0.0.1, not .2
    try:
        link = await connector(transport, csms.url(scheme="wss"), **tls).connect("CP1", OcppVersion.V201, None)
        await link.send('[2,"1","Heartbeat",{}]')
        await until(lambda: csms.got)
        await link.close()
        subject = dict(x for rdn in csms.requests[0]["cert"]["subject"] for x in rdn)
        assert subject["commonName"] == "ocpp-gateway"  # the gateway's own certificate, verified by the CSMS
        with pytest.raises(LinkFailed):  # the CSMS's certificate from a CA the gateway does not trust
            await connector(transport, csms.url(scheme="wss"), connect_timeout=5.0).connect(
                "CP1", OcppVersion.V201, None)
        with pytest.raises(LinkFailed):  # a trusted certificate for another host
            await connector(transport, other.url("127.0.0.2", "wss"), **tls).connect("CP1", OcppVersion.V201, None)
        with pytest.raises(LinkFailed):  # the CSMS requires a client certificate; none configured
            await connector(transport, csms.url(scheme="wss"), ca_file=certs.path("ca.pem")).connect(
                "CP1", OcppVersion.V201, None)
        assert len(csms.requests) == 1 and other.requests == []
    finally:
        await csms.stop()
        await other.stop()


# -- messages ---------------------------------------------------------------------------------------


async def test_a_close_by_the_csms_is_reported_with_code_and_reason(transport: str, csms: Csms) -> None:
    link = await connector(transport, csms.url()).connect("CP1", OcppVersion.V16, None)
    await until(lambda: csms.conns)
    await csms.conns[0].send("last words")
    await csms.conns[0].close(4001, "maintenance window")
    assert await read_next(link) == "last words"  # what came before the close is still read
    why = await ended(link)
    assert "4001" in why and "maintenance window" in why
    assert link.dead is not None and "4001" in link.dead[1]
    await link.close()


async def test_fragments_are_reassembled_and_binary_is_skipped(transport: str, csms: Csms) -> None:
    link = await connector(transport, csms.url()).connect("CP1", OcppVersion.V16, None)
    await until(lambda: csms.conns)
    ws = csms.conns[0]
    await ws.send(b"\x00binary")
    await ws.send(["[2,", '"é1","Reset"', ',{"type":"Soft"}]'])  # one message in three frames
    await ws.send([b"\x01", b"\x02"])  # a fragmented binary message
    await ws.send("after")
    assert await read_next(link) == '[2,"é1","Reset",{"type":"Soft"}]'
    assert await read_next(link) == "after"
    await link.close()


@pytest.mark.parametrize("fragmented", [False, True])
async def test_a_message_over_max_frame_size_is_closed_1009(transport: str, csms: Csms, fragmented: bool) -> None:
    link = await connector(transport, csms.url(), websocket={"max_frame_size": 4096}).connect(
        "CP1", OcppVersion.V16, None)
    await until(lambda: csms.conns)
    ws = csms.conns[0]
    await ws.send("x" * 4096)  # at the cap: fine
    assert len(await read_next(link)) == 4096
    await ws.send(["y" * 2000, "y" * 2000, "y" * 2000] if fragmented else "y" * 4097)
    assert "1009" in await ended(link)
    await until(lambda: csms.closed)
    assert csms.closed[0][0] == 1009
    await link.close()


async def test_invalid_utf8_is_closed_1007(transport: str, raw: RawCsms) -> None:
    link = await connector(transport, raw.url).connect("CP1", OcppVersion.V16, None)
    await raw.connected.wait()
    raw.send(0x1, b'["ok"]')
    assert await read_next(link) == '["ok"]'
    raw.send(0x1, b'["\xff\xfe"]')
    assert "1007" in await ended(link)
    await until(raw.closes)
    assert raw.closes() == [1007]
    await link.close()


async def test_reserved_bits_without_an_extension_are_closed_1002(transport: str, raw: RawCsms) -> None:
    link = await connector(transport, raw.url).connect("CP1", OcppVersion.V16, None)
    await raw.connected.wait()
    raw.send(0x1, b'["compressed?"]', rsv=0x40)
    assert "1002" in await ended(link)
    await until(raw.closes)
    assert raw.closes() == [1002]
    await link.close()


# -- keepalive --------------------------------------------------------------------------------------


async def test_ping_pong_latency_and_probe(transport: str, csms: Csms) -> None:
    link = await connector(transport, csms.url(), ping_interval=0.1).connect("CP1", OcppVersion.V16, None)
    assert await until(lambda: link.latency is not None)
    assert 0 < link.latency < 10
    await link.close()
    link = await connector(transport, csms.url(), ping_interval=0).connect("CP1", OcppVersion.V16, None)
    await asyncio.sleep(0.2)
    assert link.latency is None  # no pings at all ...
    link.probe()  # ... except when asked
    assert await until(lambda: link.latency is not None)
    await link.close()


async def test_no_keepalive_ping_while_the_csms_talks(transport: str, raw: RawCsms) -> None:
    """A frame from the CSMS proves the link as a pong would: while frames come at least every
    ping_interval no ping goes out (with a thousand links, pings every 5 s cost as much as the
    traffic and came in bursts); once it is quiet for ping_interval the pings come back."""
    interval = 0.4
    link = await connector(transport, raw.url, ping_interval=interval, ping_timeout=5).connect(
        "CP1", OcppVersion.V16, None)
    await raw.connected.wait()
    talking_until = time.monotonic() + 6 * interval
    sent = 0
    while time.monotonic() < talking_until:  # bounded: a frame every interval / 4 for 6 intervals
        raw.send(0x1, f'[2,"{sent}","Heartbeat",{{}}]'.encode())
        sent += 1
        assert await read_next(link) == f'[2,"{sent - 1}","Heartbeat",{{}}]'
        await asyncio.sleep(interval / 4)
    pings = sum(op == 0x9 for op, _ in raw.got)
    assert pings == 0, raw.got
    quiet = time.monotonic()
    assert await until(lambda: any(op == 0x9 for op, _ in raw.got))  # quiet now: the keepalive pings
    assert time.monotonic() - quiet >= interval * 0.5  # not before the link was quiet for a while
    assert await until(lambda: link.latency is not None)
    await link.close()


async def test_a_silent_csms_is_declared_dead_and_its_socket_reset(transport: str, raw: RawCsms) -> None:
    interval, timeout = 0.3, 0.6
    link = await connector(transport, raw.url, ping_interval=interval, ping_timeout=timeout).connect(
        "CP1", OcppVersion.V16, None)
    await raw.connected.wait()
    await until(lambda: any(op == 0x9 for op, _ in raw.got))  # the keepalive pings and gets its pongs
    raw.silent = True  # reads nothing more: no pong, no FIN, no RST
    went_silent = time.monotonic()
    why = await ended(link)
    took = time.monotonic() - went_silent
    assert "no pong" in why and link.dead is not None
    assert took <= interval + timeout + 1.0, took  # the bound the keepalive promises (plus scheduling slack)
    assert raw.reader is not None
    with pytest.raises(ConnectionResetError):  # SO_LINGER 0: reset, so nothing queued is delivered later
        async with asyncio.timeout(10):
            while await raw.reader.read(65536):
                pass
    await link.close()


# -- writing, the fast lane and the push delivery -----------------------------------------------------


async def test_send_send_now_and_back_pressure_keep_the_order(transport: str, raw: RawCsms) -> None:
    link = await connector(transport, raw.url, ping_interval=0).connect("CP1", OcppVersion.V16, None)
    assert implements(link, FastUpstreamLane)
    await raw.connected.wait()
    raw.silent = True  # stops reading: the link's write buffer fills
    sent: list[str] = []
    text = "z" * 1000
    # write until send_now refuses, again after a pause, until a pause no longer makes room (the
    # kernel's send buffer grows while the first writes go out); bounded: 20 MB at most
    for _ in range(50):
        before = len(sent)
        while len(sent) < 20_000:
            frame = f'[2,"{len(sent)}","DataTransfer",{{"data":"{text}"}}]'
            if not link.send_now(frame):
                break
            sent.append(frame)
        if len(sent) == before:
            break
        await asyncio.sleep(0.1)
    assert len(sent) < 20_000, "send_now never refused: no back-pressure"
    waiting = [asyncio.create_task(link.send(f'[2,"w{j}","Heartbeat",{{}}]')) for j in range(3)]
    await asyncio.sleep(0.1)
    assert not any(t.done() for t in waiting)  # send waits while the buffer is over the high-water mark
    assert not link.send_now('[2,"late","Heartbeat",{}]')  # and send_now does not jump the queue
    sent += [f'[2,"w{j}","Heartbeat",{{}}]' for j in range(3)]
    # the CSMS reads again: everything arrives, in the order written
    assert raw.reader is not None
    got = [payload.decode() for opcode, payload in raw.got if opcode == 0x1]
    async with asyncio.timeout(30):
        while len(got) < len(sent):
            opcode, payload = await RawCsms._frame(raw.reader)
            if opcode == 0x1:
                got.append(payload.decode())
    assert got == sent
    await asyncio.gather(*waiting)
    assert raw.writer is not None
    raw.writer.close()  # (nobody would answer the link's close frame)
    await link.close()


async def test_the_fast_reader_sees_messages_only_while_the_reader_is_idle(transport: str, csms: Csms) -> None:
    link = await connector(transport, csms.url(), ping_interval=0).connect("CP1", OcppVersion.V16, None)
    await until(lambda: csms.conns)
    ws = csms.conns[0]
    taken: list[str] = []

    def lane(text: str) -> bool:  # sees everything offered, takes what starts with "take"
        taken.append(text)
        return text.startswith("take")

    link.set_fast_reader(lane)
    for text in ("take-0", "keep-1", "take-2"):  # nobody reads: all queued for recv, the lane sees none
        await ws.send(text)
    await asyncio.sleep(0.2)
    assert taken == []
    assert [await read_next(link) for _ in range(3)] == ["take-0", "keep-1", "take-2"]
    reader = asyncio.create_task(link.recv())  # the reader waits: the lane takes what it wants
    await asyncio.sleep(0.05)
    await ws.send("take-3")
    await ws.send("keep-4")
    assert await asyncio.wait_for(reader, 5) == "keep-4"
    assert taken == ["take-3", "keep-4"]
    link.set_fast_reader(None)
    await link.close()


async def test_push_delivery_keeps_the_order_and_pauses_reading(csms: Csms) -> None:
    link = await connector("picows", csms.url(), ping_interval=0).connect("CP1", OcppVersion.V16, None)
    assert implements(link, PushUpstreamLink)
    await until(lambda: csms.conns)
    ws = csms.conns[0]
    got: list[str] = []
    gate = asyncio.Event()
    gate.set()

    async def handler(text: str) -> None:
        if not gate.is_set():
            await gate.wait()
        got.append(text)

    taken: list[str] = []

    def lane(text: str) -> bool:  # takes what starts with "take"
        if text.startswith("take"):
            taken.append(text)
            return True
        return False

    link.set_fast_reader(lane)
    pump = asyncio.create_task(link.pump(handler))
    await ws.send("m0")
    await ws.send("take-1")  # the inbox is idle: the fast reader gets first refusal
    await until(lambda: got == ["m0"] and taken == ["take-1"])
    gate.clear()
    await ws.send("m2")  # its handler waits; what follows queues behind it, the fast reader sees none
    n = 2000
    payload = "p" * 2000

    async def flood() -> None:  # 4 MB: the CSMS's own send waits once the link stops reading
        for i in range(n):
            await ws.send(f"take-{i}-{payload}")

    flooding = asyncio.create_task(flood())
    await until(lambda: link._reading_paused)  # more than a few waiting: the socket stopped reading
    await asyncio.sleep(0.2)
    assert taken == ["take-1"] and got == ["m0"]
    link.set_fast_reader(None)  # (else it would take the rest as soon as the inbox is idle again)
    gate.set()
    await asyncio.wait_for(flooding, 30)
    await until(lambda: len(got) == n + 2, 30)
    assert got[1] == "m2" and got[2:] == [f"take-{i}-{payload}" for i in range(n)]
    await ws.close(1000, "bye")
    with pytest.raises(LinkClosed, match="1000"):
        await asyncio.wait_for(pump, 10)
    await link.close()


async def test_a_failing_handler_ends_the_pump_with_its_error(csms: Csms) -> None:
    link = await connector("picows", csms.url(), ping_interval=0).connect("CP1", OcppVersion.V16, None)
    await until(lambda: csms.conns)

    async def handler(text: str) -> None:
        raise ValueError(text)

    pump = asyncio.create_task(link.pump(handler))
    await csms.conns[0].send("boom")
    with pytest.raises(ValueError, match="boom"):
        await asyncio.wait_for(pump, 10)
    await until(lambda: csms.closed)
    assert csms.closed[0][0] == 1011
    await link.close()



def test_the_composition_root_picks_picows_unless_compression_is_on(monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    from gateway.app import upstream_connector

    monkeypatch.delenv("OCPPGW_UPSTREAM__TRANSPORT", raising=False)
    url = "ws://127.0.0.1:1/ocpp"
    assert upstream_connector(Settings(upstream={"url": ""})) is None
    assert type(upstream_connector(Settings(upstream={"url": url}))) is PicowsUpstreamConnector  # the default
    assert type(upstream_connector(Settings(upstream={"url": url, "transport": "websockets"}))) is WsUpstreamConnector
    with caplog.at_level("INFO", logger="gateway"):
        chosen = upstream_connector(Settings(upstream={"url": url, "transport": "picows", "compression": True}))
    assert type(chosen) is WsUpstreamConnector
    assert "compression is on" in caplog.text
