"""gateway/protocol is sans-I/O, and gateway/ (but for the composition root) imports no transport."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IO_MODULES = {"asyncio", "socket", "ssl", "selectors", "time", "aiohttp", "websockets", "paho", "zeep",
              "influxdb_client", "sqlite3", "uvloop", "http", "urllib3", "requests", "threading_io"}
TRANSPORTS = {"aiohttp", "websockets", "paho", "zeep", "influxdb_client", "sqlite3", "adapters"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_protocol_package_does_no_io() -> None:
    files = sorted((ROOT / "gateway" / "protocol").rglob("*.py"))
    assert files
    for path in files:
        bad = _imports(path) & IO_MODULES
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}: gateway/protocol must stay sans-I/O"


CLOCKS = {"time", "datetime", "random", "secrets"}


def test_protocol_package_reads_no_clock() -> None:
    """The relay's decisions (relay.py, txmap.py) and the rest of the package take `now` from the
    driver: no clock, no randomness, so the same events always give the same effects."""
    files = sorted((ROOT / "gateway" / "protocol").rglob("*.py"))
    assert {"relay.py", "txmap.py", "rpc.py"} <= {p.name for p in files}
    for path in files:
        bad = _imports(path) & CLOCKS
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}: gateway/protocol takes time from its caller"


def test_variables_package_does_no_io() -> None:
    """gateway/variables (the mirror's names, parsing, report assembly, meaning) is sans-I/O too."""
    files = sorted((ROOT / "gateway" / "variables").rglob("*.py"))
    assert files
    for path in files:
        bad = _imports(path) & IO_MODULES
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}: gateway/variables must stay sans-I/O"


def test_core_imports_no_transport_library() -> None:
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        if path.name in {"app.py", "cli.py"}:  # the composition root builds the adapters
            continue
        bad = _imports(path) & TRANSPORTS
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}: the core talks to adapters through ports"


def test_the_check_catches_an_import(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("import asyncio\nfrom websockets.asyncio import client\n")
    assert {"asyncio", "websockets"} <= _imports(f)


# Modules outside gateway/protocol whose docstrings promise pure code: they turn data into data and
# are tested without a socket. A monotonic clock read (the MQTT encoder thins retained topics by
# time) is not I/O; gateway/protocol keeps its stricter no-clock rule above.
PURE_MODULES = [
    "gateway/control/decide.py",
    "gateway/telemetry/normalise.py",
    "gateway/telemetry/units.py",
    "gateway/telemetry/records.py",
    "gateway/telemetry/vendors.py",
    "gateway/identity.py",
    "adapters/mqtt/topics.py",
    "adapters/mqtt/discovery.py",
    "adapters/mqtt/variables.py",
    "adapters/deflate.py",
]


def test_pure_modules_outside_the_protocol_package_do_no_io() -> None:
    no_io = IO_MODULES - {"time"}
    for name in PURE_MODULES:
        path = ROOT / name
        bad = _imports(path) & no_io
        assert not bad, f"{name} imports {bad}: it promises pure code (data in, data out)"
