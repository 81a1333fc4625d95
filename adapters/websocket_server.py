"""Charger-facing OCPP-J WebSocket server (websockets).

`ws://HOST:PORT{path}/{charger_id}`. The handshake follows OCPP-J 1.6/2.0.1/2.1 §3:
- the id is the last path segment, percent-decoded and validated (HTTP 400 with the reason if not);
- an id with no `[chargers.ID]` entry is refused with HTTP 404 when `allow_unknown` is false;
- the subprotocol is the charger's most preferred one among `[websocket].versions`; with no common
  subprotocol the handshake completes without `Sec-WebSocket-Protocol` and the socket is then closed
  (websockets' default of HTTP 400 is not what the specs say);
- `GET /healthz` on the same port answers 200 (for load balancers and the tests).
"""

from __future__ import annotations

import http
import logging
from typing import Any, Sequence

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from gateway.config import Settings, split_listen
from gateway.errors import LinkClosed, LinkFailed
from gateway.identity import charger_id_from_path
from gateway.protocol import frames as F
from gateway.protocol.frames import ErrorCode, OcppVersion
from gateway.session import Hub

log = logging.getLogger("gateway.websocket")


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
            raise LinkClosed(str(exc)) from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.close(code, reason)


def _text_response(status: http.HTTPStatus, body: dict[str, Any]) -> Response:
    data = orjson.dumps(body)
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                       ("Connection", "close")])
    return Response(status.value, status.phrase, headers, data)


class WebSocketServer:
    def __init__(self, settings: Settings, hub: Hub) -> None:
        self.settings = settings
        self.hub = hub
        self.path = settings.websocket.path
        self.versions = [v.value for v in settings.websocket.versions]
        self._server: Server | None = None
        self._dialled: dict[int, Any] = {}  # strict mode: upstream links opened during the handshake

    # -- handshake ------------------------------------------------------------------------------

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return _text_response(http.HTTPStatus.OK, {"status": "ok", "chargers": len(self.hub.sessions)})
        charger_id, problem = charger_id_from_path(request.path, self.path)
        if charger_id is None:
            status = http.HTTPStatus.NOT_FOUND if problem == "not found" else http.HTTPStatus.BAD_REQUEST
            log.warning("refused connection to %r from %s: %s", request.path[:100], connection.remote_address, problem)
            return _text_response(status, {"error": problem})
        if not self.hub.admits(charger_id):
            log.warning("refused unknown charger %r from %s", charger_id, connection.remote_address)
            return _text_response(http.HTTPStatus.NOT_FOUND, {"error": "unknown charger"})
        if self.hub.needs_upstream_first(charger_id):
            # strict offline mode: the charger is accepted only with its upstream link up
            offered = [p.strip() for p in ",".join(request.headers.get_all("Sec-WebSocket-Protocol")).split(",")]
            chosen = self._select_subprotocol(connection, offered)  # type: ignore[arg-type]
            if chosen is not None:
                try:
                    self._dialled[id(connection)] = await self.hub.dial(charger_id, OcppVersion(chosen))
                except LinkFailed as exc:
                    log.warning("refused %s: strict mode and the CSMS is unreachable (%s)", charger_id, exc,
                                extra={"charger_id": charger_id})
                    return _text_response(http.HTTPStatus.SERVICE_UNAVAILABLE, {"error": "CSMS unreachable"})
        return None

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
        try:
            async for message in ws:
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
        ws = self.settings.websocket
        host, port = split_listen(ws.listen)
        self._server = await serve(
            self._handler,
            host,
            port,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            compression="deflate" if ws.compression else None,
            max_size=ws.max_frame_size,
            ping_interval=ws.ping_interval or None,
            ping_timeout=ws.ping_timeout,
            open_timeout=ws.handshake_timeout,
            server_header="ocpp-site-gateway",
        )
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(next(iter(self._server.sockets)).getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close(close_connections=False)
            await self._server.wait_closed()
