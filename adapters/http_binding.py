"""OCPP-J over plain HTTP, for devices that cannot hold a WebSocket (PRODUCT.md, "HTTP binding").

- `POST {http.path}/{charger_id}` with one OCPP-J frame (JSON array):
  a CALL gets `200` with the CALLRESULT or CALLERROR array (answered by the CSMS through the relay,
  or by the gateway when standalone or offline); a CALLRESULT/CALLERROR (the answer to a call the
  device fetched) gets `204`; a frame the gateway cannot read gets `200` with the CALLERROR that
  the OCPP-J 1.6 rules give it (message id `-1`).
- `GET {http.path}/{charger_id}/calls?wait=S` long-polls for the next CALL addressed to the device
  (a CSMS command or the gateway's own): `200` with the CALL array, or `204` when none came within
  `S` seconds (at most `[http].max_wait`). `POST {http.path}/{charger_id}/calls` with the
  CALLRESULT/CALLERROR answers it (the plain `POST {path}/{id}` accepts it too).
- A call for a device that does not fetch it within `[websocket].call_timeout` is answered to its
  caller with a timeout error by the session (GenericError to the CSMS), and is not handed out later.

The device appears upstream as an OCPP 1.6J charger. Ids and authentication follow the WebSocket
server's rules: invalid ids get 400 with the reason; with security profile 1 or 2 (the charger's
own, else the site's) HTTP Basic credentials are required, user = charger id, password =
`[chargers.ID].password` (plain, 1.6 AuthorizationKey or hashed), else 401 with one body for every
failure, and 429 after too many failures from one address; profile 3 is refused (the binding has no
TLS of its own, so no client certificate can be checked); ids without a `[chargers.ID]` entry get
404 when `allow_unknown` is false. Session policy: see `adapters/polled.py`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import orjson
from aiohttp import web

from adapters import listen
from adapters.charger_auth import ChargerAuth
from adapters.polled import CappedRunner, LinkRegistry, PolledLink, TooLarge, TooSlow, read_limited
from gateway.config import Settings
from gateway.errors import LinkClosed, LinkFailed
from gateway.identity import validate_charger_id
from gateway.protocol import frames as F
from gateway.ports import ChargerIngress

log = logging.getLogger("gateway.http")

JSON = "application/json"


class HttpChargerLink(PolledLink):
    transport = "http"

    def __init__(self, binding: "HttpBinding", charger_id: str, remote: str) -> None:
        super().__init__(charger_id, remote)
        self.binding = binding
        self._calls: list[tuple[float, str]] = []  # (when queued, CALL text)
        self._arrived = asyncio.Event()

    def on_closed(self) -> None:
        self.binding.registry.forget(self)
        self._arrived.set()

    async def deliver_call(self, text: str, frame: list[Any]) -> None:
        self._calls.append((asyncio.get_running_loop().time(), text))
        self._arrived.set()

    async def next_call(self, wait: float) -> str | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        stale_after = self.binding.settings.websocket.call_timeout
        self.busy += 1  # a device that is polling is present
        try:
            while not self.closed:
                now = loop.time()
                self._calls = [(t, c) for t, c in self._calls if now - t < stale_after]
                if self._calls:
                    return self._calls.pop(0)[1]
                if now >= deadline:
                    return None
                self._arrived.clear()
                try:
                    async with asyncio.timeout(deadline - now):  # not wait_for: on 3.11 it can swallow a cancel
                        await self._arrived.wait()
                except TimeoutError:
                    pass
            return None
        finally:
            self.busy -= 1
            self.touch()


def _error(status: int, reason: str, **headers: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"error": reason}), content_type=JSON, headers=headers)


class HttpBinding:
    def __init__(self, settings: Settings, hub: ChargerIngress, auth: ChargerAuth | None = None) -> None:
        self.settings = settings
        self.hub = hub
        self.path = settings.http.path
        self.registry = LinkRegistry(hub, settings.http.idle_timeout)
        self.auth = auth if auth is not None else ChargerAuth(settings, hub)  # app.py shares the WebSocket port's
        self._runner: web.AppRunner | None = None
        self._sockets: list[socket.socket] = []
        self._port: int | None = None

    # -- checks ------------------------------------------------------------------------------------

    async def _check(self, request: web.Request) -> tuple[str | None, web.Response | None]:
        """The charger id when the request may go on, else the refusal: the WebSocket server's rules
        (id 400, authentication 401/429 with one body for every failure, unknown id 404)."""
        charger_id = request.match_info["charger_id"]
        problem = validate_charger_id(charger_id)
        if problem:
            return None, _error(400, problem)
        refused = await self._authenticate(request, charger_id)
        if refused is not None:
            return None, refused
        if not self.hub.admits(charger_id):
            return None, _error(404, "unknown charger")
        return charger_id, None

    async def _authenticate(self, request: web.Request, charger_id: str) -> web.Response | None:
        refusal = await self.auth.check(charger_id, request.remote or "?", request.headers.get("Authorization"),
                                       port="HTTP-binding")
        if refusal is None:
            return None
        return _error(refusal.status, refusal.body, **refusal.headers)

    async def _body(self, request: web.Request) -> str | web.Response:
        try:
            data = await read_limited(request.content, self.settings.http.max_body_size)
        except TooLarge:
            return _error(413, "frame too large")
        except TooSlow as exc:
            return _error(408, str(exc))
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return _error(400, "OCPP-J frames are UTF-8 JSON")

    async def _link(self, charger_id: str, request: web.Request) -> HttpChargerLink | web.Response:
        try:
            link = await self.registry.get(charger_id, lambda: HttpChargerLink(self, charger_id, request.remote or "?"))
        except LinkFailed:
            return _error(503, "CSMS unreachable", **{"Retry-After": "10"})  # strict offline mode
        assert isinstance(link, HttpChargerLink)
        return link

    # -- handlers ----------------------------------------------------------------------------------

    async def _checked_body(self, request: web.Request) -> tuple[str, str] | web.Response:
        """(charger id, body text) of an authenticated POST, or the refusal to send instead."""
        charger_id, refusal = await self._check(request)
        if refusal is not None:
            return refusal
        assert charger_id is not None
        text = await self._body(request)
        if isinstance(text, web.Response):
            return text
        return charger_id, text

    async def _post(self, request: web.Request) -> web.Response:
        checked = await self._checked_body(request)
        if isinstance(checked, web.Response):
            return checked
        charger_id, text = checked
        link = await self._link(charger_id, request)
        if isinstance(link, web.Response):
            return link
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError:
            frame = None
        try:
            if isinstance(frame, list) and len(frame) >= 3 and frame[0] == 2 and isinstance(frame[1], str) \
                    and len(frame[1]) <= 36:
                timeout = self.settings.upstream.call_timeout * 2 + 5
                try:
                    reply = await link.request(frame[1], text, timeout)
                except asyncio.TimeoutError:
                    return _error(504, "no answer in time")
                return web.Response(body=orjson.dumps(reply), content_type=JSON)
            answer = await link.feed(text)
        except LinkClosed:
            return _error(503, "session ended; retry")
        if answer is None:
            return web.Response(status=204)
        return web.Response(body=orjson.dumps(answer), content_type=JSON)

    async def _poll(self, request: web.Request) -> web.Response:
        charger_id, refusal = await self._check(request)
        if refusal is not None:
            return refusal
        assert charger_id is not None
        try:
            wait = float(request.query.get("wait", "0"))
        except ValueError:
            return _error(400, "wait must be a number of seconds")
        if not 0 <= wait <= 86400:
            return _error(400, "wait must be between 0 and 86400")
        wait = min(wait, self.settings.http.max_wait)
        link = await self._link(charger_id, request)
        if isinstance(link, web.Response):
            return link
        call = await link.next_call(wait)
        if call is None:
            return web.Response(status=204)
        return web.Response(text=call, content_type=JSON)

    async def _answer(self, request: web.Request) -> web.Response:
        checked = await self._checked_body(request)
        if isinstance(checked, web.Response):
            return checked
        charger_id, text = checked
        kind = F.peek_reply_id(text)
        if kind is None or kind[0] not in (3, 4):
            return _error(400, "POST the CALLRESULT or CALLERROR of a fetched call here")
        link = await self._link(charger_id, request)
        if isinstance(link, web.Response):
            return link
        try:
            answer = await link.feed(text)
        except LinkClosed:
            return _error(503, "session ended; retry")
        if answer is None:
            return web.Response(status=204)
        return web.Response(body=orjson.dumps(answer), content_type=JSON)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def bind(self) -> "HttpBinding":
        """Bind `[http].listen` (requests wait until `serve`); ListenerUnavailable names the key."""
        self._sockets = listen.bind("http.listen", self.settings.http.listen)
        self._port = int(self._sockets[0].getsockname()[1])
        return self

    async def start(self) -> "HttpBinding":
        await self.bind()
        await self.serve()
        return self

    async def serve(self) -> None:
        app = web.Application(client_max_size=self.settings.http.max_body_size + 1024)
        base = self.path.rstrip("/")
        app.router.add_post(base + "/{charger_id}", self._post)
        app.router.add_get(base + "/{charger_id}/calls", self._poll)
        app.router.add_post(base + "/{charger_id}/calls", self._answer)
        cfg = self.settings.http
        self._runner = CappedRunner(app, max_connections=cfg.max_connections, idle_timeout=cfg.idle_connection_timeout,
                                    name="HTTP-binding")
        await self._runner.setup()
        sockets, self._sockets = self._sockets, []
        for sock in sockets:
            await web.SockSite(self._runner, sock).start()
        self.registry.start()

    @property
    def port(self) -> int:
        assert self._port is not None, "not bound"
        return self._port

    async def stop(self) -> None:
        await self.registry.stop()
        runner, self._runner = self._runner, None
        await listen.release(runner, self._sockets)
