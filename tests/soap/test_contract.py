"""The generated OCPP-S contract matches the official WSDLs element for element.

The official WSDLs are read from `../shared/ocpp-wsdl/` (never copied into the project); the
project's own contract is generated from the `ocpp` package's JSON schemas plus its tables."""

from __future__ import annotations

import io
from typing import Any

import pytest
import zeep
from lxml import etree

from adapters.soap import contract as C
from tests.soap import official

XS = "{http://www.w3.org/2001/XMLSchema}"


def _shape(t: Any) -> list[Any]:
    """Element names, order and occurrences (and attributes) of a zeep type, recursively."""
    out = []
    for name, el in getattr(t, "elements", []):
        sub = _shape(el.type) if getattr(el.type, "elements", None) else []
        attrs = sorted(n for n, _ in getattr(el.type, "attributes", []) or [])
        out.append((name, el.min_occurs, el.max_occurs, sub, attrs))
    return out


def _enums(wsdl: bytes) -> set[tuple[str, ...]]:
    root = etree.fromstring(wsdl)
    out = set()
    for st in root.iter(XS + "simpleType"):
        values = tuple(sorted(e.get("value") for e in st.iter(XS + "enumeration")))
        if values:
            out.add(values)
    return out


@pytest.mark.parametrize("role,version", sorted(official.FILES))
def test_generated_contract_has_the_official_shape(role: str, version: str) -> None:
    ours = C.contract(role, version)
    mine = zeep.Client(io.BytesIO(ours.wsdl()))
    theirs = official.client(role, version)
    b_mine = mine.wsdl.bindings[ours.binding]
    b_theirs = theirs.wsdl.bindings[ours.binding]
    assert sorted(b_mine._operations) == sorted(b_theirs._operations)
    for name, op in b_theirs._operations.items():
        mop = b_mine._operations[name]
        assert mop.soapaction == op.soapaction == f"/{name}"
        for part in ("input", "output"):
            a, b = getattr(mop, part).body, getattr(op, part).body
            assert a.qname == b.qname, (name, part)
            assert _shape(a.type) == _shape(b.type), (name, part)


@pytest.mark.parametrize("role,version", sorted(official.FILES))
def test_every_enumeration_value_set_of_the_official_contract_is_ours(role: str, version: str) -> None:
    ours = _enums(C.contract(role, version).wsdl())
    theirs = _enums(official.path(role, version).read_bytes())
    # The JSON schemas add a few values the 1.6 WSDL lacks (e.g. the unit "Celcius"): ours may be wider.
    for values in theirs:
        assert any(set(values) <= set(mine) for mine in ours), values


def test_the_contract_copies_no_official_text() -> None:
    """The project ships no WSDL/XSD file and no licence notice of the official ones."""
    from tests.harness import REPO

    for p in list(REPO.glob("adapters/**/*")) + list(REPO.glob("gateway/**/*")):
        if p.is_file():
            assert p.suffix.lower() not in (".wsdl", ".xsd"), p
            if p.suffix == ".py":
                text = p.read_text(encoding="utf-8")
                assert "Open Charge Alliance" not in text and "e-laad" not in text, p
