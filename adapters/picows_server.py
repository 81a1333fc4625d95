"""Charger-facing OCPP-J WebSocket server on picows (`[websocket].transport = "picows"`).

The same port as adapters/websocket_server.py (its module docstring has the rules; the decisions
are adapters/ws_handshake.py's, shared), with picows (Cython framing) carrying the frames:

- **The front door** (`_FrontDoor`, one asyncio protocol per accepted TCP/TLS connection) admits
  the connection per address (ws_limits.Admission, from `connection_made`; refused ones are held
  unread a while, then closed), reads the request head (at most 16 KiB: 431; within
  `handshake_timeout`, else the socket is dropped), answers `GET /healthz`, asks
  `ChargerDoor.decide` (in a task: authentication may hash a password, strict mode dials the CSMS)
  and answers its refusals. Malformed requests get 400 (or 426 for a missing Upgrade or a version
  other than 13) with the reason.
- **The hand-over**: an admitted request's socket goes to picows' `WSProtocol`, built as picows'
  own `ws_create_server` builds it, behind a `ChargerConnection` (adapters/picows_link.py: the
  listener, the charger link and the byte counting in one). picows is given the request head
  rewritten to what it checks (the upgrade headers we validated: picows accepts `Connection:
  upgrade` only, where browsers send `keep-alive, Upgrade`); its listener factory returns the
  prepared 101 (with `Sec-WebSocket-Protocol` and, when negotiated, `Sec-WebSocket-Extensions`).
- permessage-deflate: adapters/deflate.py negotiates (RFC 7692) and codes each message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import http
import logging
import re
import ssl
from typing import Any

from picows import WSAutoPingStrategy, WSUpgradeResponse, WSUpgradeResponseWithListener
from picows.picows import WSProtocol  # type: ignore[attr-defined]  # not in picows' stubs (as in its own api.py)

from adapters import listen
from adapters.charger_auth import ChargerAuth
from adapters.credentials import CredentialBook
from adapters.deflate import PerMessageDeflate, negotiate
from adapters.picows_link import ChargerConnection
from adapters.ws_handshake import (SERVER_HEADER, Admitted, Answer, ChargerDoor, http_date, offered_subprotocols,
                                   ListeningPort, plain_answer)
from adapters.ws_limits import Admission, Budget
from gateway.config import Settings, split_listen
from gateway.errors import RequestError
from gateway.ports import ChargerIngress
from gateway.security import address_group

log = logging.getLogger("gateway.websocket")

MAX_HEAD = 16384  # bytes of a request head (as picows' own limit)
MAX_HEADERS = 128
READ_BUFFER = 2048  # picows' first read buffer per connection, its minimum (it doubles when a message needs more)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class _PicowsLog(logging.LoggerAdapter[logging.Logger]):
    """picows' log: nothing below WARNING (it logs every connection at INFO), and what it logs at
    ERROR about a peer breaking the protocol is a WARNING here (its own failures stay errors)."""

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.WARNING and self.logger.isEnabledFor(level)

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level == logging.ERROR and not kwargs.get("exc_info"):
            level = logging.WARNING
        if self.isEnabledFor(level):
            super().log(level, msg, *args, **kwargs)


class BadRequest(RequestError):
    """The opening request is malformed; `answer` says so (400, 426, 431)."""

    def __init__(self, reason: str, status: http.HTTPStatus = http.HTTPStatus.BAD_REQUEST,
                 *headers: tuple[str, str]) -> None:
        super().__init__(reason)
        self.answer = plain_answer(status, reason, *headers)


def parse_head(head: bytes) -> tuple[str, dict[str, list[str]]]:
    """The path and the headers (by lower-case name) of a request head (without its blank line);
    BadRequest if it is not a request picows would take."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[1]:
        raise BadRequest("malformed request line")
    method, target, version = parts
    if method != b"GET":
        raise BadRequest("the method must be GET")
    if version != b"HTTP/1.1":
        raise BadRequest("the protocol must be HTTP/1.1")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(f"more than {MAX_HEADERS} headers")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise BadRequest("malformed header line")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise BadRequest("control characters in a header value")
        headers.setdefault(name.decode("ascii").lower(), []).append(value.decode("ascii", "surrogateescape"))
    if "transfer-encoding" in headers or any(v.strip("0") for v in headers.get("content-length", [])):
        raise BadRequest("a request body is not expected")
    return target.decode("ascii", "surrogateescape"), headers


def _tokens(values: list[str]) -> list[str]:
    return [t.strip().lower() for v in values for t in v.split(",")]


def upgrade_key(headers: dict[str, list[str]]) -> str:
    """The Sec-WebSocket-Key of a valid WebSocket upgrade request (RFC 6455 §4.2.1); BadRequest if not."""
    if "upgrade" not in _tokens(headers.get("connection", [])):
        raise BadRequest("the Connection header must include Upgrade", http.HTTPStatus.UPGRADE_REQUIRED,
                         ("Upgrade", "websocket"))
    if _tokens(headers.get("upgrade", [])) != ["websocket"]:
        raise BadRequest("the Upgrade header must be websocket", http.HTTPStatus.UPGRADE_REQUIRED,
                         ("Upgrade", "websocket"))
    keys = headers.get("sec-websocket-key", [])
    try:
        if len(keys) != 1 or len(base64.b64decode(keys[0].encode("ascii"), validate=True)) != 16:
            raise ValueError
    except (ValueError, UnicodeEncodeError, binascii.Error) as exc:
        raise BadRequest("invalid Sec-WebSocket-Key header") from exc
    if headers.get("sec-websocket-version") != ["13"]:
        raise BadRequest("Sec-WebSocket-Version must be 13", http.HTTPStatus.UPGRADE_REQUIRED,
                         ("Sec-WebSocket-Version", "13"))
    return keys[0]


class _FrontDoor(asyncio.Protocol):
    """One accepted connection until its handshake is decided (see the module docstring)."""

    def __init__(self, server: PicowsServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.remote: Any = None
        self.group = "?"
        self.limited = True
        self.head = bytearray()
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.refused = False
        self.handshaking = False
        self.counted_open = False
        self.done = False  # answered or handed over

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = tr = transport  # type: ignore[assignment]  # a uvloop transport is not an asyncio.Transport subclass
        self.remote = transport.get_extra_info("peername")
        peer = str(self.remote[0]) if self.remote else "?"
        self.group = address_group(peer)
        admission = self.server.admission
        self.limited = not admission.exempt(peer)
        if not admission.start_handshake(self.group, self.limited):
            # refused before a byte is read; held open (unread) a while, so that a flood re-opening
            # whatever is closed cannot cycle connections fast enough to fill the accept queue
            self.refused = True
            admission.tarpit(tr)  # type: ignore[arg-type]  # as above
            return
        self.handshaking = True
        self.server.doors.add(self)
        self.timer = asyncio.get_running_loop().call_later(self.server.handshake_timeout, self._too_slow)

    def data_received(self, data: bytes) -> None:
        if self.refused or self.done:
            return
        self.head += data
        if self.task is not None:
            return  # what follows the request waits for the hand-over (reading is paused)
        end = self.head.find(b"\r\n\r\n")
        if end < 0 and len(self.head) < MAX_HEAD:
            return
        if end < 0 or end >= MAX_HEAD:
            self._answer(plain_answer(http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "the request head is too large"))
            return
        assert self.transport is not None
        self.transport.pause_reading()
        self.task = asyncio.get_running_loop().create_task(self._decide(end), name="websocket:handshake")

    async def _decide(self, end: int) -> None:
        server = self.server
        try:
            path, headers = parse_head(bytes(self.head[:end]))
            if path.split("?", 1)[0] == "/healthz":
                self._answer(server.door.healthz())
                return
            transport = self.transport
            assert transport is not None
            verdict = await server.door.decide(
                path, offered_subprotocols(headers.get("sec-websocket-protocol", [])),
                next(iter(headers.get("authorization", [])), None), self.remote,
                lambda: transport.get_extra_info("peercert"), self._passed)
            if isinstance(verdict, Answer):
                self._answer(verdict)
                return
            try:
                key = upgrade_key(headers)
            except BadRequest:
                if verdict.upstream is not None:
                    await verdict.upstream.close()
                raise
            self._hand_over(verdict, key, headers, bytes(self.head[end + 4:]))
        except BadRequest as exc:
            self._answer(exc.answer)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("WebSocket handshake failed")
            self._answer(plain_answer(http.HTTPStatus.INTERNAL_SERVER_ERROR, "internal error"))

    def _passed(self, charger_id: str) -> str | None:
        """The request is accepted so far: no longer a handshake, an open connection (ws_limits)."""
        self._end_handshake()
        admission = self.server.admission
        why = admission.may_open(self.group, charger_id, self.limited)
        if why is None:
            self.counted_open = admission.opened(self.group, charger_id)
        return why

    def _end_handshake(self) -> None:
        if self.handshaking:
            self.handshaking = False
            self.server.admission.end_handshake(self.group)

    def _hand_over(self, admitted: Admitted, key: str, headers: dict[str, list[str]], tail: bytes) -> None:
        server = self.server
        transport = self.transport
        assert transport is not None
        extension, codec = None, None
        if admitted.subprotocol is not None:
            extension, codec = server.negotiate_deflate(headers)
        offered = headers.get("sec-websocket-protocol")
        connection = ChargerConnection(server, admitted.charger_id, admitted.subprotocol, admitted.upstream,
                                       self.remote, self.group, self.counted_open, codec,
                                       ", ".join(offered) if offered else None)
        extra = [("Date", http_date()), ("Server", SERVER_HEADER)]
        if admitted.subprotocol is not None:
            extra.append(("Sec-WebSocket-Protocol", admitted.subprotocol))
        if extension is not None:
            extra.append(("Sec-WebSocket-Extensions", extension))
        prepared = WSUpgradeResponseWithListener(WSUpgradeResponse.create_101_response(extra), connection)
        proto = WSProtocol(None, None, False, lambda request: prepared, server.picows_log, True, None,
                           False, 20, 20, WSAutoPingStrategy.PING_WHEN_IDLE, False, server.max_frame, None,
                           READ_BUFFER)
        # what picows checks of the request, as validated above (its own check is stricter than RFC 6455)
        head = (f"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Key: {key}\r\n\r\n").encode()
        self.done = True
        self.counted_open = False  # the connection counts itself out now
        self._finish()
        server.connections.add(connection)
        connection.take_over(transport, proto, head, tail)

    def _answer(self, answer: Answer) -> None:
        if self.done or self.transport is None:
            return
        self.done = True
        lines = [f"HTTP/1.1 {answer.status} {answer.phrase}", f"Date: {http_date()}", f"Server: {SERVER_HEADER}",
                 *(f"{name}: {value}" for name, value in answer.headers)]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + answer.body)
        self.transport.close()

    def _too_slow(self) -> None:
        self.timer = None
        if not self.done and self.transport is not None:
            self.done = True
            self.transport.abort()

    def _finish(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.server.doors.discard(self)
        self.server.check_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.refused:
            return  # dropped in connection_made
        self.done = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self._end_handshake()
        if self.counted_open:
            self.counted_open = False
            self.server.admission.closed(self.group)
        self._finish()


class PicowsServer(ListeningPort):
    """The charger port on picows; the same surface as adapters/websocket_server.WebSocketServer."""

    def __init__(self, settings: Settings, hub: ChargerIngress, credentials: CredentialBook | None = None) -> None:
        ws = settings.websocket
        self.settings = settings
        self.hub = hub
        self.path = ws.path
        # passwords changed by the CSMS since (adapters/credentials.py); see WebSocketServer
        self.credentials = credentials if credentials is not None else CredentialBook(settings)
        self.auth = ChargerAuth(settings, hub, self.credentials)
        self.tls: ssl.SSLContext | None = None
        self.admission = Admission(settings)
        self.budget = Budget(ws.max_buffered_bytes, ws.max_frame_size)
        self.door = ChargerDoor(settings, hub, self.auth, self.admission, self.budget)
        self.tls_problem = self.door.tls_problem
        # read by every connection (adapters/picows_link.py)
        self.max_frame = ws.max_frame_size
        self.message_timeout = ws.message_timeout
        self.ping_interval = ws.ping_interval
        self.ping_timeout = ws.ping_timeout
        self.rate = ws.max_messages_per_second
        self.handshake_timeout = ws.handshake_timeout
        self.picows_log = _PicowsLog(logging.getLogger("picows.server"), {})
        self.doors: set[_FrontDoor] = set()  # handshakes in progress
        self.connections: set[ChargerConnection] = set()  # handed over, until their session let go
        self._server: asyncio.Server | None = None
        self._idle: asyncio.Future[None] | None = None

    def negotiate_deflate(self, headers: dict[str, list[str]]) -> tuple[str | None, PerMessageDeflate | None]:
        """(Sec-WebSocket-Extensions of the 101, the connection's codec) or (None, None)."""
        offers = headers.get("sec-websocket-extensions")
        answer, params = negotiate(", ".join(offers) if offers else None, self.settings.websocket.compression)
        if answer is None or params is None:
            return None, None
        return answer, PerMessageDeflate(params, self.max_frame)

    async def start(self) -> PicowsServer:
        await self.bind()
        await self.serve()
        return self

    async def bind(self) -> PicowsServer:
        """Bind `[websocket].listen` (chargers wait in the accept queue until `serve`).
        Raises ListenerUnavailable naming the key."""
        ws = self.settings.websocket
        host, port = split_listen(ws.listen)
        tls = self._tls_context()
        try:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: _FrontDoor(self), host, port, ssl=tls, start_serving=False,
                ssl_handshake_timeout=ws.handshake_timeout if tls is not None else None,
                # an accept queue deeper than asyncio's 100 (see WebSocketServer.bind)
                backlog=1024)
        except OSError as exc:
            raise listen.unavailable("websocket.listen", ws.listen, exc) from exc
        return self

    async def serve(self) -> None:
        assert self._server is not None, "bind() first"
        await self._server.start_serving()

    def finished(self, connection: ChargerConnection) -> None:
        """A connection is over and its session let go of it."""
        self.connections.discard(connection)
        self.check_idle()

    def check_idle(self) -> None:
        if not self.doors and not self.connections and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def stop(self) -> None:
        """Stop listening; return once every connection has ended (the hub closes the sessions)."""
        if self._server is None:
            return
        self._server.close()
        while self.doors or self.connections:
            self._idle = asyncio.get_running_loop().create_future()
            await self._idle
        self._idle = None
        await self._server.wait_closed()

    def abort_connections(self) -> int:
        """Drop every connection still open (shutdown's last resort); returns how many."""
        transports = [c.socket for c in self.connections if c.socket is not None]
        transports += [d.transport for d in self.doors if d.transport is not None]
        for transport in transports:
            transport.abort()
        return len(transports)
