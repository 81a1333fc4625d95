"""Upstream OCPP-J WebSocket client: one connection per charger to `{url}/{charger_id}`.

Offers exactly the charger's negotiated subprotocol, presents the charger's identity with its
per-charger `upstream_password` (HTTP Basic, user = charger id), verifies TLS for `wss://` against
`ca_file` or the system's trust store (TLS >= 1.2, hostname checked), and for profile 3 presents the
gateway's own client certificate (`client_cert`/`client_key`: a Local Controller has its own
Charging Station certificate, J201 §6.5). The charger's own Authorization header never travels
upstream: these links are built from configuration only (and from credentials the CSMS itself set,
adapters/credentials.py).

For a 1.6 charger an `upstream_password` that is an AuthorizationKey (32-40 hex digits) is sent as
its raw bytes, as OCPP-J 1.6 §6.2.2 says, unless `[upstream].authorization_key_bytes` is false (for a
CSMS that compares the hex text). No redirect is followed: a 3xx answer fails the dial.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from adapters.upstream_dial import UpstreamDialer, abort_discarding, masked_text_frame
from gateway.errors import LinkClosed, LinkFailed
from gateway.protocol.frames import OcppVersion


class _Connection(ClientConnection):
    """websockets' client connection with a synchronous lane for the replay's steady state.

    `on_text`, when set, sees a complete text message as it is parsed (in the transport's
    callback) while the link's reader is waiting with nothing queued, and may take it (returns
    True); anything it leaves, and every message while the reader is busy or messages are queued,
    goes through websockets' own queue to `recv()` as usual, so messages never change order."""

    on_text: Callable[[str], bool] | None = None
    heard = 0.0  # loop time of the last frame from the CSMS (the keepalive pings only a quiet link)

    def process_event(self, event: Any) -> None:
        self.heard = self.loop.time()
        on_text = self.on_text
        if on_text is not None and type(event) is Frame and event.opcode is Opcode.TEXT and event.fin \
                and self._reader_waiting():
            try:
                text = bytes(event.data).decode()
            except UnicodeDecodeError:
                pass  # websockets' own path reports it
            else:
                if on_text(text):
                    return
        super().process_event(event)

    def _reader_waiting(self) -> bool:
        """The reader is suspended in recv() for the first frame of a message, none queued."""
        try:
            messages = self.recv_messages
            frames = messages.frames
            waiter = frames.get_waiter
            return bool(messages.get_in_progress and not frames.queue and waiter is not None and not waiter.done())
        except AttributeError:  # another websockets release: the lane stays shut
            return False


class _Dial(connect):
    """websockets' `connect` without following redirects: a CSMS's answer 3xx fails the dial (the
    charger's Basic credentials go to the configured CSMS only, never where an answer points)."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


class WsUpstreamLink:
    """One upstream WebSocket, with its own keepalive: a ping every `ping_interval` seconds (0 =
    none) and at once on `probe()`; no pong within `ping_timeout` and the link is declared dead:
    the socket is aborted (a silent link sends no FIN or RST, so no closing handshake is waited
    for) and `recv` raises LinkClosed with the reason, which `dead` keeps with the time."""

    def __init__(self, ws: ClientConnection, ping_interval: float = 0.0, ping_timeout: float = 10.0) -> None:
        self.ws = ws
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.dead: tuple[float, str] | None = None  # (wall-clock time, why) once declared dead
        self.latency: float | None = None  # seconds of the last ping's round trip
        self._probe_now = asyncio.Event()
        self._keepalive_task: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(
            self._keepalive(), name="upstream-keepalive")

    def probe(self) -> None:
        """Ping now (a CALL got no answer in time): a silent link is declared dead within
        `ping_timeout`. Nothing happens when a ping is already waiting for its pong."""
        self._probe_now.set()

    async def _keepalive(self) -> None:
        """A ping once the link has been quiet for `ping_interval` (a frame from the CSMS says as
        much as a pong: while it talks, no ping goes out), or at once on `probe()`."""
        loop = asyncio.get_running_loop()
        since = loop.time()  # the link's start, then each ping's
        while self.dead is None:
            if self.ping_interval > 0:
                while not self._probe_now.is_set():
                    quiet_at = max(getattr(self.ws, "heard", 0.0), since) + self.ping_interval
                    if quiet_at <= loop.time():
                        break
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(quiet_at):
                            await self._probe_now.wait()
            else:
                await self._probe_now.wait()
            self._probe_now.clear()
            since = loop.time()
            if not await self._ping():
                return

    async def _ping(self) -> bool:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.ping_timeout):
                pong = await self.ws.ping()
                await pong
        except TimeoutError:
            self._declare_dead(f"no pong within {self.ping_timeout:g} s (silent link)")
            return False
        except ConnectionClosed:
            return False
        self.latency = time.monotonic() - started
        return True

    def _declare_dead(self, why: str) -> None:
        if self.dead is None:
            self.dead = (time.time(), why)
        if self.ws.transport is not None:
            abort_discarding(self.ws.transport)

    def _closed(self, exc: ConnectionClosed) -> LinkClosed:
        if self.dead is None:
            rcvd = exc.rcvd
            if rcvd is not None:
                why = f"closed by the CSMS (code {rcvd.code}{', ' + rcvd.reason if rcvd.reason else ''})"
            elif exc.sent is not None:  # the gateway's side closed: the CSMS broke the protocol
                why = f"{exc.__cause__ or exc.sent.reason or 'protocol error'} (closed with {exc.sent.code})"
            else:
                why = f"connection lost ({exc.__cause__ or 'no close frame'})"
            self.dead = (time.time(), why)
        return LinkClosed(self.dead[1])

    def set_fast_reader(self, on_text: Callable[[str], bool] | None) -> None:
        """See `_Connection.on_text`."""
        if isinstance(self.ws, _Connection):
            self.ws.on_text = on_text

    def send_now(self, text: str) -> bool:
        """Frame and write `text` at once, from a plain callback, when the connection is open and
        its write buffer is not over the high-water mark (flow control). False: nothing was
        written; use `send`. What `send` does minus the coroutine: the frame goes to the
        transport in the order of the calls."""
        ws = self.ws
        if not isinstance(ws, _Connection) or ws.protocol.state is not State.OPEN \
                or getattr(ws, "paused", True) or getattr(ws, "send_in_progress", True) is not None \
                or ws.transport.is_closing():
            return False
        if ws.protocol.extensions:  # permessage-deflate: websockets frames it
            ws.protocol.send_text(text.encode())
            frame = b"".join(ws.protocol.data_to_send())
        else:
            frame = masked_text_frame(text)  # framed here: keys from one pool (adapters/upstream_dial.py)
        try:
            ws.transport.write(frame)
        except Exception:  # noqa: BLE001 - the socket failed: the link is lost, as `send` would find
            ws.transport.abort()
        return True

    async def send(self, text: str) -> None:
        try:
            await self.ws.send(text)
        except ConnectionClosed as exc:
            raise self._closed(exc) from exc

    async def recv(self) -> str:
        """The CSMS's next text frame (binary frames are not OCPP-J and are skipped)."""
        while True:
            try:
                message = await self.ws.recv()
            except ConnectionClosed as exc:
                raise self._closed(exc) from exc
            if isinstance(message, str):
                return message

    async def close(self) -> None:
        task, self._keepalive_task = self._keepalive_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.ws.close()


class WsUpstreamConnector(UpstreamDialer):
    async def connect(self, charger_id: str, version: OcppVersion, password: str | None) -> WsUpstreamLink:
        up = self.settings.upstream
        headers = {}
        authorization = self.authorization(charger_id, version, password)
        if authorization is not None:
            headers["Authorization"] = authorization
        try:
            ws = await _Dial(
                self.url(charger_id),
                subprotocols=[version.value],  # type: ignore[list-item]
                additional_headers=headers,
                ssl=self.ssl,
                open_timeout=up.connect_timeout,
                compression="deflate" if up.compression else None,
                max_size=self.settings.websocket.max_frame_size,
                ping_interval=None,  # the link's own keepalive (WsUpstreamLink): it can probe at once
                close_timeout=min(5.0, up.ping_timeout),  # a dead link sends no closing handshake
                proxy=None,
                user_agent_header="ocpp-site-gateway",
                create_connection=_Connection,
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            raise LinkFailed(f"{type(exc).__name__}: {exc}") from exc
        if ws.subprotocol != version.value:
            await ws.close(1002, "subprotocol not accepted")
            raise LinkFailed(f"CSMS did not accept subprotocol {version.value}")
        return WsUpstreamLink(ws, up.ping_interval, up.ping_timeout)
