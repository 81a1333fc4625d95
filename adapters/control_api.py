"""REST endpoints of local control (docs/local-control.md), mounted by adapters/api.py:
`POST /api/v1/chargers/{id}/pause` and `/resume` with `{"evse": n}`, `{"transaction_id": ...}` or
`{}` (the whole charger). The command itself is the core's (gateway/operator.py); this module
only translates its answer and errors into HTTP.

Kept apart from adapters/api.py so that file only mounts them; their OpenAPI path items and schema
are here too, passed to `adapters.openapi.document()` as extras."""

from __future__ import annotations

import logging
from typing import Any, Callable

import orjson
from aiohttp import web

from gateway.operator import Operator, OperatorError, parse_payload
from gateway.ports import ControlView

log = logging.getLogger("gateway.api")

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


SCHEMAS: dict[str, Any] = {
    "ControlRequest": {
        "type": "object",
        "description": "the EVSE (0 = the whole charger) or the transaction to pause or resume; {} is the "
                       "whole charger",
        "properties": {"evse": {"type": "integer", "minimum": 0},
                       "transaction_id": {"type": ["string", "integer"]}},
    },
    "LimitRequest": {
        "type": "object", "required": ["limit_a"],
        "description": "the operator's current limit of an EVSE (0 or absent = every EVSE); null lifts it",
        "properties": {"evse": {"type": "integer", "minimum": 0},
                       "limit_a": {"type": ["number", "null"], "minimum": 0, "description": "A per phase"}},
    },
    "SiteLimit": {
        "type": "object", "required": ["limit_a"],
        "properties": {"limit_a": {"type": ["number", "null"], "minimum": 0,
                                   "description": "A per phase; null: no site limit"},
                       "source": {"enum": ["operator", "config"]}},
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
            "limits": {"type": "object", "additionalProperties": {"type": "number"},
                       "description": "the operator's current limits, A per EVSE (\"0\": every EVSE)"},
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
            "400": _json(_ERROR, "the body is not {\"evse\": n}, {\"transaction_id\": ...} or {}"),
            "401": _json(_ERROR, "missing or wrong bearer token"),
            "404": _json(_ERROR, "the charger is not connected, or no such transaction on it"),
            "409": _json(_ERROR, "pause and resume are switched off ([control].pause_enabled = false)"),
        },
    }}


_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 48},
        "description": "the charger id (percent-encoded in the URL)"}]


PATHS: dict[str, Any] = {
    "/api/v1/chargers/{id}/limit": {"post": {
        "summary": "Set or lift the operator's current limit of an EVSE (local control)",
        "operationId": "limitCharging", "parameters": _ID,
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/LimitRequest"}}}},
        "responses": {
            "200": _json({"$ref": "#/components/schemas/ControlResult"}, "what the gateway applied"),
            "400": _json(_ERROR, "the body is not {\"evse\": n, \"limit_a\": A or null}"),
            "401": _json(_ERROR, "missing or wrong bearer token"),
            "404": _json(_ERROR, "the charger is not connected"),
            "409": _json(_ERROR, "operator control is switched off ([control].pause_enabled = false)"),
        },
    }},
    "/api/v1/site/limit": {"post": {
        "summary": "Set the site limit at run time (replaces [site]'s; kept across restarts)",
        "operationId": "setSiteLimit",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/SiteLimit"}}}},
        "responses": {
            "200": _json({"$ref": "#/components/schemas/SiteLimit"}, "the site limit now applied"),
            "400": _json(_ERROR, "the body is not {\"limit_a\": A or null}"),
            "401": _json(_ERROR, "missing or wrong bearer token"),
            "409": _json(_ERROR, "operator control is switched off, or local control is not running"),
        },
    }},
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

_STATUS = {"bad_json": 400, "bad_payload": 400, "bad_request": 400, "not_connected": 404,
           "unknown_transaction": 404, "disabled": 409}


def _error(status: int, error: str, message: str) -> web.Response:
    return web.Response(body=orjson.dumps({"error": error, "message": message}), status=status,
                        content_type="application/json")


def add_routes(app: web.Application, operator: Operator, control: Callable[[], ControlView | None]) -> None:
    """`control()` is the control engine (for the view), or None when local control is not running."""

    async def handle(request: web.Request) -> web.Response:
        charger_id = request.match_info.get("id", "")
        verb = request.path.rsplit("/", 1)[1]
        try:
            body = parse_payload(await request.read())
            if request.path == "/api/v1/site/limit":
                result = await operator.site_limit(body, channel="api")
            else:
                command = {"pause": "Pause", "resume": "Resume", "limit": "Limit"}[verb]
                result = await operator.local(charger_id, command, body, channel="api")
        except OperatorError as exc:
            message = str(exc)
            if exc.kind == "bad_payload" and verb in ("pause", "resume"):
                message = 'the body must be {"evse": n}, {"transaction_id": ...} or {} (the whole charger)'
            return _error(_STATUS.get(exc.kind, 400), "bad_request" if exc.kind.startswith("bad_") else exc.kind,
                          message)
        return web.Response(body=orjson.dumps(result), content_type="application/json")

    async def view(request: web.Request) -> web.Response:
        engine = control()
        if engine is None:
            return _error(409, "disabled", "local control is not running")
        return web.Response(body=orjson.dumps(engine.view(request.match_info["id"])), content_type="application/json")

    app.router.add_get("/api/v1/chargers/{id}/control", view)
    app.router.add_post("/api/v1/chargers/{id}/pause", handle)
    app.router.add_post("/api/v1/chargers/{id}/resume", handle)
    app.router.add_post("/api/v1/chargers/{id}/limit", handle)
    app.router.add_post("/api/v1/site/limit", handle)
