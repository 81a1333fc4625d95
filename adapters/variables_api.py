"""REST endpoints of the variables mirror (gateway/mirror.py), mounted by adapters/api.py:

- `GET  /api/v1/chargers/{id}/variables` (filters `component`, `variable`, `key`, `changed_since`)
- `POST /api/v1/chargers/{id}/variables` `{"values": {"NAME": "VALUE", ...}}` (or a list of
  `{"name", "value"}`): set one or several; the charger's status per item
- `POST /api/v1/chargers/{id}/variables/refresh` (`?wait=S`): read the charger's variables again
- `GET  /api/v1/chargers/{id}/variables/{name}`, `PUT` it with `{"value": ...}`
- `GET  /api/v1/chargers/{id}/environment`: what `[environment].ensure` asked and the answers

A name is percent-encoded in the URL (a 2.x name holds `/`). Their OpenAPI path items and schemas
are here too, passed to `adapters.openapi.document()` as extras."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import orjson
from aiohttp import web


log = logging.getLogger("gateway.api")

_ERROR = {"$ref": "#/components/schemas/Error"}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 48},
       "description": "the charger id (percent-encoded in the URL)"}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
         "description": "the variable's name, percent-encoded (1.6: the key, e.g. HeartbeatInterval; 2.x: "
                        "Component[instance]@evse.connector/Variable[instance]#Attribute, e.g. "
                        "OCPPCommCtrlr%2FHeartbeatInterval)"}
MAX_WAIT = 300.0
MAX_ITEMS = 100  # gateway.mirror.MAX_ITEMS


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


_NULLABLE_STR = {"type": ["string", "null"]}
SCHEMAS: dict[str, Any] = {
    "Variable": {
        "type": "object",
        "required": ["name", "variable", "value", "secret", "known", "source", "read_at", "changed_at"],
        "properties": {
            "name": {"type": "string", "description": "1.6: the configuration key; 2.x: "
                                                      "Component[instance]@evse.connector/Variable[instance]#Attribute "
                                                      "(#Actual and absent parts left out)"},
            "component": {"type": ["object", "null"], "description": "2.x only", "properties": {
                "name": {"type": "string"}, "instance": _NULLABLE_STR, "evse": {"type": ["integer", "null"]},
                "connector": {"type": ["integer", "null"]}}},
            "variable": {"type": "object", "properties": {"name": {"type": "string"}, "instance": _NULLABLE_STR}},
            "attribute": {"type": ["string", "null"], "description": "2.x attribute type (Actual, Target, MinSet, MaxSet)"},
            "value": {"type": ["string", "null"], "description": "null for a secret (never kept) or no value"},
            "secret": {"type": "boolean", "description": "a credential: its value is never stored, shown or published"},
            "known": {"type": "boolean", "description": "false: a 1.6 key the charger reported as unknown"},
            "mutability": {"type": ["string", "null"], "enum": ["ReadOnly", "ReadWrite", "WriteOnly", None]},
            "readonly": {"type": "boolean"},
            "characteristics": {"type": ["object", "null"], "description": "2.x: unit, data_type, min_limit, "
                                                                           "max_limit, values_list, supports_monitoring"},
            "monitors": {"type": ["array", "null"], "items": {"type": "object"}},
            "source": {"type": "string", "description": "the message the value came from (GetConfiguration, NotifyReport, "
                                                        "ChangeConfiguration, SetVariables, NotifyEvent, ...)"},
            "read_at": {"type": "string", "format": "date-time", "description": "when it was last read or confirmed"},
            "changed_at": {"type": "string", "format": "date-time", "description": "when its value last changed"},
        },
    },
    "VariableRead": {
        "type": "object",
        "required": ["state"],
        "properties": {
            "state": {"enum": ["never", "reading", "complete", "partial", "failed"]},
            "protocol": {"type": "string"}, "started_at": _NULLABLE_STR, "finished_at": _NULLABLE_STR,
            "variables": {"type": "integer"}, "parts": {"type": "integer"},
            "missing_parts": {"type": "array", "items": {"type": "integer"},
                              "description": "NotifyReport seqNos that never came (a report cut short)"},
            "dropped": {"type": "integer", "description": "variables beyond [variables].max_per_charger"},
            "error": {"type": "string"},
        },
    },
    "VariableList": {
        "type": "object",
        "required": ["charger_id", "read", "capabilities", "variables"],
        "properties": {
            "charger_id": {"type": "string"},
            "read": _ref("VariableRead"),
            "capabilities": {"type": "object", "description": "what local control reads from the mirror",
                             "properties": {"rate_units": {"type": "array", "items": {"enum": ["A", "W"]}},
                                            "max_stack_level": {"type": ["integer", "null"]},
                                            "phases": {"type": ["integer", "null"]},
                                            "connector_types": {"type": "object"}}},
            "variables": {"type": "array", "items": _ref("Variable")},
        },
    },
    "VariableSet": {
        "type": "object",
        "description": "{\"values\": {NAME: VALUE, ...}} or {\"values\": [{\"name\": ..., \"value\": ...}]}",
        "required": ["values"],
        "properties": {"values": {"oneOf": [
            {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}},
            {"type": "array", "maxItems": MAX_ITEMS, "items": {"type": "object", "required": ["name", "value"],
                                                              "properties": {"name": {"type": "string"},
                                                                             "value": {"type": ["string", "number",
                                                                                                "boolean"]}}}}]}},
    },
    "VariableSetResult": {
        "type": "object",
        "required": ["charger_id", "results"],
        "properties": {"charger_id": {"type": "string"}, "results": {"type": "array", "items": {
            "type": "object", "required": ["name", "status"],
            "properties": {"name": {"type": "string"},
                           "status": {"type": "string", "description": "the charger's: Accepted, RebootRequired, "
                                                                       "Rejected, NotSupported, UnknownComponent, "
                                                                       "UnknownVariable, ...; Refused: by the gateway; "
                                                                       "or timeout / an OCPP error code"},
                           "reason": {"type": "string"}}}}},
    },
    "EnvironmentRequests": {
        "type": "object",
        "required": ["charger_id", "ensure", "requests"],
        "properties": {
            "charger_id": {"type": "string"}, "ensure": {"type": "boolean"},
            "requests": {"type": "array", "items": {"type": "object", "properties": {
                "target": {"type": "string", "description": "1.6: the key changed; 2.x: variable name#monitor type"},
                "request": {"type": "object"},
                "status": {"type": "string", "description": "the charger's answer (Accepted, Rejected, "
                                                            "UnsupportedMonitorType, ...)"},
                "info": _NULLABLE_STR, "at": {"type": "string", "format": "date-time"}}}},
        },
    },
}

_COMMON = {
    "401": _json(_ERROR, "missing or wrong bearer token (only when [api].token is set)"),
    "409": _json(_ERROR, "the variables mirror is switched off ([variables].enabled = false)"),
}
_SET_ANSWERS = {
    "200": _json(_ref("VariableSetResult"), "the charger's status per item (the mirror is updated for Accepted "
                                            "and RebootRequired)"),
    "400": _json(_ERROR, "the body is not as described"),
    "404": _json(_ERROR, "the charger is not connected"),
    **_COMMON,
}

PATHS: dict[str, Any] = {
    "/api/v1/chargers/{id}/variables": {
        "get": {
            "summary": "The charger's variables as last read (1.6 configuration keys, 2.x device model)",
            "operationId": "listVariables",
            "parameters": [_ID,
                           {"name": "component", "in": "query", "schema": {"type": "string"},
                            "description": "2.x component name (exact, any case)"},
                           {"name": "variable", "in": "query", "schema": {"type": "string"},
                            "description": "variable name or 1.6 key (exact, any case)"},
                           {"name": "key", "in": "query", "schema": {"type": "string"},
                            "description": "part of the name (any case)"},
                           {"name": "changed_since", "in": "query", "schema": {"type": "string", "format": "date-time"},
                            "description": "only values changed at or after this time"}],
            "responses": {"200": _json(_ref("VariableList"), "the variables and the state of the last read"),
                          "400": _json(_ERROR, "changed_since is not a date-time"), **_COMMON},
        },
        "post": {
            "summary": "Set one or several variables (1.6 ChangeConfiguration per key, 2.x one SetVariables)",
            "operationId": "setVariables",
            "parameters": [_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("VariableSet")}}},
            "responses": _SET_ANSWERS,
        },
    },
    "/api/v1/chargers/{id}/variables/refresh": {"post": {
        "summary": "Read the charger's variables again (GetConfiguration / GetBaseReport, never seen by the CSMS)",
        "operationId": "refreshVariables",
        "parameters": [_ID, {"name": "wait", "in": "query", "schema": {"type": "number", "minimum": 0,
                                                                       "maximum": MAX_WAIT},
                             "description": "seconds to wait for the read to end (default: answer at once)"}],
        "responses": {"200": _json(_ref("VariableRead"), "the read's state"),
                      "400": _json(_ERROR, "wait is not a number in range"),
                      "404": _json(_ERROR, "the charger is not connected"), **_COMMON},
    }},
    "/api/v1/chargers/{id}/variables/{name}": {
        "get": {
            "summary": "One variable",
            "operationId": "getVariable",
            "parameters": [_ID, _NAME],
            "responses": {"200": _json(_ref("Variable"), "the variable"),
                          "404": _json(_ERROR, "the mirror has no such variable for this charger"), **_COMMON},
        },
        "put": {
            "summary": "Set one variable",
            "operationId": "setVariable",
            "parameters": [_ID, _NAME],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["value"],
                "properties": {"value": {"type": ["string", "number", "boolean"]}}}}}},
            "responses": _SET_ANSWERS,
        },
    },
    "/api/v1/chargers/{id}/environment": {"get": {
        "summary": "What [environment].ensure asked the charger for, and its answers",
        "operationId": "getEnvironmentRequests",
        "parameters": [_ID],
        "responses": {"200": _json(_ref("EnvironmentRequests"), "the requests and the charger's answers"), **_COMMON},
    }},
}


def _error(status: int, error: str, message: str) -> web.Response:
    return web.Response(body=orjson.dumps({"error": error, "message": message}), status=status,
                        content_type="application/json")


def _ok(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


_STATUS = {"not_connected": 404, "bad_request": 400, "disabled": 409}


async def _body(request: web.Request) -> tuple[Any, web.Response | None]:
    """(the parsed JSON body or None when empty, or the 400 answer for one that is not JSON)."""
    raw = await request.read()
    try:
        return (orjson.loads(raw) if raw.strip() else None), None
    except orjson.JSONDecodeError as exc:
        return None, _error(400, "bad_request", f"the body is not JSON: {exc}")


def _off() -> web.Response:
    return _error(409, "disabled", "the variables mirror is off ([variables].enabled = false)")


def add_routes(app: web.Application, hub: Any) -> None:
    from gateway.mirror import MirrorError, set_pairs

    def mirror() -> Any:
        m = getattr(hub, "variables", None)
        return m if m is not None and m.cfg.enabled else None

    async def list_(request: web.Request) -> web.Response:
        m = mirror()
        if m is None:
            return _off()
        cid = request.match_info["id"]
        q = request.query
        since = q.get("changed_since")
        if since is not None:
            try:
                parsed = datetime.fromisoformat(since.replace("Z", "+00:00"))
            except ValueError:
                return _error(400, "bad_request", "changed_since must be an ISO 8601 date-time")
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            since = parsed.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        variables = await m.values(cid, component=q.get("component"), variable=q.get("variable"), key=q.get("key"),
                                 changed_since=since)
        return _ok({"charger_id": cid, "read": await m.read_status(cid), "capabilities": m.capabilities(cid).as_json(),
                    "variables": variables})

    async def one(request: web.Request) -> web.Response:
        m = mirror()
        if m is None:
            return _off()
        cid, name = request.match_info["id"], request.match_info["name"]
        found = await m.get(cid, name)
        if found is None:
            return _error(404, "not_found", f"{cid} has no variable {name!r} in the mirror")
        return _ok(found)

    async def set_many(request: web.Request) -> web.Response:
        m = mirror()
        if m is None:
            return _off()
        cid = request.match_info["id"]
        body, bad = await _body(request)
        if bad is not None:
            return bad
        try:
            pairs = set_pairs(body if isinstance(body, dict) and "values" in body else {"values": None})
        except MirrorError as exc:
            return _error(400, "bad_request", str(exc))
        if pairs is None:
            return _error(400, "bad_request", "use POST .../variables/refresh to read again")
        return await _set(m, cid, pairs)

    async def set_one(request: web.Request) -> web.Response:
        m = mirror()
        if m is None:
            return _off()
        cid, name = request.match_info["id"], request.match_info["name"]
        body, bad = await _body(request)
        if bad is not None:
            return bad
        if not isinstance(body, dict) or "value" not in body:
            return _error(400, "bad_request", 'the body must be {"value": ...}')
        return await _set(m, cid, [(name, body["value"])])

    async def _set(m: Any, cid: str, pairs: list[tuple[str, Any]]) -> web.Response:
        try:
            results = await m.set_values(cid, pairs)
        except MirrorError as exc:
            return _error(_STATUS.get(exc.code, 400), exc.code, str(exc))
        return _ok({"charger_id": cid, "results": results})

    async def refresh(request: web.Request) -> web.Response:
        m = mirror()
        if m is None:
            return _off()
        cid = request.match_info["id"]
        wait: float | None = None
        if "wait" in request.query:
            try:
                wait = float(request.query["wait"])
            except ValueError:
                return _error(400, "bad_request", "wait must be a number of seconds")
            if not 0 <= wait <= MAX_WAIT:
                return _error(400, "bad_request", f"wait must be 0 to {MAX_WAIT:g} s")
        try:
            return _ok(await m.refresh(cid, wait))
        except MirrorError as exc:
            return _error(_STATUS.get(exc.code, 400), exc.code, str(exc))

    async def environment(request: web.Request) -> web.Response:
        m = mirror()
        if m is None:
            return _off()
        return _ok(await m.environment(request.match_info["id"]))

    app.router.add_get("/api/v1/chargers/{id}/variables", list_)
    app.router.add_post("/api/v1/chargers/{id}/variables", set_many)
    app.router.add_post("/api/v1/chargers/{id}/variables/refresh", refresh)
    app.router.add_get("/api/v1/chargers/{id}/variables/{name:.+}", one)
    app.router.add_put("/api/v1/chargers/{id}/variables/{name:.+}", set_one)
    app.router.add_get("/api/v1/chargers/{id}/environment", environment)
