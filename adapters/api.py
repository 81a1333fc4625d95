"""The operations API (aiohttp) on `[api].listen`: health, readiness, Prometheus metrics, chargers,
calls to chargers, the OpenAPI document and the status page. The contract is in PRODUCT.md
("REST API"); the OpenAPI document (adapters/openapi.py) describes every answer.

- Before any handler, `adapters/api_guard.py`: the Host allow-list (421), no cross-site writes
  (415/403), and the bearer token (401) - configured, or generated into data_dir when unset;
  every path except /healthz, /readyz, the page and the OpenAPI document needs it.
- Calls are the core's operator calls (gateway/operator.py, shared with the MQTT command channel):
  the action must be one the CSMS side may send in the charger's version and the payload must pass
  its schema (400 with the reason otherwise); this module only turns their errors into HTTP. The
  API token holder may send every CSMS-to-charger action (MQTT has `[mqtt].command_actions`).
- The API reads the hub's sessions and its own observers (gateway.status.StatusBook,
  adapters.metrics.Metrics); it never blocks the relay: handlers only read dicts or await a call.
"""

from __future__ import annotations

import logging
import math
import socket
from datetime import datetime, timezone
from importlib import resources
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web

from gateway import __version__
from gateway.config import Settings, split_listen
from gateway.operator import Operator, OperatorError, parse_payload
from gateway.ports import GatewayView, SessionView
from gateway.protocol.frames import OcppVersion
from gateway.registry import KnownChargers
from gateway.status import StatusBook

from adapters.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from adapters.metrics import Metrics
from adapters.openapi import document
from adapters import control_api, listen, variables_api
from adapters.api_guard import Guard, api_token

log = logging.getLogger("gateway.api")

MAX_CALL_TIMEOUT = 300.0
MAX_BODY = 1_048_576


def _upstream_view(session: SessionView) -> dict[str, Any]:
    """A charger's upstream link: its state since when, and when and why it was last declared dead."""
    view: dict[str, Any] = {"state": session.upstream_state.value, "since": session.upstream_changed_at.isoformat()}
    lost = getattr(session, "last_lost", None)
    if lost is not None:
        view["last_lost"] = {"at": lost[0].isoformat(), "reason": lost[1]}
    return view


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def _error(status: int, error: str, message: str, **extra: Any) -> web.Response:
    headers = extra.pop("headers", None)
    return _json({"error": error, "message": message, **extra}, status, headers)


class ApiServer:
    """Build it after the hub (app.py registers its `observers` there), `start()` it once the charger
    listener is up, `stop()` it first on shutdown.

    `checks` name readiness conditions (callables returning bool). A charger's `outbox` comes
    from the store's `outbox_summary()` when the store has one."""

    def __init__(self, settings: Settings, hub: GatewayView, checks: dict[str, Callable[[], bool | str]] | None = None,
                 operator: Operator | None = None) -> None:
        self.settings = settings
        self.hub = hub
        self.operator = operator or Operator(hub.sessions, hub.schemas, hub.control)
        self.checks = dict(checks or {})
        self.extra_views: dict[str, Callable[[str], Any]] = {}  # charger view key -> its value for an id
        self.status = StatusBook()
        self.known = KnownChargers(hub.store, hub, self.status)  # the store remembers every charger seen
        self.metrics = Metrics(hub)
        self.observers = (self.status, self.metrics)  # session observers: gateway/app.py registers them
        self.token = api_token(settings)  # generated and kept in data_dir when [api].token is unset
        self.guard = Guard(settings, self.token)
        self._page = resources.files("adapters").joinpath("static", "status.html").read_bytes()
        self._openapi = orjson.dumps(document({**control_api.PATHS, **variables_api.PATHS},
                                               {**control_api.SCHEMAS, **variables_api.SCHEMAS}))
        self.app = web.Application(middlewares=[self.guard.middleware, self._errors], client_max_size=MAX_BODY)
        self.app.router.add_get("/", self.page)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/metrics", self.metrics_text)
        self.app.router.add_get("/api/v1/openapi.json", self.openapi)
        self.app.router.add_get("/api/v1/chargers", self.list_chargers)
        self.app.router.add_get("/api/v1/chargers/{id}", self.get_charger)
        self.app.router.add_delete("/api/v1/chargers/{id}", self.forget_charger)
        self.app.router.add_post("/api/v1/chargers/{id}/calls/{action}", self.call)
        self.app.router.add_get("/api/v1/transactions", self.transactions)
        self.app.router.add_get("/api/v1/outbox", self.outbox_view)
        control_api.add_routes(self.app, self.operator, lambda: self.hub.control)  # .../pause, .../resume
        variables_api.add_routes(self.app, hub)  # .../variables, .../environment (the variables mirror)
        self._runner: web.AppRunner | None = None
        self._sockets: list[socket.socket] = []
        self.port: int | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def bind(self) -> "ApiServer":
        """Bind `[api].listen` (connections wait until `serve`); ListenerUnavailable names the key."""
        self._sockets = listen.bind("api.listen", self.settings.api.listen)
        self.port = int(self._sockets[0].getsockname()[1])
        return self

    async def serve(self) -> None:
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        self._runner = runner
        sockets, self._sockets = self._sockets, []
        for sock in sockets:
            await web.SockSite(runner, sock).start()
        host, _ = split_listen(self.settings.api.listen)
        log.info("REST API, metrics and status page on http://%s:%d/", host, self.port)

    async def start(self) -> "ApiServer":
        await self.bind()
        await self.serve()
        return self

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        await listen.release(runner, self._sockets)

    # -- middleware -----------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400 and exc.content_type != "application/json":
                keep = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
                return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason, headers=keep)
            raise

    # -- handlers -------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(body=self._page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    async def healthz(self, request: web.Request) -> web.Response:
        connected = sum(1 for s in self.hub.sessions.values() if s.connected)
        return _json({"status": "ok", "chargers": connected, "version": __version__})

    async def readyz(self, request: web.Request) -> web.Response:
        """Each check gives True (ready), False, or a text saying why it is not ready."""
        results: dict[str, bool] = {}
        reasons: dict[str, str] = {}
        for name, check in self.checks.items():
            try:
                outcome = check()
            except Exception as exc:  # noqa: BLE001 - a failing check means not ready
                outcome = f"check failed: {exc}"
            results[name] = outcome is True
            if isinstance(outcome, str):
                reasons[name] = outcome
        ready = all(results.values())
        body: dict[str, Any] = {"status": "ready" if ready else "not_ready", "checks": results}
        if reasons:
            body["reasons"] = reasons
        return _json(body, 200 if ready else 503)

    async def outbox_summary(self) -> list[dict[str, Any]] | None:
        """The store's outbox per charger (depth, oldest, dead letters), or None without one."""
        summary = getattr(self.hub.store, "outbox_summary", None)
        if summary is None:
            return None
        try:
            return list(await summary())
        except Exception:  # noqa: BLE001 - metrics and the page must answer even if the store hiccups
            log.exception("outbox summary")
            return None

    async def metrics_text(self, request: web.Request) -> web.Response:
        self.metrics.outbox_summary = await self.outbox_summary()
        return web.Response(body=self.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    def charger_view(self, charger_id: str, outbox: dict[str, dict[str, Any]] | None = None) -> dict[str, Any] | None:
        session = self.hub.sessions.get(charger_id)
        known = self.status.get(charger_id)
        if session is None and known is None and charger_id not in self.settings.chargers:
            return None
        view: dict[str, Any] = {
            "id": charger_id,
            "connected": bool(session is not None and session.connected),
            "transport": session.link.transport if session is not None and session.link is not None else None,
            "protocol": session.version.value if session is not None else (known.protocol if known else None),
            "upstream": _upstream_view(session) if session is not None else {"state": "disconnected", "since": None},
            "queues": {"to_charger": len(session.to_charger) if session else 0,
                       "to_csms": len(session.to_upstream) if session else 0},
            "boot": None, "last_seen": None, "connectors": [], "open_transactions": [], "outbox": None,
            "readings": [], "environment": [],
        }
        if known is not None:
            view.update(known.view())
        engine = self.hub.control  # local control: limits, pauses, derating per EVSE
        view["control"] = engine.view(charger_id) if engine is not None else None
        for key, extra in self.extra_views.items():  # e.g. soap_endpoint (wired in app.py)
            value = extra(charger_id)
            if value is not None:
                view[key] = value
        if outbox is not None:
            row = outbox.get(charger_id) or {}
            oldest = row.get("oldest")
            age = None
            if isinstance(oldest, str):
                try:
                    when = datetime.fromisoformat(oldest.replace("Z", "+00:00"))
                    when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
                    age = max(0.0, (datetime.now(timezone.utc) - when).total_seconds())
                except ValueError:
                    pass
            view["outbox"] = {"depth": int(row.get("depth") or 0), "oldest_age_seconds": age,
                              "dead_letters": int(row.get("dead_letters") or 0)}
            blocked = self.hub.blocked.get(charger_id)
            if blocked is not None:  # a backlog in another OCPP version that the CSMS does not take now
                view["outbox"]["waiting_for"] = dict(blocked)
        return view

    async def _outbox_by_charger(self) -> dict[str, dict[str, Any]] | None:
        summary = await self.outbox_summary()
        return None if summary is None else {str(r.get("charger_id")): r for r in summary}

    async def list_chargers(self, request: web.Request) -> web.Response:
        ids = set(self.hub.sessions) | set(self.status.chargers) | set(self.settings.chargers)
        outbox = await self._outbox_by_charger()
        chargers = [v for v in (self.charger_view(cid, outbox) for cid in sorted(ids)) if v is not None]
        return _json({"chargers": chargers, "count": len(chargers)})

    async def transactions(self, request: web.Request) -> web.Response:
        q = request.query
        state = q.get("state")
        if state not in (None, "open", "ended"):
            return _error(400, "bad_state", "state must be open or ended")
        bounds: dict[str, str | None] = {}
        for key in ("since", "until"):
            value = q.get(key)
            if value is not None:
                try:
                    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
                except ValueError:
                    return _error(400, f"bad_{key}", f"{key} must be an ISO 8601 date-time")
                if parsed.tzinfo is None:
                    parsed = parsed.replace(tzinfo=timezone.utc)
                value = parsed.astimezone(timezone.utc).isoformat()
            bounds[key] = value
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            return _error(400, "bad_limit", "limit must be an integer from 1 to 1000")
        rows = await self.hub.store.transactions(charger_id=q.get("charger"), state=state, since=bounds["since"],
                                                 until=bounds["until"], limit=limit)
        return _json({"transactions": rows, "count": len(rows)})

    async def outbox_view(self, request: web.Request) -> web.Response:
        now = datetime.now(timezone.utc)
        chargers = []
        for row in await self.hub.store.outbox_summary():
            oldest = row.get("oldest")
            age = None
            if oldest:
                age = round((now - datetime.fromisoformat(oldest)).total_seconds(), 3)
            chargers.append({**row, "oldest_age_s": age})
        dead = await self.hub.store.dead_letters(100)
        return _json({"total_depth": sum(c["depth"] for c in chargers), "chargers": chargers, "dead_letters": dead})

    async def get_charger(self, request: web.Request) -> web.Response:
        view = self.charger_view(request.match_info["id"], await self._outbox_by_charger())
        if view is None:
            return _error(404, "not_found", f"no charger {request.match_info['id']!r}")
        return _json(view)

    async def forget_charger(self, request: web.Request) -> web.Response:
        charger_id = request.match_info["id"]
        if self.charger_view(charger_id, None) is None:
            return _error(404, "not_found", f"no charger {charger_id!r}")
        await self.hub.forget_charger(charger_id)
        await self.known.flush()  # forgotten for good once answered, also across a crash
        return _json({"forgotten": charger_id})

    async def call(self, request: web.Request) -> web.Response:
        charger_id, action = request.match_info["id"], request.match_info["action"]
        try:
            self.operator.charger(charger_id)
        except OperatorError as exc:
            return _error(404, "not_connected", str(exc))
        timeout: float | None = None
        if "timeout" in request.query:
            try:
                timeout = float(request.query["timeout"])
            except ValueError:
                timeout = math.nan
            if not 0 < timeout <= MAX_CALL_TIMEOUT:
                return _error(400, "bad_timeout", f"timeout must be a number of seconds in (0, {MAX_CALL_TIMEOUT:g}]")
        try:
            result = await self.operator.call(charger_id, action, parse_payload(await request.read()),
                                              timeout=timeout)
        except OperatorError as exc:
            return _operator_error(exc, charger_id, action, session_version(self.hub, charger_id))
        return _json(result)


# OperatorError.kind -> (HTTP status, error) of POST .../calls/{action}
_CALL_ERRORS = {
    "bad_json": (400, "bad_json"), "bad_payload": (400, "bad_payload"), "unknown_action": (400, "unknown_action"),
    "action_not_allowed": (400, "action_not_allowed"), "not_permitted": (400, "action_not_allowed"),
    "invalid_payload": (400, "invalid_payload"), "not_connected": (404, "not_connected"), "busy": (503, "busy"),
    "timeout": (504, "timeout"), "call_error": (502, "call_error"),
}


def session_version(hub: GatewayView, charger_id: str) -> OcppVersion | None:
    session = hub.sessions.get(charger_id)
    return session.version if session is not None else None


def _operator_error(exc: OperatorError, charger_id: str, action: str, version: Any) -> web.Response:
    status, error = _CALL_ERRORS.get(exc.kind, (400, exc.kind))
    if exc.kind == "bad_payload":
        return _error(status, error, "the body must be a JSON object (the OCPP request payload)")
    if exc.kind == "invalid_payload" and exc.violation is not None and version is not None:
        return _error(status, error, str(exc), ocpp_error={"code": exc.violation.code.spell(version),
                                                           "description": exc.violation.description})
    if exc.kind == "call_error" and exc.call is not None:
        return _error(status, error, str(exc), ocpp_error={"code": exc.call.code, "description": exc.call.description,
                                                           "details": exc.call.details})
    if exc.kind == "busy":
        return _error(status, error, str(exc), headers={"Retry-After": "1"})
    return _error(status, error, str(exc))
