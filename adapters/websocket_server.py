"""Charger-facing OCPP-J WebSocket server (websockets).

`ws://HOST:PORT{path}/{charger_id}`. The handshake follows OCPP-J 1.6/2.0.1/2.1 §3:
- the id is the last path segment, percent-decoded and validated (HTTP 400 with the reason if not);
- an id with no `[chargers.ID]` entry is refused with HTTP 404 when `allow_unknown` is false;
- the subprotocol is the charger's most preferred one among `[websocket].versions`; with no common
  subprotocol the handshake completes without `Sec-WebSocket-Protocol` and the socket is then closed
  (websockets' default of HTTP 400 is not what the specs say);
- `GET /healthz` on the same port answers 200 (for load balancers and the tests).

Security (docs/security.md; gateway/security.py): with `security_profile` >= 2 the server is wss://
(TLS >= 1.2, `tls_cert`/`tls_key`, client certificates verified against `tls_ca`). Per charger
(`[chargers.ID].security_profile` overrides the site's): 0 nothing asked; 1 and 2 HTTP Basic, user =
charger id, password = `[chargers.ID].password`; 3 a client certificate whose subject CN or a DNS/URI
SAN equals the charger id. Any failure, an unknown id included, is HTTP 401 with one fixed body;
`max_auth_failures` failures per source address or charger id within `auth_failure_window` make
further attempts HTTP 429 (Retry-After) until the bucket refills (adapters/charger_auth.py, shared
with the SOAP and HTTP ports). Handshakes and connections per address, the bytes all connections
may hold in unread messages and the deadline to finish a message: adapters/ws_limits.py. A charger
sending faster than `max_messages_per_second` (after a burst of `message_burst`) has its frames read later: nothing is
refused, TCP back-pressure slows it down, other chargers are unaffected.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, Sequence

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from adapters import listen
from adapters.charger_auth import ChargerAuth
from adapters.credentials import CredentialBook
from adapters.ws_handshake import SERVER_HEADER, Answer, ChargerDoor, ListeningPort, offered_subprotocols
from adapters.ws_limits import GuardedConnection, connection_class
from gateway.config import Settings, split_listen
from gateway.errors import LinkClosed
from gateway.identity import charger_id_from_path
from gateway.protocol import frames as F
from gateway.protocol.frames import ErrorCode, OcppVersion
from gateway.ports import ChargerIngress

log = logging.getLogger("gateway.websocket")


class _ServerLog(logging.LoggerAdapter[logging.Logger]):
    """websockets' server log, silent at INFO until the server serves: a start that fails after
    the port was bound ends with one line, not "server closing" / "server closed"."""

    quiet = True

    def isEnabledFor(self, level: int) -> bool:
        return (level > logging.INFO or not self.quiet) and self.logger.isEnabledFor(level)


class WsChargerLink:
    transport = "websocket"

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        addr = ws.remote_address
        self.remote = f"{addr[0]}:{addr[1]}" if addr else "?"

    async def send(self, text: str) -> None:
        try:
            await self.ws.send(text)
        except ConnectionClosed as exc:
            raise LinkClosed(str(exc)) from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.close(code, reason)


def _response(answer: Answer) -> Response:
    return Response(answer.status, answer.phrase, Headers(answer.headers), answer.body)


class WebSocketServer(ListeningPort):
    def __init__(self, settings: Settings, hub: ChargerIngress, credentials: CredentialBook | None = None) -> None:
        self.settings = settings
        self.hub = hub
        self.path = settings.websocket.path
        self._server: Server | None = None
        self._log = _ServerLog(logging.getLogger("websockets.server"), {})
        self._dialled: dict[int, Any] = {}  # strict mode: upstream links opened during the handshake
        # passwords changed by the CSMS since (adapters/credentials.py); app.py hands in the one it
        # wires to the hub's observers and the upstream connector
        self.credentials = credentials if credentials is not None else CredentialBook(settings)
        # one authentication and one failed-login limiter for every charger port (app.py hands it on)
        self.auth = ChargerAuth(settings, hub, self.credentials)
        self.tls: ssl.SSLContext | None = None
        # handshakes and connections per address, bytes held, message deadline (adapters/ws_limits.py)
        self.connection_class, self.admission, self.budget = connection_class(settings)
        # the handshake's decisions, shared with the picows server (adapters/ws_handshake.py)
        self.door = ChargerDoor(settings, hub, self.auth, self.admission, self.budget)
        self.tls_problem = self.door.tls_problem

    # -- handshake ------------------------------------------------------------------------------

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        transport = connection.transport
        verdict = await self.door.decide(
            request.path, offered_subprotocols(request.headers.get_all("Sec-WebSocket-Protocol")),
            request.headers.get("Authorization"), connection.remote_address,
            lambda: transport.get_extra_info("peercert") if transport is not None else None,
            connection.handshake_passed if isinstance(connection, GuardedConnection) else None)
        if isinstance(verdict, Answer):
            return _response(verdict)
        if verdict.upstream is not None:
            self._dialled[id(connection)] = verdict.upstream
        return None

    def _select_subprotocol(self, connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        return self.door.select_subprotocol(offered)  # type: ignore[return-value]  # one of the offered names

    # -- connection -----------------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        charger_id, _ = charger_id_from_path(ws.request.path if ws.request else "", self.path)
        upstream = self._dialled.pop(id(ws), None)
        if charger_id is None:  # process_request already refused it; never reached
            await ws.close(1008, "bad charger id")
            return
        if ws.subprotocol is None:
            if upstream is not None:
                await upstream.close()
            log.warning("charger %s offered no supported OCPP version (%s); closing",
                        charger_id, ws.request.headers.get("Sec-WebSocket-Protocol") if ws.request else None)
            await ws.close(1002, "no common OCPP subprotocol")
            return
        version = OcppVersion(ws.subprotocol)
        link = WsChargerLink(ws)
        log.info("charger %s connected from %s with %s", charger_id, link.remote, version.value,
                 extra={"charger_id": charger_id})
        session = await self.hub.attach(charger_id, version, link, upstream)
        rate = self.settings.websocket.max_messages_per_second
        bucket = self.door.rate_bucket(charger_id)
        loop = asyncio.get_running_loop()
        throttled = False
        try:
            async for message in ws:
                if bucket is not None and not bucket.take(loop.time()):
                    # too fast: read its next frame later (back-pressure), nothing refused or lost
                    if not throttled:
                        throttled = True
                        log.warning("charger %s sends more than %g frames/s; slowing it down", charger_id, rate,
                                    extra={"charger_id": charger_id})
                    await asyncio.sleep(bucket.wait_time(loop.time()))
                    bucket.take(loop.time())
                if isinstance(message, bytes):
                    # OCPP-J is UTF-8 JSON in text frames (J16 §4.1.2, J201 §4.1.2)
                    code = ErrorCode.RPC_FRAMEWORK_ERROR
                    await link.send(F.call_error(version, F.UNREADABLE_ID, code, "binary frames are not OCPP-J"))
                    continue
                await session.from_charger(message)
        except ConnectionClosed:
            pass
        finally:
            log.info("charger %s disconnected (%s)", charger_id, ws.close_code, extra={"charger_id": charger_id})
            await self.hub.detach(session, link)

    async def start(self) -> "WebSocketServer":
        await self.bind()
        await self.serve()
        return self

    async def bind(self) -> "WebSocketServer":
        """Bind `[websocket].listen` (chargers wait in the accept queue until `serve`).
        Raises ListenerUnavailable naming the key."""
        ws = self.settings.websocket
        host, port = split_listen(ws.listen)
        tls = self._tls_context()
        try:
            self._server = await serve(
                self._handler,
                host,
                port,
                start_serving=False,
                logger=self._log,
                process_request=self._process_request,
                select_subprotocol=self._select_subprotocol,
                compression="deflate" if ws.compression else None,
                max_size=ws.max_frame_size,
                max_queue=4,  # whole messages waiting for the relay per connection (then TCP back-pressure)
                ping_interval=ws.ping_interval or None,
                ping_timeout=ws.ping_timeout,
                open_timeout=ws.handshake_timeout,
                server_header=SERVER_HEADER,
                ssl=tls,
                create_connection=self.connection_class,
                # an accept queue deeper than asyncio's 100: a flood of connects must not overflow it,
                # or other chargers' SYNs are dropped (and retried only after 1 s, 3 s, ...)
                backlog=1024,
            )
        except OSError as exc:
            raise listen.unavailable("websocket.listen", ws.listen, exc) from exc
        return self

    async def serve(self) -> None:
        assert self._server is not None, "bind() first"
        self._log.quiet = False
        await self._server.start_serving()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close(close_connections=False)
            await self._server.wait_closed()

    def abort_connections(self) -> int:
        """Drop every connection still open (shutdown's last resort); returns how many."""
        if self._server is None:
            return 0
        connections = list(self._server.all_connections)
        for connection in connections:
            connection.transport.abort()
        return len(connections)
