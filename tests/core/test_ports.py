"""The ports are the contract: adapters reach the core through gateway.ports (and the pure
modules), never through the concrete session or hub; only the composition root wires them."""

from __future__ import annotations

import ast
from pathlib import Path

from gateway.hub import Hub
from gateway.ports import ChargerIngress

ROOT = Path(__file__).resolve().parents[2]
CORE = {"gateway.session", "gateway.hub", "gateway.replay", "gateway.uplink", "gateway.context", "gateway.budget"}


def _imported(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (TYPE_CHECKING blocks and functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_adapters_import_the_ports_not_the_session_or_the_hub() -> None:
    files = sorted((ROOT / "adapters").rglob("*.py"))
    assert len(files) > 10
    for path in files:
        bad = {name for name in _imported(path) if name in CORE or name.split(".")[:2] == ["gateway", "session"]
               or name.split(".")[:2] == ["gateway", "hub"]}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: adapters use gateway.ports"


def test_the_check_reads_imports_at_any_depth(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gateway.hub import Hub\n"
                 "def f():\n    import gateway.session\n")
    assert {"gateway.hub", "gateway.session"} <= _imported(f)


def test_the_hub_is_a_charger_ingress() -> None:
    """Every member of the port exists on the hub (mypy checks the signatures where app.py wires it)."""
    members = [n for n in vars(ChargerIngress) if not n.startswith("_")]
    assert set(members) >= {"admits", "is_known", "needs_upstream_first", "dial", "attach", "detach", "charger_count"}
    for name in members:
        assert hasattr(Hub, name) or name == "schemas", name  # schemas: an attribute set in __init__
    assert "schemas" in Hub.__init__.__code__.co_names
