"""REST endpoints of local control (docs/local-control.md), mounted by adapters/api.py:
`POST /api/v1/chargers/{id}/pause` and `/resume` with `{"evse": n}` or `{"transaction_id": ...}`.

Kept apart from adapters/api.py so that file only mounts them; their OpenAPI path items and schema
are here too, passed to `adapters.openapi.document()` as extras."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

log = logging.getLogger("gateway.api")

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


SCHEMAS: dict[str, Any] = {
    "ControlRequest": {
        "type": "object",
        "description": "the EVSE (0 = the whole charger) or the transaction to pause or resume",
        "properties": {"evse": {"type": "integer", "minimum": 0},
                       "transaction_id": {"type": ["string", "integer"]}},
    },
    "ControlResult": {
        "type": "object",
        "required": ["charger_id", "evse", "state", "mechanism", "status"],
        "properties": {
            "charger_id": {"type": "string"},
            "evse": {"type": "integer"},
            "transaction_id": {"type": ["string", "null"]},
            "state": {"enum": ["paused", "limited", "released"],
                      "description": "what the gateway now applies to the EVSE (another reason, e.g. the site "
                                     "limit or temperature, may still limit it after a resume)"},
            "limit_a": {"type": ["number", "null"], "description": "A per phase; null when released"},
            "reason": {"type": ["string", "null"], "description": "operator, temperature or site_limit"},
            "mechanism": {"enum": ["profile", "availability", "stop", "none"],
                          "description": "profile: a charging profile; the others: the fallback for a charger "
                                         "that refused it"},
            "status": {"type": "string", "description": "the charger's answer (Accepted, Scheduled, Rejected, ...) "
                                                        "or an error code"},
        },
    },
    "ControlView": {
        "type": "object",
        "required": ["charger_id", "transactions", "evses", "temperature", "derating", "paused_evses"],
        "properties": {
            "charger_id": {"type": "string"},
            "transactions": {"type": "array", "items": {"type": "object", "properties": {
                "transaction_id": {"type": "string"}, "evse": {"type": "integer"}}}},
            "evses": {"type": "array", "description": "what the gateway applies, per EVSE", "items": {
                "type": "object", "properties": {
                    "evse": {"type": "integer"}, "transaction_id": {"type": ["string", "null"]},
                    "limit_a": {"type": ["number", "null"]}, "reason": {"type": ["string", "null"]},
                    "mechanism": {"type": "string"}, "status": {"type": "string"}}}},
            "temperature": {"type": ["number", "null"], "description": "the hottest latest reading, °C"},
            "derating": {"enum": ["normal", "reduced", "paused"]},
            "paused_evses": {"type": "array", "items": {"type": "integer"}},
        },
    },
}


def _operation(verb: str) -> dict[str, Any]:
    return {"post": {
        "summary": f"{verb.capitalize()} charging on an EVSE or of a transaction (local control)",
        "operationId": f"{verb}Charging",
        "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 48},
                        "description": "the charger id (percent-encoded in the URL)"}],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ControlRequest"}}}},
        "responses": {
            "200": _json({"$ref": "#/components/schemas/ControlResult"}, "what the gateway applied"),
            "400": _json(_ERROR, "the body is not {\"evse\": n} or {\"transaction_id\": ...}"),
            "401": _json(_ERROR, "missing or wrong bearer token"),
            "404": _json(_ERROR, "the charger is not connected, or no such transaction on it"),
            "409": _json(_ERROR, "pause and resume are switched off ([control].pause_enabled = false)"),
        },
    }}


PATHS: dict[str, Any] = {
    "/api/v1/chargers/{id}/pause": _operation("pause"),
    "/api/v1/chargers/{id}/resume": _operation("resume"),
    "/api/v1/chargers/{id}/control": {"get": {
        "summary": "What local control knows and applies for one charger",
        "operationId": "getControl",
        "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 48},
                        "description": "the charger id (percent-encoded in the URL)"}],
        "responses": {
            "200": _json({"$ref": "#/components/schemas/ControlView"}, "transactions, limits, temperature"),
            "401": _json(_ERROR, "missing or wrong bearer token"),
            "409": _json(_ERROR, "local control is not running"),
        },
    }},
}

_STATUS = {"bad_request": 400, "not_connected": 404, "unknown_transaction": 404, "disabled": 409}


def _error(status: int, error: str, message: str) -> web.Response:
    return web.Response(body=orjson.dumps({"error": error, "message": message}), status=status,
                        content_type="application/json")


def add_routes(app: web.Application, hub: Any) -> None:
    async def handle(request: web.Request) -> web.Response:
        from gateway.control.engine import ControlError

        engine = getattr(hub, "control", None)
        if engine is None:
            return _error(409, "disabled", "local control is not running")
        charger_id = request.match_info["id"]
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as exc:
            return _error(400, "bad_request", f"the body is not JSON: {exc}")
        if not isinstance(body, dict):
            return _error(400, "bad_request", 'the body must be {"evse": n} or {"transaction_id": ...}')
        verb = request.path.rsplit("/", 1)[1]
        log.info("operator %s of %s: %s", verb, charger_id, body, extra={"charger_id": charger_id})
        try:
            result = await (engine.pause if verb == "pause" else engine.resume)(charger_id, body)
        except ControlError as exc:
            return _error(_STATUS.get(exc.code, 400), exc.code, str(exc))
        return web.Response(body=orjson.dumps(result), content_type="application/json")

    async def view(request: web.Request) -> web.Response:
        engine = getattr(hub, "control", None)
        if engine is None:
            return _error(409, "disabled", "local control is not running")
        return web.Response(body=orjson.dumps(engine.view(request.match_info["id"])), content_type="application/json")

    app.router.add_get("/api/v1/chargers/{id}/control", view)
    app.router.add_post("/api/v1/chargers/{id}/pause", handle)
    app.router.add_post("/api/v1/chargers/{id}/resume", handle)


async def command(hub: Any, charger_id: str, action: str, request: dict[str, Any]) -> dict[str, Any] | None:
    """An MQTT `.../cmd/Pause` or `.../cmd/Resume`: the result for the `/result` topic, or None when
    `action` is not a local-control command (then it is an OCPP action)."""
    if action not in ("Pause", "Resume"):
        return None
    from gateway.control.engine import ControlError

    engine = getattr(hub, "control", None)
    if engine is None:
        return {"status": "error", "error": {"code": "disabled", "description": "local control is not running"}}
    try:
        result = await (engine.pause if action == "Pause" else engine.resume)(charger_id, request)
    except ControlError as exc:
        return {"status": "error", "error": {"code": exc.code, "description": str(exc)}}
    return {"status": "ok", "response": result}


def change_json(change: Any) -> dict[str, Any]:
    """A ControlChange as the JSON of MQTT `.../chargers/{id}/control` and `.../evse/{n}/control`."""
    return {"evse": change.evse, "transaction_id": change.transaction_id, "state": change.state,
            "limit_a": change.limit_a, "reason": change.reason or None, "mechanism": change.mechanism,
            "status": change.status, "temperature": change.temperature,
            "ts": change.ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")}


def influx_point(change: Any, site: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tags, fields) of a ControlChange in the InfluxDB measurement `control` (fields keep one type)."""
    tags = {"site": site, "charger": change.charger_id, "evse": change.evse, "state": change.state,
            "reason": change.reason or "none", "mechanism": change.mechanism}
    fields = {"limit_a": None if change.limit_a is None else float(change.limit_a), "status": change.status,
              "transaction_id": change.transaction_id or "",
              "temperature": None if change.temperature is None else float(change.temperature)}
    return tags, fields
