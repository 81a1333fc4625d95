"""One charger's WebSocket on picows, after the handshake (adapters/picows_server.py hands it over).

`ChargerConnection` is three things for one connection, so that a connection costs one object of
ours: the asyncio protocol of the socket (in front of picows' `WSProtocol`, which parses the frames
in its own buffer: this front counts the bytes that arrive, for the limits below), the picows
listener (`on_ws_frame`), and the session's `ChargerLink` (`send`, `close`).

It keeps every promise of adapters/websocket_server.py and adapters/ws_limits.py (reading paused,
bytes held, the message deadline and the keepalive are in adapters/picows_limits.py, a mixin):

- **Messages**: text frames, fragmented ones reassembled, go to `session.from_charger` through an
  `Inbox` (adapters/inbox.py: no task per message; more than 4 waiting pause the socket's reading).
  A message over `max_frame_size` closes with 1009 (picows checks each frame, this module the
  reassembled and the inflated message), invalid UTF-8 with 1007, a broken framing (a continuation
  without a start, a reserved bit not negotiated, a bad compressed stream) with 1002; a binary
  message gets the same CALLERROR as on the websockets server. permessage-deflate
  (adapters/deflate.py) when the handshake negotiated it.
- **Rate**: past `max_messages_per_second` (after `message_burst`) a charger's messages wait here
  and its socket is not read until their time comes: nothing refused or lost, TCP slows it down.
- **Bytes held** (ws_limits.Budget): what arrived and is not a whole frame yet (bytes received
  minus bytes of the frames picows handed over), the inflated fragments of an unfinished message,
  and whole messages waiting (rate, inbox). Before picows parses a read, the budget must have room
  for a whole message; otherwise the read waits, counted and unparsed, with reading paused, until
  the budget lets it go on (and the fattest connections of the fullest addresses are closed with
  1013 to make room). `message_timeout`: a message unfinished that long closes with 1008, unless
  the relay or the budget is what holds it up.
- **Keepalive**: a charger that sent nothing for `ping_interval` is pinged (a frame from it proves
  the link as a pong does; the first check after one interval and a random part of another:
  chargers that reconnected together are not pinged together for ever); no pong within
  `ping_timeout` drops the connection. Pings from the charger are answered.
- **Sending** writes at once (`WSTransport.send`); `send` waits only while the socket's write
  buffer is over its high-water mark; `LinkClosed` once the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Coroutine

from picows import WSCloseCode, WSListener, WSMsgType, WSTransport

from adapters.deflate import MessageTooBig, PerMessageDeflate
from adapters.inbox import Inbox
from adapters.picows_limits import HOLD, INBOX, ConnectionLimits, close_code, jitter
from gateway.errors import LinkClosed, ProtocolError
from gateway.protocol import frames as F
from gateway.protocol.frames import ErrorCode, OcppVersion

if TYPE_CHECKING:
    from picows.picows import WSProtocol  # type: ignore[attr-defined]  # not in picows' stubs
    from adapters.picows_server import PicowsServer
    from gateway.ports import ChargerHandle, UpstreamLink

log = logging.getLogger("gateway.websocket")

CLOSE_TIMEOUT = 10.0  # s for the peer to answer our close frame before the socket is dropped
WRITE_LIMIT = 32768  # the socket's write buffer high-water mark (as websockets' write_limit)
_TEXT, _BINARY, _CONT = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION
_PING, _PONG, _CLOSE = WSMsgType.PING, WSMsgType.PONG, WSMsgType.CLOSE


class ChargerConnection(ConnectionLimits, WSListener, asyncio.BufferedProtocol):
    """See the module docstring."""

    transport = "websocket"  # ChargerLink: what carries this charger

    __slots__ = (
        "server", "charger_id", "subprotocol", "remote", "peer", "group", "held", "_upstream", "_codec", "_offered",
        "_proto", "_tr", "_ws", "_loop", "_counted_open", "_version", "_session", "_inbox", "_from_charger",
        "_attaching", "_bucket", "_throttled", "_held_back", "_release_timer", "_waiting", "_waiting_bytes",
        "_received", "_consumed", "_deferred", "_parts", "_partial", "_binary", "_compressed", "_pauses",
        "_closed", "_closing", "_dropped", "_lost", "_close_code", "_close_timer", "_gone", "_drain",
        "_deadline", "_releasing", "_ping_timer", "_ping_data", "_heard", "_task",
    )

    def __init__(self, server: PicowsServer, charger_id: str, subprotocol: str | None, upstream: UpstreamLink | None,
                 remote: Any, group: str, counted_open: bool, codec: PerMessageDeflate | None, offered: str | None) -> None:
        self.server = server
        self.charger_id = charger_id
        self.subprotocol = subprotocol
        self.remote = f"{remote[0]}:{remote[1]}" if remote else "?"
        self.peer = str(remote[0]) if remote else "?"
        self.group = group
        self.held = 0  # counted in the budget
        self._upstream = upstream
        self._codec = codec
        self._offered = offered  # the Sec-WebSocket-Protocol header (for the log when none is common)
        self._proto: WSProtocol | None = None
        self._tr: asyncio.Transport | None = None
        self._ws: WSTransport | None = None
        self._loop = asyncio.get_running_loop()
        self._counted_open = counted_open  # in Admission's open connections (ids without [chargers.ID])
        self._version = OcppVersion(subprotocol) if subprotocol else None
        self._session: ChargerHandle | None = None
        self._inbox: Inbox | None = None
        self._from_charger: Any = None
        self._attaching: asyncio.Task[None] | None = None
        self._bucket = server.door.rate_bucket(charger_id)
        self._throttled = False
        self._held_back: list[tuple[str, int]] = []  # messages waiting for the attach or the rate
        self._release_timer: asyncio.TimerHandle | None = None
        self._waiting: list[int] = []  # sizes of the messages queued in the inbox
        self._waiting_bytes = 0  # held back + queued
        self._received = 0  # bytes of frames the socket delivered
        self._consumed = 0  # ... and of the frames picows handed over
        self._deferred = 0  # bytes received and not yet parsed (the budget is full)
        self._parts: list[bytes] | None = None  # the fragments of an unfinished message
        self._partial = 0
        self._binary = False
        self._compressed = False
        self._pauses = 0
        self._closed = False  # no more sending (a close frame went out, or the socket is gone)
        self._closing = False  # we sent a close frame and read on for the peer's
        self._dropped = False  # what it holds is no longer counted
        self._lost = False
        self._close_code: int | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._gone: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._releasing = 0
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_data: bytes | None = None
        self._heard = 0.0  # loop time of the charger's last frame (the keepalive pings only a quiet link)
        self._task: asyncio.Task[None] | None = None  # the last background task of ours (kept by reference)

    @property
    def socket(self) -> asyncio.Transport | None:
        """The connection's transport while it is open."""
        return None if self._lost else self._tr

    # -- the asyncio protocol (in front of picows' WSProtocol) ----------------------------------------

    def take_over(self, transport: asyncio.Transport, proto: WSProtocol, head: bytes, tail: bytes) -> None:
        """The handshake's socket is ours now: picows reads the request (`head`, as the front door
        rewrote it), answers 101 (our listener factory) and parses what followed it (`tail`)."""
        self._proto = proto
        self._tr = transport
        transport.set_protocol(self)
        proto.connection_made(transport)
        self._ws = proto.transport
        transport.set_write_buffer_limits(high=WRITE_LIMIT)
        self._feed(head)
        if tail and not self._closed:
            self._received += len(tail)
            self._feed(tail)
            self._account()
        if not self._pauses and not self._lost:  # the front door paused reading while it decided
            transport.resume_reading()

    def _feed(self, data: bytes) -> None:
        proto = self._proto
        view = memoryview(data)
        while view and proto is not None:
            buffer = proto.get_buffer(-1)
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            proto.buffer_updated(n)
            view = view[n:]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass  # take_over() did it

    def get_buffer(self, sizehint: int) -> memoryview:
        assert self._proto is not None
        if self._deferred:  # never overwrite what waits unparsed (reading is paused meanwhile anyway)
            return self._proto.get_buffer(sizehint)[self._deferred:]
        return self._proto.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._received += nbytes
        ws = self._ws
        if ws is None or ws.is_close_frame_sent and not self._closing:  # closing: nothing more is read
            self._consumed += nbytes
            return
        budget = self.server.budget
        if self._deferred or budget.cap - budget.held - budget.releasing < budget.max_frame \
                and budget.must_wait(self):
            if not self._dropped:
                self._defer(nbytes)
            return
        assert self._proto is not None
        self._proto.buffer_updated(nbytes)
        if self._received != self._consumed or self._partial or self._waiting_bytes or self.held:
            self._account()

    def eof_received(self) -> bool:
        return False  # the transport closes itself

    def pause_writing(self) -> None:
        if self._drain is None:
            self._drain = self._loop.create_future()

    def resume_writing(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        proto, self._proto = self._proto, None  # no cycle left between picows' protocol and us
        if proto is not None:
            proto.connection_lost(exc)
        self._closed = self._lost = True
        for timer in (self._ping_timer, self._close_timer, self._release_timer, self._deadline):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._close_timer = self._release_timer = self._deadline = None
        if self._counted_open:
            self._counted_open = False
            self.server.admission.closed(self.group)
        self._forget()
        amount, self._releasing = self._releasing, 0
        if amount:  # free once what waited is let go of (the loop iteration after)
            self._loop.call_soon(self.server.budget.release, amount)
        self.resume_writing()
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
        if self._attaching is not None:
            self._task = self._loop.create_task(self._detach(), name=f"charger:{self.charger_id}:detach")
        else:
            self.server.finished(self)

    # -- the picows listener -----------------------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._ws = transport
        if self.subprotocol is None:
            log.warning("charger %s offered no supported OCPP version (%s); closing", self.charger_id, self._offered)
            if self._upstream is not None:
                self._task = self._loop.create_task(self._upstream.close())
                self._upstream = None
            self._fail(1002, "no common OCPP subprotocol")
            return
        log.info("charger %s connected from %s with %s", self.charger_id, self.remote, self.subprotocol,
                 extra={"charger_id": self.charger_id})
        self._pause(HOLD)  # until the session is attached
        self._attaching = self._loop.create_task(self._attach(), name=f"charger:{self.charger_id}:attach")
        interval = self.server.ping_interval
        if interval > 0:
            self._ping_timer = self._loop.call_later(interval + jitter.uniform(0, interval), self._ping)

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        self._heard = self._loop.time()
        size = frame.payload_size
        self._consumed += size + (6 if size < 126 else 8 if size < 65536 else 14)  # masked frame headers
        if frame.msg_type is _TEXT and frame.fin and self._parts is None and not self._closed \
                and not (frame.rsv1 or frame.rsv2 or frame.rsv3):
            try:
                text = frame.get_payload_as_utf8_text()
            except UnicodeDecodeError:
                self._fail(1007, "invalid UTF-8")
                return
            self._message(text, size)
            return
        self._frame(frame, size)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        pass  # connection_lost does it (picows calls this only after a handshake it completed)

    def _frame(self, frame: Any, size: int) -> None:
        kind = frame.msg_type
        ws = self._ws
        assert ws is not None
        if kind is _PING:
            if not self._closed:
                ws.send_pong(frame.get_payload_as_bytes())
            return
        if kind is _PONG:
            if self._ping_data is not None and frame.get_payload_as_bytes() == self._ping_data:
                self._pong()
            return
        if kind is _CLOSE:
            code = int(frame.get_close_code())
            self._close_code = code or 1005
            if not self._closed:  # the peer's close: answered with its code, then the socket closes
                self._closed = True
                ws.send_close(close_code(code) if code else WSCloseCode.OK)
            self._close_socket()
            return
        if self._closed:
            return
        if frame.rsv2 or frame.rsv3:
            self._fail(1002, "reserved bits must be 0")
            return
        if kind is _CONT:
            if self._parts is None:
                self._fail(1002, "unexpected continuation frame")
                return
            if frame.rsv1:
                self._fail(1002, "reserved bit 1 on a continuation frame")
                return
        else:
            if self._parts is not None:
                self._fail(1002, "expected a continuation frame")
                return
            if frame.rsv1 and self._codec is None:
                self._fail(1002, "reserved bit 1 without permessage-deflate")
                return
            self._parts = []
            self._binary = kind is _BINARY
            self._compressed = bool(frame.rsv1)
        payload = frame.get_payload_as_bytes()
        if self._compressed:
            payload = self._inflate(payload, frame.fin)
            if payload is None:
                return
        self._partial += len(payload)
        if self._partial > self.server.max_frame:
            self._fail(1009, "message too big")
            return
        self._parts.append(payload)
        if not frame.fin:
            return
        data = b"".join(self._parts)
        self._parts = None
        self._partial = 0
        if self._binary:  # OCPP-J is UTF-8 JSON in text frames (J16 §4.1.2, J201 §4.1.2)
            if self._version is not None:
                ws.send(_TEXT, F.call_error(self._version, F.UNREADABLE_ID, ErrorCode.RPC_FRAMEWORK_ERROR,
                                            "binary frames are not OCPP-J"))
            return
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self._fail(1007, "invalid UTF-8")
            return
        self._message(text, len(data))

    def _inflate(self, payload: bytes, fin: bool) -> bytes | None:
        assert self._codec is not None
        try:
            return self._codec.decode(payload, fin)
        except MessageTooBig:
            self._fail(1009, "message too big")
        except ProtocolError:  # corrupt compressed data
            self._fail(1002, "bad compressed data")
        return None

    # -- messages to the session ---------------------------------------------------------------------------

    def _message(self, text: str, size: int) -> None:
        if self._held_back or self._inbox is None:
            self._hold(text, size)
            return
        bucket = self._bucket
        if bucket is not None and not bucket.take(self._loop.time()):
            # too fast: its messages wait and its socket is not read until their time comes
            if not self._throttled:
                self._throttled = True
                log.warning("charger %s sends more than %g frames/s; slowing it down", self.charger_id,
                            self.server.rate, extra={"charger_id": self.charger_id})
            self._hold(text, size)
            return
        self._deliver(text, size)

    def _hold(self, text: str, size: int) -> None:
        self._held_back.append((text, size))
        self._waiting_bytes += size
        self._pause(HOLD)
        if self._inbox is not None and self._release_timer is None and self._bucket is not None:
            self._release_timer = self._loop.call_later(self._bucket.wait_time(self._loop.time()), self._release)

    def _release(self) -> None:
        """Messages held back go on, as far as the rate allows."""
        self._release_timer = None
        held, bucket = self._held_back, self._bucket
        while held and not self._closed:
            now = self._loop.time()
            if bucket is not None and not bucket.take(now):
                self._release_timer = self._loop.call_later(bucket.wait_time(now), self._release)
                return
            text, size = held.pop(0)
            self._waiting_bytes -= size
            self._deliver(text, size)
        self._resume(HOLD)
        self._account()

    def _deliver(self, text: str, size: int) -> None:
        inbox = self._inbox
        assert inbox is not None
        if inbox.busy:  # it queues: counted until the handler takes it
            self._waiting.append(size)
            self._waiting_bytes += size
        inbox.deliver(text)

    def _handle(self, text: str) -> Coroutine[Any, Any, None]:
        """The inbox's handler: a queued message is taken (no longer held), the session gets it."""
        if self._waiting:
            self._waiting_bytes -= self._waiting.pop(0)
            self._account()
        return self._from_charger(text)

    def _handler_failed(self, exc: BaseException) -> None:
        log.error("charger %s: handling a message failed; closing", self.charger_id, exc_info=exc,
                  extra={"charger_id": self.charger_id})
        self._fail(1011, "internal error")

    async def _attach(self) -> None:
        assert self._version is not None
        upstream, self._upstream = self._upstream, None
        try:
            session = await self.server.hub.attach(self.charger_id, self._version, self, upstream)
        except Exception:
            log.exception("charger %s: the session could not take the connection", self.charger_id)
            self._fail(1011, "internal error")
            return
        self._session = session
        self._from_charger = session.from_charger
        self._inbox = Inbox(self._handle, limit=4, pause=lambda: self._pause(INBOX),
                            resume=lambda: self._resume(INBOX), on_error=self._handler_failed,
                            name=f"charger:{self.charger_id}")
        if not self._lost:
            self._release()

    async def _detach(self) -> None:
        try:
            if self._attaching is not None and not self._attaching.done():
                await asyncio.wait({self._attaching})
            session = self._session
            if session is None:
                return
            if self._inbox is not None:
                await self._inbox.drain()
            log.info("charger %s disconnected (%s)", self.charger_id, self._close_code or 1006,
                     extra={"charger_id": self.charger_id})
            await self.server.hub.detach(session, self)
        finally:
            self._session = self._inbox = self._from_charger = None
            self.server.finished(self)

    # -- the ChargerLink -----------------------------------------------------------------------------------

    async def send(self, text: str) -> None:
        if self._closed:
            raise LinkClosed("connection closed")
        ws = self._ws
        assert ws is not None
        codec = self._codec
        if codec is None:
            ws.send(_TEXT, text)
        else:
            ws.send(_TEXT, codec.encode(text.encode()), True, True)
        drain = self._drain
        if drain is not None:  # over the high-water mark: wait until the charger reads
            await asyncio.shield(drain)
            if self._lost:
                raise LinkClosed("connection lost")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """A close frame; the socket closes when the peer answers it (or after CLOSE_TIMEOUT)."""
        if not self._closed and self._ws is not None:
            self._closed = self._closing = True
            self._ws.send_close(close_code(code), reason.encode())
            self._close_timer = self._loop.call_later(CLOSE_TIMEOUT, self._abort)
            if self._pauses and self._tr is not None:  # read on: the peer's close frame must get in
                self._pauses = 0
                self._tr.resume_reading()
        if not self._lost:
            if self._gone is None:
                self._gone = self._loop.create_future()
            await asyncio.shield(self._gone)

    # -- closing ------------------------------------------------------------------------------------------

    def _fail(self, code: int, reason: str) -> None:
        """A close frame, then the socket closes (what was written goes out first)."""
        if self._closed or self._ws is None:
            return
        self._closed = True
        self._ws.send_close(close_code(code), reason.encode())
        self._close_socket()

    def _close_socket(self) -> None:
        if self._tr is not None and not self._lost:
            self._tr.close()
            if self._close_timer is None:  # a peer that does not read must not hold it open
                self._close_timer = self._loop.call_later(CLOSE_TIMEOUT, self._abort)

    def _abort(self) -> None:
        self._close_timer = None
        if self._tr is not None:
            self._tr.abort()
