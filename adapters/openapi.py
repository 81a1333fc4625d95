"""The REST API's OpenAPI 3.1 document, built from plain dicts (served at /api/v1/openapi.json).

OpenAPI 3.1 schemas are JSON Schema 2020-12, so the tests validate every response they get with
jsonschema against the schema documented here for that path, method and status.

Adding endpoints (e.g. /api/v1/transactions and /api/v1/outbox when the offline store lands): put
their schemas in `SCHEMAS` and their path items in `PATHS` (or pass `extra_paths`/`extra_schemas`
to `document()`), and route them in adapters/api.py. `Charger.outbox` (depth, oldest age, dead
letters per charger, from the store's `outbox_summary()`) is already in the charger schema.
"""

from __future__ import annotations

import copy
from typing import Any

from gateway import __version__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_NULLABLE_STR = {"type": ["string", "null"]}
_NULLABLE_NUM = {"type": ["number", "null"]}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "description": "a stable machine-readable code, e.g. not_found"},
            "message": {"type": "string", "description": "what was wrong, for people"},
            "ocpp_error": _ref("OcppError"),
        },
    },
    "OcppError": {
        "type": "object",
        "required": ["code", "description"],
        "properties": {
            "code": {"type": "string", "description": "OCPP error code, e.g. NotImplemented, "
                     "OccurrenceConstraintViolation"},
            "description": {"type": "string"},
            "details": {"type": "object"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "chargers", "version"],
        "properties": {
            "status": {"const": "ok"},
            "chargers": {"type": "integer", "minimum": 0, "description": "connected chargers"},
            "version": {"type": "string"},
        },
    },
    "Ready": {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"enum": ["ready", "not_ready"]},
            "checks": {"type": "object", "additionalProperties": {"type": "boolean"},
                       "description": "each check by name: store (the SQLite store is open and can write), "
                                      "websocket (the charger listener accepts connections)"},
            "reasons": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "why a check failed, by name (e.g. the store's file and 'database or "
                                       "disk is full')"},
        },
    },
    "Connector": {
        "type": "object",
        "required": ["evse", "connector", "status", "error_code", "since", "power_w", "energy_wh", "transaction_id"],
        "properties": {
            "evse": {"type": "integer", "description": "1.6 connectorId or 2.x evseId; 0 = the whole charger"},
            "connector": {"type": ["integer", "null"], "description": "2.x connectorId within the EVSE"},
            "status": {**_NULLABLE_STR, "description": "the last status the charger reported, e.g. Available, "
                                                       "Charging (1.6), Occupied (2.x)"},
            "error_code": {**_NULLABLE_STR, "description": "1.6 errorCode"},
            "since": {**_NULLABLE_STR, "description": "the charger's timestamp of that status, else receipt"},
            "power_w": {**_NULLABLE_NUM, "description": "latest Power.Active.Import, W"},
            "energy_wh": {**_NULLABLE_NUM, "description": "latest Energy.Active.Import.Register, Wh"},
            "transaction_id": {**_NULLABLE_STR, "description": "the open transaction on this EVSE"},
        },
    },
    "OpenTransaction": {
        "type": "object",
        "required": ["transaction_id", "evse", "started_at", "energy_wh", "power_w"],
        "properties": {
            "transaction_id": {"type": "string"},
            "evse": {"type": "integer"},
            "connector": {"type": ["integer", "null"]},
            "started_at": {"type": "string"},
            "meter_start_wh": _NULLABLE_NUM,
            "energy_wh": {**_NULLABLE_NUM, "description": "energy delivered so far, Wh"},
            "power_w": _NULLABLE_NUM,
        },
    },
    "Reading": {
        "type": "object",
        "description": "the latest value of one reading; its identity is evse + measurand + phase + location "
                       "(the spec's defaults filled in: location Outlet); units by docs/mqtt-and-influxdb.md "
                       "(a sample without unit is in its measurand's unit). Power and current readings are "
                       "dropped when the EVSE's transaction ends or the charger disconnects",
        "required": ["evse", "measurand", "phase", "location", "value", "unit", "ts", "context"],
        "properties": {
            "evse": {"type": "integer"},
            "measurand": {"type": "string"},
            "phase": _NULLABLE_STR,
            "location": _NULLABLE_STR,
            "value": {"type": "number"},
            "unit": {"type": "string", "description": "canonical unit, e.g. Wh, W, A, V, Celsius; empty for ratios"},
            "ts": {"type": "string", "description": "the charger's timestamp (UTC)"},
            "context": _NULLABLE_STR,
        },
    },
    "EnvironmentReading": {
        "type": "object",
        "required": ["name", "component", "value", "unit", "ts", "source"],
        "properties": {
            "name": {"type": "string", "description": "e.g. temperature, temperature_outlet_evse1, humidity"},
            "component": {**_NULLABLE_STR, "description": "2.x device-model component (with instance and EVSE)"},
            "value": {"type": "number"},
            "unit": {"type": "string"},
            "ts": {"type": "string"},
            "source": {"type": "string", "description": "the OCPP action it came from"},
        },
    },
    "Charger": {
        "type": "object",
        "required": ["id", "connected", "transport", "protocol", "upstream", "queues", "boot", "last_seen",
                     "connectors", "open_transactions", "outbox", "readings", "environment"],
        "properties": {
            "id": {"type": "string"},
            "soap_endpoint": {
                "type": "object", "description": "OCPP-S chargers only: where the gateway sends their commands",
                "required": ["url", "source", "changed_at", "previous"],
                "properties": {
                    "url": {"type": "string"},
                    "source": {"enum": ["configured", "wsa:From"],
                               "description": "[chargers.ID].soap_endpoint, or learned from the charger's wsa:From"},
                    "changed_at": {"type": ["string", "null"], "format": "date-time",
                                   "description": "when it last changed (null: not since the gateway started)"},
                    "previous": {"type": ["string", "null"], "description": "the endpoint before that change"},
                },
            },
            "connected": {"type": "boolean"},
            "transport": {"type": ["string", "null"], "description": "websocket, soap or http: of the current "
                                                                     "or last connection"},
            "protocol": {"type": ["string", "null"], "enum": ["ocpp1.6", "ocpp2.0.1", "ocpp2.1", None]},
            "upstream": {
                "type": "object",
                "required": ["state", "since"],
                "properties": {
                    "state": {"enum": ["standalone", "connecting", "online", "offline", "disconnected"]},
                    "since": _NULLABLE_STR,
                    "last_lost": {"type": "object", "required": ["at", "reason"],
                                  "description": "when and why the link to the CSMS was last declared dead",
                                  "properties": {"at": {"type": "string", "format": "date-time"},
                                                 "reason": {"type": "string", "description":
                                                            "e.g. 'no pong within 10 s (silent link)', "
                                                            "'closed by the CSMS (code 1001)'"}}},
                },
            },
            "queues": {
                "type": "object",
                "required": ["to_charger", "to_csms"],
                "properties": {"to_charger": {"type": "integer", "minimum": 0},
                               "to_csms": {"type": "integer", "minimum": 0}},
                "description": "CALLs waiting or in flight in each direction",
            },
            "boot": {
                "type": ["object", "null"],
                "properties": {k: _NULLABLE_STR for k in ("vendor", "model", "serial_number", "firmware_version")},
            },
            "last_seen": _NULLABLE_STR,
            "connectors": {"type": "array", "items": _ref("Connector")},
            "open_transactions": {"type": "array", "items": _ref("OpenTransaction")},
            "readings": {"type": "array", "items": _ref("Reading"),
                         "description": "empty for a charger known from an earlier run until it reports again"},
            "environment": {"type": "array", "items": _ref("EnvironmentReading")},
            "control": {"anyOf": [_ref("ControlView"), {"type": "null"}],
                        "description": "local control for this charger (as GET .../control); null when it is "
                                       "not running"},
            "outbox": {
                "type": ["object", "null"],
                "description": "messages waiting for the CSMS (null when the gateway has no outbox)",
                "required": ["depth", "oldest_age_seconds", "dead_letters"],
                "properties": {"depth": {"type": "integer", "minimum": 0},
                               "oldest_age_seconds": _NULLABLE_NUM,
                               "dead_letters": {"type": "integer", "minimum": 0,
                                                "description": "messages the CSMS refused for good"},
                               "waiting_for": {
                                   "type": "object", "required": ["protocol", "reason", "since"],
                                   "description": "present while a backlog stored in another OCPP version "
                                                  "waits for a link in that version (the CSMS refuses it now)",
                                   "properties": {"protocol": {"type": "string"}, "reason": {"type": "string"},
                                                  "since": {"type": "string", "format": "date-time"}}}},
            },
        },
    },
    "ChargerList": {
        "type": "object",
        "required": ["chargers", "count"],
        "properties": {"chargers": {"type": "array", "items": _ref("Charger")},
                       "count": {"type": "integer", "minimum": 0}},
    },
    "CallResult": {"type": "object", "description": "the charger's CALLRESULT payload, as it sent it"},
    "Transaction": {
        "type": "object",
        "required": ["charger_id", "transaction_id", "evse", "connector", "started_at", "ended_at", "meter_start",
                     "meter_stop", "energy_wh", "reason", "offline"],
        "properties": {
            "charger_id": {"type": "string"},
            "transaction_id": {"type": "string", "description": "as the charger knows it (1.6: the id it was "
                                                                "given, the gateway's own while offline)"},
            "evse": {"type": ["integer", "null"]},
            "connector": {"type": ["integer", "null"]},
            "started_at": {"type": ["string", "null"], "format": "date-time"},
            "ended_at": {"type": ["string", "null"], "format": "date-time", "description": "null while open"},
            "meter_start": {"type": ["number", "null"], "description": "Wh"},
            "meter_stop": {"type": ["number", "null"], "description": "Wh"},
            "energy_wh": {"type": ["number", "null"]},
            "reason": {"type": ["string", "null"]},
            "offline": {"type": "boolean", "description": "reported while the CSMS was away"},
            "ts_clamped": {"type": "boolean", "description": "the charger's time of an event was outside years "
                                                             "1-9999 in UTC: recorded at the nearest bound"},
        },
    },
    "TransactionList": {
        "type": "object", "required": ["transactions", "count"],
        "properties": {"transactions": {"type": "array", "items": _ref("Transaction")}, "count": {"type": "integer"}},
    },
    "OutboxCharger": {
        "type": "object", "required": ["charger_id", "depth", "oldest", "oldest_age_s", "dead_letters"],
        "properties": {
            "charger_id": {"type": "string"},
            "depth": {"type": "integer", "description": "messages waiting for the CSMS"},
            "oldest": {"type": ["string", "null"], "format": "date-time"},
            "oldest_age_s": {"type": ["number", "null"]},
            "dead_letters": {"type": "integer"},
        },
    },
    "DeadLetter": {
        "type": "object", "required": ["seq", "charger_id", "action", "received_at", "error"],
        "properties": {"seq": {"type": "integer"}, "charger_id": {"type": "string"}, "action": {"type": "string"},
                       "received_at": {"type": "string", "format": "date-time"}, "error": {"type": ["string", "null"]}},
    },
    "Outbox": {
        "type": "object", "required": ["total_depth", "chargers", "dead_letters"],
        "properties": {
            "total_depth": {"type": "integer"},
            "chargers": {"type": "array", "items": _ref("OutboxCharger")},
            "dead_letters": {"type": "array", "items": _ref("DeadLetter"), "description": "newest first, at most 100"},
        },
    },
}

_AUTH: list[dict[str, list[str]]] = [{"bearer": []}]
_401 = _json(_ref("Error"), "missing or wrong bearer token")
_404 = _json(_ref("Error"), "no such charger")
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 48},
       "description": "the charger id (percent-encoded in the URL)"}

PATHS: dict[str, Any] = {
    "/healthz": {"get": {
        "summary": "Liveness: the process serves HTTP", "security": [], "operationId": "healthz",
        "responses": {"200": _json(_ref("Health"), "alive")},
    }},
    "/readyz": {"get": {
        "summary": "Readiness: the store is open and the charger listener is up", "security": [],
        "operationId": "readyz",
        "responses": {"200": _json(_ref("Ready"), "ready"), "503": _json(_ref("Ready"), "not ready")},
    }},
    "/metrics": {"get": {
        "summary": "Prometheus metrics (text exposition format 0.0.4)", "operationId": "metrics",
        "responses": {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                      "401": _401},
    }},
    "/": {"get": {
        "summary": "The status page (HTML; its script reads the API with the token given in the URL "
                   "fragment #token=... or typed in)", "security": [], "operationId": "statusPage",
        "responses": {"200": {"description": "page", "content": {"text/html": {"schema": {"type": "string"}}}}},
    }},
    "/api/v1/openapi.json": {"get": {
        "summary": "This document", "security": [], "operationId": "openapi",
        "responses": {"200": _json({"type": "object"}, "the OpenAPI document")},
    }},
    "/api/v1/chargers": {"get": {
        "summary": "Every charger: connected ones, configured ones and those seen since the gateway started",
        "operationId": "listChargers",
        "responses": {"200": _json(_ref("ChargerList"), "chargers, sorted by id"), "401": _401},
    }},
    "/api/v1/chargers/{id}": {"get": {
        "summary": "One charger", "operationId": "getCharger", "parameters": [_ID],
        "responses": {"200": _json(_ref("Charger"), "the charger"), "401": _401, "404": _404},
    }, "delete": {
        "summary": "Forget a charger (connected, or known from this or an earlier run): close its connection "
                   "and remove its retained MQTT state, Home Assistant discovery, status entry and the store's "
                   "memory of it (its outbox and transactions are kept; it returns if it connects again)",
        "operationId": "forgetCharger", "parameters": [_ID],
        "responses": {"200": _json({"type": "object", "required": ["forgotten"],
                                    "properties": {"forgotten": {"type": "string"}}}, "forgotten"),
                      "401": _401, "404": _404},
    }},
    "/api/v1/transactions": {"get": {
        "summary": "Transactions the chargers reported (online, offline and standalone alike), newest first",
        "operationId": "listTransactions",
        "parameters": [
            {"name": "charger", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 48}},
            {"name": "state", "in": "query", "required": False, "schema": {"type": "string", "enum": ["open", "ended"]}},
            {"name": "since", "in": "query", "required": False, "schema": {"type": "string", "format": "date-time"},
             "description": "started at or after (ISO 8601)"},
            {"name": "until", "in": "query", "required": False, "schema": {"type": "string", "format": "date-time"},
             "description": "started before (ISO 8601)"},
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
        ],
        "responses": {"200": _json(_ref("TransactionList"), "transactions"),
                      "400": _json(_ref("Error"), "a filter is malformed"), "401": _401},
    }},
    "/api/v1/outbox": {"get": {
        "summary": "What waits for the CSMS: depth and oldest age per charger, and the dead letters",
        "operationId": "getOutbox",
        "responses": {"200": _json(_ref("Outbox"), "the outbox"), "401": _401},
    }},
    "/api/v1/chargers/{id}/calls/{action}": {"post": {
        "summary": "Send a CALL to the charger through its one-outstanding queue and return its answer",
        "operationId": "callCharger",
        "parameters": [
            _ID,
            {"name": "action", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[A-Za-z0-9]{1,64}$"},
             "description": "an OCPP action the CSMS may send in the charger's protocol version, e.g. Reset"},
            {"name": "timeout", "in": "query", "required": False,
             "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
             "description": "seconds to wait for the answer (default [websocket].call_timeout)"},
        ],
        "requestBody": {"required": False, "description": "the OCPP request payload (an empty body is {})",
                        "content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {
            "200": _json(_ref("CallResult"), "the charger's CALLRESULT payload"),
            "400": _json(_ref("Error"), "the body is not a JSON object, the payload fails the action's schema "
                                       "(ocpp_error.code names the violation), the action is unknown in the "
                                       "charger's version or one the CSMS side may not send, or timeout is out "
                                       "of range"),
            "401": _401,
            "404": _json(_ref("Error"), "no such charger, or it is not connected"),
            "502": _json(_ref("Error"), "the charger answered with a CALLERROR (in ocpp_error)"),
            "503": _json(_ref("Error"), "too many calls are already waiting for this charger (Retry-After)"),
            "504": _json(_ref("Error"), "the charger did not answer in time"),
        },
    }},
}


_GUARD = {  # adapters/api_guard.py answers these before any handler
    "421": _json(_ref("Error"), "the Host header is not an address, localhost or one of [api].allowed_hosts"),
}
_GUARD_WRITES = {
    "403": _json(_ref("Error"), "a cross-site request: the Origin header names another host"),
    "415": _json(_ref("Error"), "POST, PUT and PATCH need Content-Type: application/json"),
}


def _guarded(paths: dict[str, Any]) -> dict[str, Any]:
    for item in paths.values():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            extra = {**_GUARD, **(_GUARD_WRITES if method in ("post", "put", "patch", "delete") else {})}
            if method == "delete":
                extra.pop("415")
            for status, response in extra.items():
                responses.setdefault(status, response)
    return paths


def document(extra_paths: dict[str, Any] | None = None, extra_schemas: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "OCPP site gateway API",
            "version": __version__,
            "description": "Operations API of the site gateway: health, metrics, chargers, and calls to "
                           "chargers. JSON everywhere; errors are {error, message}. Every path except /healthz, "
                           "/readyz, / and this document needs `Authorization: Bearer <token>` (the configured "
                           "[api].token, else the one generated into data_dir/api-token; none only when "
                           "[api].token = \"\"). POST, PUT and PATCH need Content-Type: application/json.",
        },
        "servers": [{"url": "/"}],
        "security": _AUTH,
        "paths": _guarded({**copy.deepcopy(PATHS), **copy.deepcopy(extra_paths or {})}),
        "components": {
            "schemas": {**copy.deepcopy(SCHEMAS), **(extra_schemas or {})},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
