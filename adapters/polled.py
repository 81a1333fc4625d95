"""What the SOAP and HTTP-binding transports share: a charger link without a connection.

Neither transport has a socket that lives as long as the charger's session, so the session policy
is: a charger's session starts with its first request and stays attached while the charger keeps
talking; after `idle_timeout` seconds with no request (and at least three times the heartbeat
interval it was given in its last BootNotification answer) the session ends with `hub.detach`,
which closes its upstream link, just as when a WebSocket charger disconnects. The next request
starts a new session.

A charger's request is fed to its session as an OCPP-J CALL; the session's answer arrives later
through `send()` as a CALLRESULT or CALLERROR with the same message id, and resolves the future the
HTTP request is waiting on. Frames the session sends with the unreadable-id marker `-1` (answers to
frames it could not read) are matched to the request being fed at that moment.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import secrets
from typing import Any, Callable

import orjson
from aiohttp import web

from gateway.errors import LinkClosed, RequestError
from gateway.protocol.frames import OcppVersion
from gateway.ports import ChargerHandle, ChargerIngress

log = logging.getLogger("gateway.polled")

_feeding: contextvars.ContextVar[asyncio.Future[list[Any]] | None] = contextvars.ContextVar("_feeding", default=None)
_ids = itertools.count(1)
_token = secrets.token_hex(4)


_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 5\r\n"
         b"Connection: close\r\nContent-Length: 21\r\n\r\ntoo many connections\n")


class _Busy(asyncio.Protocol):
    """A connection beyond the port's cap: answered 503 at once and closed (its request unread)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_BUSY)
        transport.close()


class _Capped:
    """aiohttp's protocol factory (web.Server) with a cap on open connections; everything else is
    the server's own."""

    def __init__(self, server: Any, limit: int, name: str) -> None:
        self._server = server
        self._limit = limit
        self._name = name
        self.refused = 0
        self._logged = 0.0

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self._server.connections) >= self._limit:
            self.refused += 1
            now = asyncio.get_running_loop().time()
            if now - self._logged > 10:
                self._logged = now
                log.warning("%s port: %d connections open, the limit: refusing new ones with 503 (%d so far)",
                            self._name, self._limit, self.refused)
            return _Busy()
        return self._server()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class CappedRunner(web.AppRunner):
    """The SOAP and HTTP-binding ports' runner: at most `max_connections` open connections (more
    get 503 and are closed), and a connection that has no whole request for `idle_timeout` seconds
    (a new one, one between keep-alive requests, or one stuck halfway through its headers) is
    closed. A request being handled (a long poll included) is not idle; its body has its own limit
    (BODY_TIMEOUT)."""

    def __init__(self, app: web.Application, *, max_connections: int, idle_timeout: float, name: str) -> None:
        super().__init__(app, access_log=None, keepalive_timeout=idle_timeout)
        self._cap = (max_connections, name)

    async def _make_server(self) -> Any:
        return _Capped(await super()._make_server(), *self._cap)


class TooLarge(RequestError):
    """The body is over the limit."""


class TooSlow(RequestError):
    """The client did not send its whole body in time (a slow or stalled client)."""


BODY_TIMEOUT = 30.0  # seconds for a whole request body; a charger's SOAP or OCPP-J body is small


async def read_limited(stream: Any, limit: int, timeout: float | None = None) -> bytes:
    """A whole HTTP body from an aiohttp stream, refusing more than `limit` bytes (one `read(n)`
    may return only part of a chunked or slow body) and a body that takes longer than `timeout`
    (a client trickling bytes must not hold a connection and its buffer for ever)."""
    chunks: list[bytes] = []
    size = 0
    timeout = BODY_TIMEOUT if timeout is None else timeout
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await stream.read(65536)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"more than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError as exc:
        raise TooSlow(f"body not received within {timeout:g} s") from exc


def new_call_id(prefix: str) -> str:
    """A message id for a charger request that arrived without an OCPP-J one (at most 36 characters)."""
    return f"{prefix}-{_token}-{next(_ids)}"


class PolledLink:
    """A `ChargerLink` for a transport without a lasting connection. Subclasses handle CALLs."""

    transport = "polled"

    def __init__(self, charger_id: str, remote: str) -> None:
        self.charger_id = charger_id
        self.remote = remote
        self.session: ChargerHandle | None = None
        self.closed = False
        self.busy = 0  # requests and calls in progress: never idle while > 0
        self.heartbeat_interval = 0
        self.last_seen = asyncio.get_running_loop().time()
        self._waiting: dict[str, asyncio.Future[list[Any]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- ChargerLink ------------------------------------------------------------------------------

    async def send(self, text: str) -> None:
        if self.closed:
            raise LinkClosed(f"{self.charger_id}: session ended")
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError:
            log.error("session sent a frame that is not JSON: %r", text[:200])
            return
        if not isinstance(frame, list) or len(frame) < 3:
            return
        if frame[0] == 2:
            await self.deliver_call(text, frame)
            return
        fut = self._waiting.pop(frame[1], None) if isinstance(frame[1], str) else None
        if fut is None and frame[1] == "-1":
            fut = _feeding.get()
        if fut is not None and not fut.done():
            fut.set_result(frame)
        else:
            log.debug("%s: answer %r has no waiting request", self.charger_id, frame[1])

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(LinkClosed(reason or "session ended"))
        self._waiting.clear()
        for task in list(self._tasks):
            task.cancel()
        self.on_closed()

    # -- for subclasses -----------------------------------------------------------------------------

    async def deliver_call(self, text: str, frame: list[Any]) -> None:
        """A CALL for the charger (from the CSMS or the gateway)."""
        raise NotImplementedError

    def on_closed(self) -> None:
        pass

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def touch(self) -> None:
        self.last_seen = asyncio.get_running_loop().time()

    async def request(self, message_id: str, text: str, timeout: float) -> list[Any]:
        """Feed one frame from the charger to its session and wait for the answer with `message_id`.
        Raises LinkClosed, asyncio.TimeoutError."""
        if self.closed or self.session is None:
            raise LinkClosed("session ended")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        self._waiting[message_id] = fut
        self.busy += 1
        token = _feeding.set(fut)
        try:
            await self.session.from_charger(text)
            async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it can swallow a cancel
                return await fut
        finally:
            _feeding.reset(token)
            self._waiting.pop(message_id, None)
            self.busy -= 1
            self.touch()

    async def feed(self, text: str) -> list[Any] | None:
        """Feed a frame that is not a readable CALL (a CALLRESULT or CALLERROR from the charger, or
        something unreadable); returns the session's immediate answer, if it gives one."""
        if self.closed or self.session is None:
            raise LinkClosed("session ended")
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        token = _feeding.set(fut)
        try:
            self.touch()
            await self.session.from_charger(text)
        finally:
            _feeding.reset(token)
        return fut.result() if fut.done() and not fut.cancelled() else None


class LinkRegistry:
    """The live links of one transport, one per charger, and the idle reaper that ends sessions."""

    def __init__(self, hub: ChargerIngress, idle_timeout: float) -> None:
        self.hub = hub
        self.idle_timeout = idle_timeout
        self.links: dict[str, PolledLink] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, charger_id: str, make: Callable[[], PolledLink]) -> PolledLink:
        """The charger's live link, starting its session if needed. Raises LinkFailed (strict mode,
        CSMS unreachable)."""
        link = self.links.get(charger_id)
        if link is not None and not link.closed:
            link.touch()
            return link
        # one lock per charger: a slow start (strict mode dials the CSMS first) stalls no one else
        lock = self._locks.setdefault(charger_id, asyncio.Lock())
        async with lock:
            link = self.links.get(charger_id)
            if link is None or link.closed:
                link = make()
                upstream = None
                if self.hub.needs_upstream_first(charger_id):
                    # strict offline mode: as for WebSocket chargers, no session without the CSMS
                    upstream = await self.hub.dial(charger_id, OcppVersion.V16)  # raises LinkFailed
                log.info("%s charger %s: session starts", link.transport, charger_id,
                         extra={"charger_id": charger_id})
                link.session = await self.hub.attach(charger_id, OcppVersion.V16, link, upstream)
                self.links[charger_id] = link  # only now: others take the fast path above
            link.touch()
        if not lock.locked():
            self._locks.pop(charger_id, None)
        return link

    def forget(self, link: PolledLink) -> None:
        if self.links.get(link.charger_id) is link:
            del self.links[link.charger_id]

    def limit(self, link: PolledLink) -> float:
        return max(self.idle_timeout, 3.0 * link.heartbeat_interval)

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap())

    async def _reap(self) -> None:
        period = max(0.05, min(5.0, self.idle_timeout / 4))
        while True:
            await asyncio.sleep(period)
            now = asyncio.get_running_loop().time()
            for link in list(self.links.values()):
                if link.closed:
                    self.forget(link)
                elif link.busy == 0 and now - link.last_seen > self.limit(link):
                    await self.end(link, "idle")

    async def end(self, link: PolledLink, why: str) -> None:
        log.info("%s charger %s: session ends (%s)", link.transport, link.charger_id, why,
                 extra={"charger_id": link.charger_id})
        self.forget(link)
        session = link.session
        if session is not None:
            await self.hub.detach(session, link)
        await link.close(1000, why)

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            try:
                await self._reaper
            except asyncio.CancelledError:
                pass
        for link in list(self.links.values()):
            await self.end(link, "gateway stopping")
