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
import http
import logging
import ssl
from typing import Any, Sequence

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from adapters import listen
from adapters.charger_auth import ChargerAuth
from adapters.credentials import CredentialBook
from adapters.ws_limits import GuardedConnection, connection_class
from gateway.config import ConfigError, Settings, split_listen
from gateway.errors import LinkClosed, LinkFailed
from gateway.identity import charger_id_from_path
from gateway.protocol import frames as F
from gateway.protocol.frames import ErrorCode, OcppVersion
from gateway.security import TokenBucket
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


def _text_response(status: http.HTTPStatus, body: dict[str, Any], **extra: str) -> Response:
    data = orjson.dumps(body)
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                       ("Connection", "close"), *((k.replace("_", "-"), v) for k, v in extra.items())])
    return Response(status.value, status.phrase, headers, data)


def server_tls_context(settings: Settings) -> ssl.SSLContext:
    """TLS >= 1.2 with the gateway's certificate; client certificates verified against `tls_ca`:
    required when every charger is on profile 3, optional (checked per charger) otherwise."""
    ws = settings.websocket
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # A00.FR.312-316
    ctx.options |= ssl.OP_NO_COMPRESSION  # A00.FR.320
    try:
        ctx.load_cert_chain(ws.tls_cert, ws.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"websocket.tls_cert / tls_key: cannot load them ({exc.strerror or exc})") from exc
    if ws.tls_ca:
        try:
            ctx.load_verify_locations(cafile=ws.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"websocket.tls_ca: cannot load it ({exc.strerror or exc})") from exc
        all_three = ws.security_profile == 3 and all(
            c.security_profile in (None, 3) for c in settings.chargers.values())
        ctx.verify_mode = ssl.CERT_REQUIRED if all_three else ssl.CERT_OPTIONAL
    return ctx


_AUTH_FAILED = {"error": "authentication failed"}  # one body for every failure: nothing to learn from it


class WebSocketServer:
    def __init__(self, settings: Settings, hub: ChargerIngress, credentials: CredentialBook | None = None) -> None:
        self.settings = settings
        self.hub = hub
        self.path = settings.websocket.path
        self.versions = [v.value for v in settings.websocket.versions]
        self._server: Server | None = None
        self._log = _ServerLog(logging.getLogger("websockets.server"), {})
        self._dialled: dict[int, Any] = {}  # strict mode: upstream links opened during the handshake
        ws = settings.websocket
        self._buckets: dict[str, TokenBucket] = {}  # message rate per charger id
        # passwords changed by the CSMS since (adapters/credentials.py); app.py hands in the one it
        # wires to the hub's observers and the upstream connector
        self.credentials = credentials if credentials is not None else CredentialBook(settings)
        # one authentication and one failed-login limiter for every charger port (app.py hands it on)
        self.auth = ChargerAuth(settings, hub, self.credentials)
        self.tls: ssl.SSLContext | None = None
        # handshakes and connections per address, bytes held, message deadline (adapters/ws_limits.py)
        self.connection_class, self.admission, self.budget = connection_class(settings)
        self.tls_problem: str | None = None
        if ws.security_profile >= 2:
            if not ws.tls_cert or not ws.tls_key:
                self.tls_problem = "security_profile >= 2 needs [websocket].tls_cert and tls_key"
            elif any(settings.security_profile(c) == 3 for c in [*settings.chargers, ""]) and not ws.tls_ca:
                self.tls_problem = "security_profile 3 needs [websocket].tls_ca (the CA of the chargers' certificates)"

    # -- handshake ------------------------------------------------------------------------------

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return _text_response(http.HTTPStatus.OK, {
                "status": "ok", "chargers": self.hub.charger_count,
                # the hostile-input limits at work (adapters/ws_limits.py)
                "buffered_bytes": self.budget.held, "buffered_peak": self.budget.peak,
                "closed_for_buffering": self.budget.evicted, "dropped_handshakes": self.admission.refused})
        if self.tls_problem is not None:  # fail closed: never serve a secured site without its TLS
            log.error("refused connection: %s", self.tls_problem)
            return _text_response(http.HTTPStatus.SERVICE_UNAVAILABLE, {"error": "not configured"})
        charger_id, problem = charger_id_from_path(request.path, self.path)
        if charger_id is None:
            status = http.HTTPStatus.NOT_FOUND if problem == "not found" else http.HTTPStatus.BAD_REQUEST
            log.warning("refused connection to %r from %s: %s", request.path[:100], connection.remote_address, problem)
            return _text_response(status, {"error": problem})
        # connections per address and in all (adapters/ws_limits.py); configured ids always get in
        full = connection.handshake_passed(charger_id) if isinstance(connection, GuardedConnection) else None
        if full is not None:
            log.warning("refused %r from %s: %s", charger_id, connection.remote_address, full)
            return _text_response(http.HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many connections"},
                                  Retry_After="30")
        offered = [p.strip() for p in ",".join(request.headers.get_all("Sec-WebSocket-Protocol")).split(",")]
        chosen = self._select_subprotocol(connection, offered)  # type: ignore[arg-type]
        refused = await self._authenticate(connection, request, charger_id, chosen)
        if refused is not None:
            return refused
        if not self.hub.admits(charger_id):
            log.warning("refused unknown charger %r from %s", charger_id, connection.remote_address)
            return _text_response(http.HTTPStatus.NOT_FOUND, {"error": "unknown charger"})
        if self.hub.needs_upstream_first(charger_id):
            # strict offline mode: the charger is accepted only with its upstream link up
            if chosen is not None:
                try:
                    self._dialled[id(connection)] = await self.hub.dial(charger_id, OcppVersion(chosen))
                except LinkFailed as exc:
                    log.warning("refused %s: strict mode and the CSMS is unreachable (%s)", charger_id, exc,
                                extra={"charger_id": charger_id})
                    return _text_response(http.HTTPStatus.SERVICE_UNAVAILABLE, {"error": "CSMS unreachable"})
        return None

    async def _authenticate(self, connection: ServerConnection, request: Request, charger_id: str,
                            chosen: str | None) -> Response | None:
        """None when the charger may go on, else the refusal (401 / 429). Never says why."""
        address = connection.remote_address[0] if connection.remote_address else "?"
        peercert = None
        if self.settings.security_profile(charger_id) == 3 and connection.transport is not None:
            peercert = connection.transport.get_extra_info("peercert")
        refusal = await self.auth.check(charger_id, address, request.headers.get("Authorization"),
                                        version=OcppVersion(chosen) if chosen else OcppVersion.V201,
                                        peercert=peercert, tls_client_auth=True, port="websocket")
        if refusal is None:
            return None
        status = http.HTTPStatus(refusal.status)
        body = _AUTH_FAILED if refusal.status == 401 else {"error": refusal.body}
        return _text_response(status, body, **{k.replace("-", "_"): v for k, v in refusal.headers.items()})

    def _select_subprotocol(self, connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        for name in offered:  # the client lists its versions in order of preference
            if name in self.versions:
                return name
        return None

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
        bucket = None
        if rate > 0:  # per charger id, not per connection: reconnecting does not refill it
            bucket = self._buckets.get(charger_id)
            if bucket is None:
                if len(self._buckets) >= 10_000:
                    self._buckets.clear()
                bucket = self._buckets[charger_id] = TokenBucket(rate, self.settings.websocket.message_burst)
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
                server_header="ocpp-site-gateway",
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

    def serving(self) -> bool:
        """Accepting chargers (for /readyz and the watchdog)."""
        return self._server is not None and self._server.is_serving()

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.settings.websocket.security_profile < 2 or self.tls_problem is not None:
            if self.tls_problem:
                log.error("WebSocket server refuses every charger: %s", self.tls_problem)
            return None
        self.tls = server_tls_context(self.settings)
        return self.tls

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(next(iter(self._server.sockets)).getsockname()[1])

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
