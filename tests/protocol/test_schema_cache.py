"""The compiled-validator cache: a restart loads what an earlier start compiled, and gets the same
verdicts; a damaged, foreign or unwritable cache costs a compile, never a wrong verdict or a crash."""

from __future__ import annotations

import hashlib
import logging
import marshal
from pathlib import Path
from typing import Any, Callable

import pytest

from gateway.protocol.frames import OcppVersion
from gateway.protocol.responses import minimal_instance
from gateway.protocol.schemas import SchemaRegistry

V16, V201 = OcppVersion.V16, OcppVersion.V201


def _schemas(reg: SchemaRegistry, version: OcppVersion) -> list[tuple[str, bool, dict[str, Any]]]:
    out = []
    cat = reg.catalogue(version)
    for action in sorted(cat.actions):
        for response in (False, True):
            schema = reg.load(version, action, response)
            if schema is not None:
                out.append((action, response, schema))
    return out


def _verdicts(reg: SchemaRegistry, version: OcppVersion,
              cases: list[tuple[str, bool, dict[str, Any]]]) -> list[tuple[str, bool, str, Any]]:
    """For every schema: the verdict on a minimal valid payload, on it with an unknown property,
    on it without its required properties, and on a wrong type."""
    got = []
    for action, response, schema in cases:
        valid = minimal_instance(schema, schema, "2026-12-07T00:00:00Z")
        payloads = {"valid": valid, "extra": {**valid, "noSuchField": 1}, "wrong type": [valid]}
        if schema.get("required"):
            payloads["missing"] = {}
        for kind, payload in payloads.items():
            v = reg.validate(version, action, payload, response=response)
            got.append((action, response, kind, None if v is None else (v.code, v.description)))
    return got


def test_a_second_start_loads_what_the_first_compiled_and_judges_alike(tmp_path: Path) -> None:
    first = SchemaRegistry([V16, V201], cache_dir=tmp_path)
    n = first.warm_up()
    assert n > 100 and (first.compiled, first.from_cache) == (n, 0)
    files = list(tmp_path.glob("validators-*.bin"))
    assert len(files) == 1

    second = SchemaRegistry([V16, V201], cache_dir=tmp_path)
    assert second.warm_up() == n
    assert (second.compiled, second.from_cache) == (0, n)
    assert not second.save(), "nothing new: the file is not written again"

    for version in (V16, V201):
        cases = _schemas(first, version)
        a, b = _verdicts(first, version, cases), _verdicts(second, version, cases)
        assert a == b
        assert any(v is None for *_, v in a) and any(v is not None for *_, v in a)


def _damage(kind: str) -> Callable[[bytes], bytes]:
    def corrupt(raw: bytes) -> bytes:
        if kind == "truncated":
            return raw[: len(raw) // 2]
        if kind == "flipped byte":
            i = len(raw) - 100
            return raw[:i] + bytes([raw[i] ^ 0x40]) + raw[i + 1:]
        if kind == "empty":
            return b""
        if kind == "not code":  # a well-formed file whose content is no table of code
            body = marshal.dumps(["Heartbeat"])
            head = raw[: raw.index(b"\n") + 1]
            return head + hashlib.sha256(body).digest() + body
        return b"\x00" * 4096  # zeroed
    return corrupt


@pytest.mark.parametrize("kind", ["truncated", "flipped byte", "empty", "not code", "zeroed"])
def test_a_damaged_cache_is_compiled_anew_and_rewritten(tmp_path: Path, kind: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    SchemaRegistry([V16], cache_dir=tmp_path).warm_up()
    (path,) = tmp_path.glob("validators-*.bin")
    path.write_bytes(_damage(kind)(path.read_bytes()))

    with caplog.at_level(logging.WARNING, logger="gateway.schemas"):
        reg = SchemaRegistry([V16], cache_dir=tmp_path)
        n = reg.warm_up()
    assert (reg.compiled, reg.from_cache) == (n, 0)
    assert "is damaged" in caplog.text and str(path) in caplog.text
    bad = reg.validate(V16, "StatusNotification", {"connectorId": "one", "errorCode": "NoError", "status": "Available"})
    assert bad is not None and bad.code.spell(V16) == "TypeConstraintViolation"

    again = SchemaRegistry([V16], cache_dir=tmp_path)
    assert again.warm_up() == n and (again.compiled, again.from_cache) == (0, n)


def test_a_start_stopped_part_way_keeps_what_it_compiled(tmp_path: Path) -> None:
    calls = iter(range(10**6))
    part = SchemaRegistry([V16], cache_dir=tmp_path)
    done = part.warm_up(stop=lambda: next(calls) >= 12)
    assert done == 12 == part.compiled

    rest = SchemaRegistry([V16], cache_dir=tmp_path)
    n = rest.warm_up()
    assert (rest.from_cache, rest.compiled) == (12, n - 12)


def test_files_of_other_versions_go_and_an_unwritable_cache_changes_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stale = tmp_path / "validators-0123456789abcdef.bin"
    stale.write_bytes(b"from an earlier release")
    reg = SchemaRegistry([V16], cache_dir=tmp_path)
    reg.validator(V16, "Heartbeat", False)
    assert reg.save()
    assert not stale.exists() and len(list(tmp_path.glob("validators-*.bin"))) == 1

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="gateway.schemas"):
        blocked = SchemaRegistry([V16], cache_dir=blocker / "cache")
        assert blocked.validate(V16, "Authorize", {"idTag": "A" * 21}) is not None
        assert not blocked.save()
    assert "not written" in caplog.text
    assert blocked.validate(V16, "Authorize", {"idTag": "A" * 20}) is None
    assert not list(tmp_path.glob(".validators-*"))
