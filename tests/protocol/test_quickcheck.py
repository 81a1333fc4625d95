"""The quick accept test (gateway/protocol/quickcheck.py) against the reference validator, on every
schema of every version the `ocpp` package ships: generated conforming payloads must get the quick
yes (else the relay path would not be the fast one), and no payload, conforming or broken in any
of the ways a charger breaks them, may get a quick yes the reference refuses."""

from __future__ import annotations

import copy
import json
import random
from importlib import resources
from typing import Any

import fastjsonschema
import pytest

from gateway.protocol.frames import OcppVersion
from gateway.protocol.quickcheck import accept_source
from gateway.protocol.schemas import SchemaRegistry

_DIRS = {OcppVersion.V16: "v16", OcppVersion.V201: "v201", OcppVersion.V21: "v21"}
VALID_PER_SCHEMA = 4
BROKEN_PER_VALID = 12


def _schemas() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for version, folder in _DIRS.items():
        for path in sorted(resources.files("ocpp").joinpath(folder, "schemas").iterdir(), key=lambda p: p.name):
            if path.name.endswith(".json"):
                schema = json.loads(path.read_text(encoding="utf-8-sig"))
                schema.pop("$id", None)  # as the registry loads them (SchemaRegistry.load)
                out.append((f"{version.value}/{path.name}", schema))
    return out


SCHEMAS = _schemas()


def _compiled(schema: dict[str, Any]) -> tuple[Any, Any]:
    """(reference validate, quick accept or None), from one namespace as the registry makes them."""
    source = fastjsonschema.compile_to_code(schema, use_default=False)
    quick = accept_source(schema, "accept")
    namespace: dict[str, Any] = {}
    exec(source + "\n" + (quick or ""), namespace)  # noqa: S102 - generated validators under test
    return namespace["validate"], namespace.get("accept")


class _Maker:
    """Conforming instances of a schema, drawn at random."""

    def __init__(self, root: dict[str, Any], rng: random.Random) -> None:
        self.root, self.rng = root, rng

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self.root
            for part in node["$ref"][2:].split("/"):
                target = target[part]
            node = target
        return node

    def make(self, node: dict[str, Any], depth: int = 0) -> Any:
        node = self.resolve(node)
        rng = self.rng
        kind = node.get("type")
        if "enum" in node:
            return rng.choice(node["enum"])
        if kind == "object":
            props = node.get("properties") or {}
            out = {}
            for key, sub in props.items():
                if key in (node.get("required") or ()) or (depth < 4 and rng.random() < 0.5):
                    out[key] = self.make(sub, depth + 1)
            return out
        if kind == "array":
            low = node.get("minItems", 0)
            high = min(node.get("maxItems", low + 2), low + 2)
            return [self.make(node["items"], depth + 1) for _ in range(rng.randint(low, max(low, high)))]
        if kind == "string":
            if node.get("format") == "date-time":
                return rng.choice(["2026-01-01T00:00:00Z", "2026-12-07T05:30:01.123+01:00", "2024-02-29T23:59:59Z"])
            if node.get("format") == "uri":
                return "https://example.invalid/x"
            size = min(node.get("maxLength", 12), rng.choice([0, 1, 5, 12, 40]))
            return "x" * size
        if kind in ("integer", "number"):
            low, high = node.get("minimum", -5), node.get("maximum", 1000)
            value: Any = rng.randint(int(low) if low == int(low) else int(low) + 1, int(high))
            if kind == "number" and "multipleOf" not in node and rng.random() < 0.5:
                value = min(float(high), value + 0.5) if value + 0.5 <= high else float(value)
            return value
        if kind == "boolean":
            return rng.random() < 0.5
        return "anything"


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [at]
    if isinstance(value, dict):
        for key, sub in value.items():
            out += _paths(sub, (*at, key))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            out += _paths(sub, (*at, i))
    return out


# what chargers (and fuzzers) put where a schema wants something else
_WRONG: list[Any] = [None, True, False, 0, 1, -1, 5.0, 2.5, 10**12, "", "x" * 2000, "Unknown.Value", [], [1], {},
                     {"unexpected": 1}, "2026-13-01T00:00:00Z", "yesterday", "1"]


def _broken(valid: Any, rng: random.Random) -> Any:
    """`valid` with one thing wrong (or, by chance, still right: the reference decides)."""
    bad = copy.deepcopy(valid)
    paths = _paths(bad)
    path = rng.choice(paths)
    if not path:
        return rng.choice(_WRONG)
    parent: Any = bad
    for step in path[:-1]:
        parent = parent[step]
    key = path[-1]
    what = rng.random()
    if what < 0.15 and isinstance(parent, dict):
        del parent[key]
    elif what < 0.25 and isinstance(parent, dict):
        parent[key + "X" if isinstance(key, str) else "X"] = parent[key]
    elif what < 0.3 and isinstance(parent, list):
        parent.clear()
    elif what < 0.35 and isinstance(parent, list):
        parent.extend([parent[0]] * 20)
    else:
        parent[key] = rng.choice(_WRONG)
    return bad


@pytest.mark.parametrize("name,schema", SCHEMAS, ids=[n for n, _ in SCHEMAS])
def test_the_quick_yes_is_never_looser_than_the_reference(name: str, schema: dict[str, Any]) -> None:
    reference, accept = _compiled(schema)
    if accept is None:
        pytest.skip("no quick test for this schema (it uses a keyword the quick test does not know)")
    rng = random.Random(name)
    maker = _Maker(schema, rng)
    for _ in range(VALID_PER_SCHEMA):
        valid = maker.make(schema)
        reference(valid)  # the generator's own check: it makes conforming payloads
        assert accept(valid) is True, (name, valid)
        for _ in range(BROKEN_PER_VALID):
            payload = _broken(valid, rng)
            if accept(payload):
                reference(payload)  # raises (and fails the test) when the quick yes was wrong


def test_every_action_a_charger_sends_has_a_quick_test() -> None:
    """The relay path validates charger CALLs: every one of them must have the fast way in."""
    registry = SchemaRegistry()
    for version in OcppVersion:
        catalogue = registry.catalogue(version)
        for action in sorted(catalogue.charger_actions):
            schema = registry.load(version, action, False)
            assert schema is not None and accept_source(schema) is not None, (version, action)


def test_the_registry_uses_the_quick_test_and_reports_the_reference_violation() -> None:
    """A conforming MeterValues passes; a broken one is refused with the reference's rule and code."""
    registry = SchemaRegistry([OcppVersion.V16])
    good = {"connectorId": 1, "meterValue": [{"timestamp": "2026-01-01T00:00:00Z",
                                               "sampledValue": [{"value": "1", "measurand": "Power.Active.Import"}]}]}
    assert registry.validate(OcppVersion.V16, "MeterValues", good) is None
    check = registry.validator(OcppVersion.V16, "MeterValues", False)
    assert check is not None and check.__name__ == "check"  # the quick test in front of the reference
    bad = copy.deepcopy(good)
    bad["meterValue"][0]["sampledValue"][0]["measurand"] = "Power.Imaginary"
    found = registry.validate(OcppVersion.V16, "MeterValues", bad)
    assert found is not None and found.code.value == "PropertyConstraintViolation"
    as_float = copy.deepcopy(good)
    as_float["connectorId"] = 1.0  # the quick test is not sure; the draft-04 reference refuses a float
    found = registry.validate(OcppVersion.V16, "MeterValues", as_float)
    assert found is not None and found.code.value == "TypeConstraintViolation"
