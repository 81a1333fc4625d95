"""One exception tree: every exception class the project defines descends from GatewayError, the
tree in gateway/errors.py's docstring names every one of them, causes are kept (`from exc`), and
every background task the project starts is kept by reference."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import adapters
import gateway
from gateway import errors

ROOT = Path(__file__).resolve().parents[2]



def _modules() -> list[str]:
    names = []
    for package in (gateway, adapters):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            names.append(info.name)
    return names


def _project_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _modules():
        if name in ("gateway.__main__",):
            continue
        module = importlib.import_module(name)
        for value in vars(module).values():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == name:
                found[f"{name}.{value.__qualname__}"] = value
    return found


def test_every_exception_descends_from_gateway_error() -> None:
    found = _project_exceptions()

    outside = sorted(name for name, cls in found.items() if not issubclass(cls, errors.GatewayError))

    assert len(found) >= 20, sorted(found)  # the scan sees the tree
    assert outside == []


def test_the_docstring_draws_every_exception() -> None:
    doc = errors.__doc__ or ""
    drawn = set(re.findall(r"[├└]── (\w+)", doc)) | {"GatewayError"}

    public = {cls.__name__ for cls in _project_exceptions().values() if not cls.__name__.startswith("_")}
    missing = sorted(public - drawn)  # a module's private helper (`_Refused`) need not be drawn, only descend

    assert missing == []


def test_errors_module_imports_nothing() -> None:
    """gateway/protocol (sans-I/O) raises from gateway.errors: it must stay import-free."""
    tree = ast.parse((ROOT / "gateway" / "errors.py").read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]

    assert [ast.unparse(n) for n in imports] == ["from __future__ import annotations"]


def test_exit_codes_are_distinct() -> None:
    codes = [errors.EXIT_OK, errors.EXIT_UNEXPECTED, errors.EXIT_CONFIG, errors.EXIT_ALREADY_RUNNING,
             errors.EXIT_LISTENER, errors.EXIT_STORE_DAMAGED]

    assert len(set(codes)) == len(codes)
    assert errors.ConfigError.exit_code == 2
    assert errors.AlreadyRunning.exit_code == 3
    assert errors.ListenerUnavailable.exit_code == 4
    assert errors.StoreDamaged.exit_code == 5


def _sources() -> list[Path]:
    files = sorted([*(ROOT / "gateway").rglob("*.py"), *(ROOT / "adapters").rglob("*.py")])
    return files


def test_no_cause_is_dropped() -> None:
    """`raise X from None` hides what went wrong; the cause is kept and the CLI prints the message."""
    offenders = [f"{f.relative_to(ROOT)}:{n}" for f in _sources()
                 for n, line in enumerate(f.read_text().splitlines(), 1) if re.search(r"\bfrom None\b", line)]

    assert offenders == []


def _unkept_tasks(source: str) -> list[int]:
    """Lines where create_task/ensure_future is called and its result thrown away."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            func = node.value.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("create_task", "ensure_future"):
                lines.append(node.lineno)
    return lines


def test_the_task_check_catches_a_dropped_task() -> None:
    assert _unkept_tasks("import asyncio\nasyncio.create_task(f())\nt = asyncio.ensure_future(g())\n") == [2]


def test_every_task_is_kept_by_reference() -> None:
    offenders = [f"{f.relative_to(ROOT)}:{n}" for f in _sources() for n in _unkept_tasks(f.read_text())]

    assert offenders == []


@pytest.mark.parametrize("name", ["ConfigError"])
def test_old_import_paths_still_work(name: str) -> None:
    from gateway import config

    assert getattr(config, name) is getattr(errors, name)
