"""Upstream OCPP-J WebSocket client on picows: one connection per charger to `{url}/{charger_id}`.

The same promises as adapters/upstream_ws.py (read its module doc): exactly the charger's
subprotocol offered and checked in the answer (anything else: close 1002, `LinkFailed`), HTTP Basic
with the per-charger password (1.6 AuthorizationKey as raw bytes), TLS for `wss://` against
`ca_file` or the system's store (TLS >= 1.2, hostname checked), the gateway's client certificate for
profile 3, no proxy, no redirect followed, `User-Agent: ocpp-site-gateway`, `connect_timeout`; every
failure is a `LinkFailed` with a readable reason. The connector is chosen by gateway/app.py when
`[upstream].transport = "picows"` and compression is off (picows has no permessage-deflate).

What picows leaves to its user, done here: reassembling fragmented messages (the whole message is
capped at `[websocket].max_frame_size`: over it, close 1009), UTF-8 checked (close 1007), reserved
bits and stray continuations refused (close 1002), the closing handshake answered, and the
keepalive (`ping_interval`/`ping_timeout`, `probe()`), kept as timers rather than a task per link.

Text frames are framed here with masking keys from the kernel's CSPRNG (`text_frame`, as the
websockets link does): picows masks with the C library's `rand()`, which RFC 6455 §5.3 rules out
for data a third party can choose (charger payloads are). Control frames carry only the gateway's
own bytes and go through picows.

Delivery: a link is read either through `recv()` (the generic loop) or, eagerly, through `pump()`
(`PushUpstreamLink`): each message starts its handler in picows' frame callback through an
`Inbox` (adapters/inbox.py), so a message whose handling never waits costs no task and no future;
order is kept and the socket stops reading while more than a few messages wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from picows import (WSCloseCode, WSError, WSFrame, WSHandshakeError, WSInvalidStatusError, WSListener, WSMsgType,
                    WSTransport, ws_connect)

from adapters.inbox import Inbox
from adapters.upstream_dial import UpstreamDialer, abort_discarding, masked_text_frame
from gateway.errors import LinkClosed, LinkFailed
from gateway.protocol.frames import OcppVersion

log = logging.getLogger(__name__)

# picows logs every connection and disconnection at INFO; the gateway says what matters itself
# (a line per charger per reconnect would drown a site's log). Warnings and errors still show.
_wire = logging.getLogger("picows.upstream")
if _wire.level == logging.NOTSET:
    _wire.setLevel(logging.WARNING)
# an adapter, not the logger: given a Logger, picows makes a child Logger per connection (about
# 1.5 KiB for as long as the link lives); given an adapter it logs through it
_WIRE_LOG = logging.LoggerAdapter(_wire, {})

_READ_BUFFER = 2048  # picows' initial read buffer per link, its minimum (it doubles when a message needs more)
_BACKLOG = 4  # messages waiting for the reader beyond which the socket stops reading

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_PONG = WSMsgType.PONG
_CLOSE = WSMsgType.CLOSE

OnFrame = Callable[[str], Coroutine[Any, Any, None]]


class PicowsUpstreamLink(WSListener):
    """One upstream WebSocket, and picows' listener of it.

    Keepalive: a ping every `ping_interval` seconds after the last pong (0 = none) and at once on
    `probe()`; no pong within `ping_timeout` and the link is declared dead: the socket is aborted
    with SO_LINGER 0 (a silent link sends no FIN or RST; what waits in the kernel's send queue is
    dropped, the message in flight is sent again with its id anyway). `dead` keeps (wall-clock
    time, why) once the link has ended for any reason, `latency` the last ping's round trip."""

    # no instance dict: about 1.5 KiB less per link (there is one per relayed charger)
    __slots__ = ("_abandoned", "_close_timer", "_closing", "_ended", "_fast", "_heard", "_inbox", "_loop", "_parts",
                 "_parts_size", "_parts_type", "_paused", "_ping_payload", "_ping_sent", "_ping_timer", "_pings",
                 "_pong_timer", "_pump_error", "_queue", "_raw", "_reading_paused", "_turns", "_waiter", "_writers",
                 "close_timeout", "dead", "latency", "max_size", "ping_interval", "ping_timeout", "transport")

    def __init__(self, *, ping_interval: float, ping_timeout: float, max_size: int, close_timeout: float) -> None:
        super().__init__()
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_size = max_size
        self.close_timeout = close_timeout
        self.dead: tuple[float, str] | None = None  # (wall-clock time, why) once the link has ended
        self.latency: float | None = None  # seconds of the last ping's round trip
        self.transport: WSTransport | None = None
        self._raw: Any = None  # the underlying asyncio transport
        self._loop = asyncio.get_running_loop()
        self._ended = self._loop.create_future()  # resolved once the link has ended (no more messages)
        self._abandoned = False  # the dial was given up before the handshake completed
        # messages for recv() (and those that arrive before pump() starts)
        self._queue: list[str] = []
        self._waiter: asyncio.Future[str] | None = None
        self._reading_paused = False
        self._inbox: Inbox | None = None
        self._pump_error: BaseException | None = None
        self._fast: Callable[[str], bool] | None = None
        # a fragmented message being reassembled: its type and parts
        self._parts: list[bytes] | None = None
        self._parts_type: WSMsgType = _TEXT
        self._parts_size = 0
        # writing: paused over the transport's high-water mark; senders waiting their turn, in order
        self._paused = False
        self._writers: list[asyncio.Future[None]] = []
        self._turns = 0  # senders waiting or woken but not yet written
        # keepalive
        self._ping_timer: asyncio.TimerHandle | None = None
        self._heard = 0.0  # loop time of the last frame from the CSMS
        self._pong_timer: asyncio.TimerHandle | None = None
        self._ping_sent: float | None = None  # monotonic time of the ping waiting for its pong
        self._ping_payload = b""
        self._pings = 0
        self._close_timer: asyncio.TimerHandle | None = None
        self._closing = False  # close() was called

    # -- picows' callbacks ------------------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self._raw = transport.underlying_transport
        if self._abandoned:  # the dial timed out or was cancelled meanwhile: nobody owns this link
            transport.disconnect(False)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        self._heard = self._loop.time()  # the CSMS is there: no keepalive ping needed for a while
        msg_type = frame.msg_type
        if msg_type == _TEXT and frame.fin and self._parts is None and not (frame.rsv1 or frame.rsv2 or frame.rsv3):
            try:
                text = frame.get_payload_as_utf8_text()
            except UnicodeDecodeError:
                self._fail(WSCloseCode.INVALID_TEXT, "invalid UTF-8 in a text message")
                return
            self._message(text)
            return
        self._other_frame(frame, msg_type)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        timer, self._close_timer = self._close_timer, None
        if timer is not None:
            timer.cancel()
        handshake = transport.close_handshake
        received = handshake.recv if handshake is not None else None
        if handshake is not None and handshake.sent is not None and not handshake.recv_then_sent:
            self._end(self._own_close())
        elif received is not None:
            self._end(_closed_by(received.code, received.reason))
        else:
            self._end("connection lost (no close frame)")

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._next_writer()

    # -- frames -----------------------------------------------------------------------------------

    def _other_frame(self, frame: WSFrame, msg_type: WSMsgType) -> None:
        if msg_type == _PONG:
            self._pong(frame.get_payload_as_bytes())
            return
        if msg_type == _CLOSE:
            self._close_received(frame)
            return
        if frame.rsv1 or frame.rsv2 or frame.rsv3:  # no extension was negotiated
            self._fail(WSCloseCode.PROTOCOL_ERROR, "reserved bits set without an extension")
            return
        if msg_type == _CONTINUATION:
            parts = self._parts
            if parts is None:
                self._fail(WSCloseCode.PROTOCOL_ERROR, "continuation frame without a message")
                return
        elif msg_type == _TEXT or msg_type == _BINARY:
            if self._parts is not None:
                self._fail(WSCloseCode.PROTOCOL_ERROR, "new message before the last one ended")
                return
            if frame.fin:  # a whole binary message: not OCPP-J, skipped
                return
            parts = self._parts = []
            self._parts_type = msg_type
            self._parts_size = 0
        else:  # PING: picows answers it before it gets here
            return
        size = self._parts_size = self._parts_size + frame.payload_size
        if size > self.max_size:
            self._parts = None
            self._fail(WSCloseCode.MESSAGE_TOO_BIG, f"message over {self.max_size} bytes")
            return
        parts.append(frame.get_payload_as_bytes())
        if not frame.fin:
            return
        self._parts = None
        if self._parts_type != _TEXT:
            return
        try:
            text = b"".join(parts).decode()
        except UnicodeDecodeError:
            self._fail(WSCloseCode.INVALID_TEXT, "invalid UTF-8 in a text message")
            return
        self._message(text)

    def _message(self, text: str) -> None:
        inbox = self._inbox
        fast = self._fast
        if inbox is not None:
            if fast is not None and not inbox.busy and fast(text):
                return
            inbox.deliver(text)
            return
        waiter = self._waiter
        if waiter is not None and not self._queue and not waiter.done():
            if fast is not None and fast(text):
                return
            waiter.set_result(text)
            return
        self._queue.append(text)
        if len(self._queue) > _BACKLOG and not self._reading_paused:
            self._pause_reading()

    def _close_received(self, frame: WSFrame) -> None:
        transport = self.transport
        assert transport is not None
        code, reason = frame.get_close_code(), frame.get_close_reason() or ""
        if transport.is_close_frame_sent:  # the answer to our own close: the handshake is over
            self._end(self._own_close())
            transport.disconnect()
        else:  # answer it; the CSMS then closes the TCP connection
            self._end(_closed_by(code, reason))
            echo = code if code not in (WSCloseCode.NO_INFO, WSCloseCode.ABNORMAL_CLOSURE) else WSCloseCode.OK
            transport.send_close(echo)
            self._close_timer = self._loop.call_later(self.close_timeout, self._abort)

    def _own_close(self) -> str:
        """Why the gateway's side closed: close() was called, or picows found the CSMS breaking
        the protocol (a frame over max_frame_size, a bad opcode, ...) and closed with a code."""
        handshake = self.transport.close_handshake if self.transport is not None else None
        sent = handshake.sent if handshake is not None else None
        if self._closing or sent is None:
            return "closed by the gateway"
        return f"{sent.reason or 'protocol error'} (closed with {sent.code.value})"

    def _fail(self, code: WSCloseCode, why: str) -> None:
        """The CSMS broke the protocol: close with `code` and drop the connection."""
        transport = self.transport
        self._end(f"{why} (closed with {int(code.value)})")
        if transport is not None:
            transport.send_close(code, why.encode())
            transport.disconnect()

    # -- the end ----------------------------------------------------------------------------------

    def _end(self, why: str) -> None:
        """No more messages: the readers and writers waiting learn it, the keepalive stops."""
        if self.dead is None:
            self.dead = (time.time(), why)
        if self._ended.done():
            return
        self._ended.set_result(None)
        self._stop_keepalive()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(LinkClosed(self.dead[1]))
        writers, self._writers = self._writers, []
        for writer in writers:
            if not writer.done():
                writer.set_exception(LinkClosed(self.dead[1]))

    def _abort(self) -> None:
        raw = self._raw
        if raw is not None:
            raw.abort()

    def _declare_dead(self, why: str) -> None:
        if self.dead is None:
            self.dead = (time.time(), why)
        if self._raw is not None:
            abort_discarding(self._raw)
        self._end(why)

    @property
    def closed(self) -> bool:
        return self._ended.done()

    # -- keepalive --------------------------------------------------------------------------------

    def start(self) -> None:
        """The link is accepted (subprotocol checked): the keepalive runs."""
        self._arm_ping()

    def _arm_ping(self) -> None:
        if self.ping_interval > 0 and not self._ended.done():
            self._ping_timer = self._loop.call_at(max(self._heard, self._loop.time()) + self.ping_interval,
                                                  self._ping_if_idle)

    def _ping_if_idle(self) -> None:
        """The keepalive pings a link that has been quiet for `ping_interval`: a frame from the
        CSMS says as much as a pong, so while it talks no ping goes out (with many links, pings
        every few seconds cost as much as the traffic). A silent link is still declared dead within
        ping_interval + ping_timeout of the last frame it carried."""
        self._ping_timer = None
        heard_at = self._heard + self.ping_interval
        if heard_at > self._loop.time() and not self._ended.done():
            self._ping_timer = self._loop.call_at(heard_at, self._ping_if_idle)
            return
        self._ping()

    def _ping(self) -> None:
        self._ping_timer = None
        transport = self.transport
        if self._ended.done() or self._ping_sent is not None or transport is None:
            return
        self._pings += 1
        self._ping_payload = self._pings.to_bytes(4, "big")
        self._ping_sent = time.monotonic()
        self._pong_timer = self._loop.call_later(self.ping_timeout, self._no_pong)
        transport.send_ping(self._ping_payload)

    def _pong(self, payload: bytes) -> None:
        sent = self._ping_sent
        if sent is None or payload != self._ping_payload:
            return  # unsolicited, or for an older ping
        self.latency = time.monotonic() - sent
        self._ping_sent = None
        timer, self._pong_timer = self._pong_timer, None
        if timer is not None:
            timer.cancel()
        self._arm_ping()

    def _no_pong(self) -> None:
        self._pong_timer = None
        self._declare_dead(f"no pong within {self.ping_timeout:g} s (silent link)")

    def _stop_keepalive(self) -> None:
        for timer in (self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = None

    def probe(self) -> None:
        """Ping now (a CALL got no answer in time): a silent link is declared dead within
        `ping_timeout`. Nothing happens when a ping is already waiting for its pong."""
        if self._ended.done() or self._ping_sent is not None:
            return
        timer, self._ping_timer = self._ping_timer, None
        if timer is not None:
            timer.cancel()
        self._ping()

    # -- writing ----------------------------------------------------------------------------------

    def _frame(self, text: str) -> bytes:
        return masked_text_frame(text)

    def _writable(self) -> bool:
        transport = self.transport
        return not self._ended.done() and transport is not None and not transport.is_close_frame_sent \
            and not self._raw.is_closing()

    def send_now(self, text: str) -> bool:
        """Frame and write `text` at once, from a plain callback, when the link is open, its write
        buffer is not over the high-water mark and no `send` waits its turn. False: nothing was
        written; use `send`."""
        if self._paused or self._turns or not self._writable():
            return False
        self._raw.write(self._frame(text))
        return True

    async def send(self, text: str) -> None:
        """Written at once unless the write buffer is over its high-water mark (then this waits,
        in order with the other senders, until it drains). Raises LinkClosed."""
        if self._paused or self._turns:
            await self._turn()
        if not self._writable():
            raise LinkClosed(self.dead[1] if self.dead is not None else "closing")
        self._raw.write(self._frame(text))

    async def _turn(self) -> None:
        if self._ended.done():
            raise LinkClosed(self.dead[1] if self.dead is not None else "closed")
        writer = self._loop.create_future()
        self._writers.append(writer)
        self._turns += 1
        try:
            await writer
        except BaseException:
            with contextlib.suppress(ValueError):
                self._writers.remove(writer)
            raise
        finally:
            self._turns -= 1
            # the next sender goes once this one has written (it runs on before anything else)
            self._loop.call_soon(self._next_writer)

    def _next_writer(self) -> None:
        if self._paused:
            return
        writers = self._writers
        while writers:
            writer = writers.pop(0)
            if not writer.done():
                writer.set_result(None)
                return

    # -- reading ----------------------------------------------------------------------------------

    def set_fast_reader(self, on_text: Callable[[str], bool] | None) -> None:
        """Offer each text message to `on_text(text) -> bool` as it is parsed while the link's
        reader waits idle (`recv` suspended with nothing queued, or the pump's inbox idle); what it
        does not take goes to the reader, in order. None: stop offering."""
        self._fast = on_text

    def _pause_reading(self) -> None:
        raw = self._raw
        if raw is not None and not self._reading_paused and not raw.is_closing():
            self._reading_paused = True
            raw.pause_reading()

    def _resume_reading(self) -> None:
        raw = self._raw
        if self._reading_paused:
            self._reading_paused = False
            if raw is not None and not raw.is_closing():
                raw.resume_reading()

    async def recv(self) -> str:
        """The CSMS's next text message (binary messages are not OCPP-J and are skipped).
        Raises LinkClosed once the link has ended and every message before that was read."""
        queue = self._queue
        if queue:
            text = queue.pop(0)
            if not queue and self._reading_paused:
                self._resume_reading()
            return text
        if self._ended.done():
            raise LinkClosed(self.dead[1] if self.dead is not None else "closed")
        waiter = self._waiter = self._loop.create_future()
        try:
            return await waiter
        finally:
            self._waiter = None

    async def pump(self, on_frame: OnFrame) -> None:
        """Deliver every message, in order, to `on_frame` until the link ends; then raise
        LinkClosed (after the messages received before the end were handled). A message whose
        handler never waits is handled inside picows' callback (see the module doc); while more
        than a few wait, the socket stops reading. An exception `on_frame` raises ends the link
        and is raised here."""
        inbox = Inbox(on_frame, limit=_BACKLOG, pause=self._pause_reading, resume=self._resume_reading,
                      on_error=self._handler_failed, name="upstream-inbox")
        for text in self._queue:  # what arrived before the pump started, first
            inbox.deliver(text)
        self._queue.clear()  # (kept: one list per link)
        self._inbox = inbox
        self._resume_reading()
        try:
            await asyncio.shield(self._ended)
            await inbox.drain()
        except asyncio.CancelledError:
            self._inbox = None
            await inbox.close()
            raise
        self._inbox = None
        error = self._pump_error
        if error is not None:
            self._pump_error = None
            raise error
        raise LinkClosed(self.dead[1] if self.dead is not None else "closed")

    def _handler_failed(self, exc: BaseException) -> None:
        if self._pump_error is None:
            self._pump_error = exc
        self._fail(WSCloseCode.INTERNAL_ERROR, f"the gateway failed handling a message ({type(exc).__name__})")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the link: a close frame, then the CSMS's answer awaited up to `close_timeout`."""
        self._closing = True
        self._stop_keepalive()
        transport = self.transport
        if transport is None:
            self._abandoned = True
            self._end("closed by the gateway")
            return
        if not self._ended.done() and not transport.is_close_frame_sent:
            transport.send_close(WSCloseCode(code), reason.encode() if reason else None)
        if self._close_timer is not None:
            self._close_timer.cancel()
        try:
            async with asyncio.timeout(self.close_timeout):
                await transport.wait_disconnected()
        except TimeoutError:
            self._abort()
        except Exception:  # noqa: BLE001 - picows re-raises why it disconnected; the link is closed either way
            pass
        self._end("closed by the gateway")


def _closed_by(code: Any, reason: str) -> str:
    number = int(getattr(code, "value", code))
    if number in (0, 1005):
        return "closed by the CSMS (no code)"
    return f"closed by the CSMS (code {number}{', ' + reason if reason else ''})"


class PicowsUpstreamConnector(UpstreamDialer):
    """Dials upstream links on picows (see the module doc)."""

    async def connect(self, charger_id: str, version: OcppVersion, password: str | None) -> PicowsUpstreamLink:
        up = self.settings.upstream
        headers = {"User-Agent": "ocpp-site-gateway", "Sec-WebSocket-Protocol": version.value}
        authorization = self.authorization(charger_id, version, password)
        if authorization is not None:
            headers["Authorization"] = authorization
        link = PicowsUpstreamLink(ping_interval=up.ping_interval, ping_timeout=up.ping_timeout,
                                  max_size=self.settings.websocket.max_frame_size,
                                  close_timeout=min(5.0, up.ping_timeout))
        try:
            async with asyncio.timeout(up.connect_timeout):
                await ws_connect(lambda: link, self.url(charger_id), ssl_context=self.ssl,
                                 websocket_handshake_timeout=up.connect_timeout, logger_name=_WIRE_LOG,
                                 enable_auto_ping=False, enable_auto_pong=True,
                                 max_frame_size=self.settings.websocket.max_frame_size, extra_headers=headers,
                                 max_redirects=0, proxy=None, read_buffer_init_size=_READ_BUFFER,
                                 # the event loop's own transports (uvloop's where installed) and the
                                 # ssl module's TLS, as the charger port and the websockets links use
                                 use_aiofastnet=False)
        except BaseException as exc:
            link._abandoned = True  # a handshake that completes after all is dropped at once
            if link.transport is not None:
                link.transport.disconnect(False)
            if isinstance(exc, WSHandshakeError):
                raise LinkFailed(_handshake_failure(exc)) from exc
            if isinstance(exc, (OSError, TimeoutError, WSError, ValueError)):
                raise LinkFailed(f"{type(exc).__name__}: {exc or 'timed out'}") from exc
            raise
        response = link.transport.response if link.transport is not None else None
        headers_in = response.headers if response is not None else {}
        if headers_in.get("Sec-WebSocket-Protocol") != version.value:
            await link.close(1002, "subprotocol not accepted")
            raise LinkFailed(f"CSMS did not accept subprotocol {version.value}")
        if headers_in.get("Sec-WebSocket-Extensions"):
            await link.close(1002, "extension not offered")
            raise LinkFailed(f"CSMS answered with an extension the gateway did not offer "
                             f"({headers_in.get('Sec-WebSocket-Extensions')})")
        link.start()
        return link


def _handshake_failure(exc: WSHandshakeError) -> str:
    response = exc.response
    if isinstance(exc, WSInvalidStatusError) and response is not None:
        status = response.status
        location = response.headers.get("Location") if response.headers is not None else None
        where = f" to {location} (redirects are not followed)" if location else ""
        return f"InvalidStatus: HTTP {int(status)} {getattr(status, 'phrase', '')}{where}".rstrip()
    return f"{type(exc).__name__}: {exc}"
