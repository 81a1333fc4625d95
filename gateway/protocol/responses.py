"""Answers the gateway gives when it is the CSMS (standalone, or later while the cloud is away).

`minimal_response()` builds the smallest schema-conformant response payload for any action from
its response schema: required fields only, enums answered with the most conservative value the
schema allows (Rejected, Failed, NotSupported, ... before Accepted), date-times set to `now`.
The local CSMS overrides the answers that carry meaning (BootNotification, Authorize, transactions).
"""

from __future__ import annotations

from typing import Any

# The first of these that an enum allows is chosen: the local CSMS never claims to have done
# something it did not do.
_CONSERVATIVE = ("NotSupported", "UnknownVendorId", "Rejected", "Failed", "Unknown", "NotImplemented",
                 "Invalid", "NoProfiles", "Idle", "Accepted")


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"non-local $ref {ref!r}")
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        schema = node
    return schema


def minimal_instance(schema: dict[str, Any], root: dict[str, Any], now_iso: str) -> Any:
    schema = _resolve(schema, root)
    if "enum" in schema:
        values = schema["enum"]
        for choice in _CONSERVATIVE:
            if choice in values:
                return choice
        return values[0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties", {})
        return {name: minimal_instance(props[name], root, now_iso) for name in schema.get("required", [])}
    if kind == "array":
        n = int(schema.get("minItems", 0))
        return [minimal_instance(schema.get("items", {}), root, now_iso) for _ in range(n)]
    if kind == "string":
        if schema.get("format") == "date-time":
            return now_iso
        return "x" * int(schema.get("minLength", 0))
    if kind == "integer":
        return int(schema.get("minimum", 0))
    if kind == "number":
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    return None


def minimal_response(response_schema: dict[str, Any], now_iso: str) -> dict[str, Any]:
    value = minimal_instance(response_schema, response_schema, now_iso)
    return value if isinstance(value, dict) else {}
