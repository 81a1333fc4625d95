"""A quick yes for conforming payloads: each schema also compiled into a compact accept test.

fastjsonschema's validator is the reference: it decides, and its exception names the rule a
payload breaks (the OCPP-J error code comes from it). Its code is long, though: every check carries
its error message, the schema fragment it came from and the value's path inline, and each object
is walked by copying its keys into a set. On the relay path nearly every payload conforms, and on
a gateway with many chargers that long code is out of the CPU's caches by the next message.

`accept_source(schema)` writes a second, compact function for the same schema that only answers
"conforms" (True) or "not sure" (False), walking each object once by its own items. The rule the
two are used by (gateway/protocol/schemas.py): when the quick test says True the payload conforms;
otherwise the reference validator runs and raises what it finds (or passes the payload). So the
quick test may be stricter than the schema (an integer as 5.0, a tuple for an array, a dict
subclass: all "not sure"), never looser; tests/protocol/test_quickcheck.py checks that on every
schema of every version with generated payloads, conforming and broken.

Keywords it knows: type (one name), properties, required, additionalProperties (false or absent),
items (one schema), minItems, maxItems, maxLength, minimum, maximum, enum (of strings), format
date-time (with the reference's own pattern, looked up in the same namespace), $ref to the
schema's definitions; annotations are ignored. A schema with any other keyword gets no quick test
(None): the reference validates it alone.
"""

from __future__ import annotations

from typing import Any, Callable

from gateway.errors import GatewayError

# keywords that say nothing about validity
_ANNOTATIONS = frozenset({"$schema", "$id", "id", "title", "description", "comment", "$comment", "javaType",
                          "default", "definitions", "tsEnumNames", "examples"})
_KNOWN = frozenset({"type", "properties", "required", "additionalProperties", "items", "additionalItems",
                    "minItems", "maxItems", "maxLength", "minimum", "maximum", "enum", "format", "$ref"})
# the reference's compiled pattern for format date-time (fastjsonschema's global state code)
DATE_TIME = 'REGEX_PATTERNS["date-time_re_pattern"].match'


class _Unsupported(GatewayError):
    """The schema uses something the quick test does not know: no quick test for it."""


class _Writer:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.lines: list[str] = []
        self.consts: list[str] = []
        self.functions: dict[int, str] = {}  # id of an object or array node -> its function's name
        self.uses_date_time = False

    def const(self, literal: str) -> str:
        self.consts.append(literal)
        return f"_QC{len(self.consts) - 1}"

    def resolve(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#/"):
            raise _Unsupported(f"$ref {ref}")
        node: Any = self.root
        for part in ref[2:].split("/"):
            if not isinstance(node, dict) or part not in node:
                raise _Unsupported(f"$ref {ref}")
            node = node[part]
        if not isinstance(node, dict):
            raise _Unsupported(f"$ref {ref}")
        return node

    def check(self, node: Any, var: str) -> str:
        """An expression that is True when `var` conforms to `node` (False: not sure)."""
        if not isinstance(node, dict):
            raise _Unsupported("boolean schema")
        unknown = set(node) - _KNOWN - _ANNOTATIONS
        if unknown:
            raise _Unsupported(", ".join(sorted(unknown)))
        parts: list[str] = []
        if "$ref" in node:  # the target's check, inline (an object's or array's is a function of its own)
            parts.append(self.check(self.resolve(node["$ref"]), var))
        kind = node.get("type")
        if kind is None:
            if set(node) & (_KNOWN - {"$ref"}):
                raise _Unsupported("keywords without a type")
        elif kind == "object":
            parts.append(self.function(node, self._object) + f"({var})")
        elif kind == "array":
            parts.append(self.function(node, self._array) + f"({var})")
        elif kind == "string":
            parts.append(f"type({var}) is str")
            if "maxLength" in node:
                parts.append(f"len({var}) <= {int(node['maxLength'])}")
            if "enum" in node:
                values = node["enum"]
                if not values or not all(type(v) is str for v in values):
                    raise _Unsupported("enum of other than strings")
                parts.append(f"{var} in " + self.const("frozenset(" + repr(sorted(set(values))) + ")"))
            if "format" in node:
                if node["format"] != "date-time":
                    raise _Unsupported(f"format {node['format']}")
                self.uses_date_time = True
                parts.append(f"_QC_DT({var}) is not None")
        elif kind in ("integer", "number"):
            parts.append(f"type({var}) is int" if kind == "integer" else f"(type({var}) is int or type({var}) is float)")
            for key, op in (("minimum", ">="), ("maximum", "<=")):
                if key in node:
                    bound = node[key]
                    if type(bound) not in (int, float):
                        raise _Unsupported(f"{key} {bound!r}")
                    parts.append(f"{var} {op} {bound!r}")
        elif kind == "boolean":
            parts.append(f"type({var}) is bool")
        else:
            raise _Unsupported(f"type {kind!r}")
        if kind != "string" and ("enum" in node or "format" in node or "maxLength" in node):
            raise _Unsupported("string keywords on another type")
        if kind not in ("integer", "number") and ("minimum" in node or "maximum" in node):
            raise _Unsupported("number keywords on another type")
        return " and ".join(f"({p})" for p in parts) if parts else "True"

    def function(self, node: dict[str, Any], write: Callable[[dict[str, Any]], list[str]]) -> str:
        """The name of a function `(value) -> bool` for an object or array node (written once per
        node: a definition used in many places is one function; its name is taken before its body
        is written, so a schema that refers to itself ends)."""
        name = self.functions.get(id(node))
        if name is not None:
            return name
        name = self.functions[id(node)] = f"_qc{len(self.functions)}"
        self.lines += [f"def {name}(v):", *write(node), ""]
        return name

    def _object(self, node: dict[str, Any]) -> list[str]:
        props = node.get("properties") or {}
        closed = node.get("additionalProperties", True)
        if closed not in (True, False) or not isinstance(props, dict):
            raise _Unsupported("additionalProperties other than false")
        body = ["    if type(v) is not dict:", "        return False"]
        required = node.get("required") or []
        if len(set(required)) <= 4:  # a few `in` tests cost less than a set comparison
            for key in sorted(set(required)):
                body += [f"    if {key!r} not in v:", "        return False"]
        else:
            body += [f"    if not {self.const('frozenset(' + repr(sorted(set(required))) + ')')} <= v.keys():",
                     "        return False"]
        if props or closed is False:
            body.append("    for k, x in v.items():")
            first = True
            for prop, sub in props.items():
                body += [f"        {'if' if first else 'elif'} k == {prop!r}:",
                         f"            if not ({self.check(sub, 'x')}):",
                         "                return False"]
                first = False
            if closed is False:
                body += ["        else:" if not first else "        if True:", "            return False"]
        body.append("    return True")
        return body

    def _array(self, node: dict[str, Any]) -> list[str]:
        items = node.get("items")
        body = ["    if type(v) is not list:", "        return False"]
        if "minItems" in node:
            body += [f"    if len(v) < {int(node['minItems'])}:", "        return False"]
        if "maxItems" in node:
            body += [f"    if len(v) > {int(node['maxItems'])}:", "        return False"]
        if items is not None:
            if not isinstance(items, dict):
                raise _Unsupported("items other than one schema")
            body += ["    for x in v:", f"        if not ({self.check(items, 'x')}):", "            return False"]
        body.append("    return True")
        return body


def accept_source(schema: dict[str, Any], name: str = "accept") -> str | None:
    """Python source defining `name(payload) -> bool` (True: conforms to `schema`; False: not sure),
    meant to run in the namespace of fastjsonschema's code for the same schema (it uses that code's
    date-time pattern). None when the schema uses what the quick test does not know."""
    writer = _Writer(schema)
    try:
        top = writer.check(schema, "v")
    except (_Unsupported, RecursionError, TypeError, ValueError):
        return None
    out = [f"_QC{i} = {literal}" for i, literal in enumerate(writer.consts)]
    if writer.uses_date_time:
        out.append(f"_QC_DT = {DATE_TIME}")
    out += ["", *writer.lines]
    if top.startswith("(_qc") and top.endswith("(v))") and top.count("(") == 2:  # one function: that one
        out += [f"{name} = {top[1:-4]}", ""]
    else:
        out += [f"def {name}(v):", f"    return {top}", ""]
    return "\n".join(out)
