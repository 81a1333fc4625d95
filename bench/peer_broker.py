"""The peer: `ocpp-broker` 0.4 (PyPI) in its relay mode, as the Python relay a user would pick instead.

    python -m bench.peer_broker --listen 127.0.0.1:PORT --upstream ws://127.0.0.1:P/ocpp --dir DIR

Runs under the Python of the peer's own venv (`ensure_venv()` makes it once under
bench/results/peer-venv/ with `pip install ocpp-broker==0.4` and reuses it); this module imports
nothing outside the standard library at module level, so the bench's driver can import it too.

How ocpp-broker relays (read from its installed package, version 0.4): its console script
`ocpp-broker-server -c config.yaml` serves a FastAPI app under uvicorn (`loop="asyncio"`); chargers
connect at `/{organization}/{charger_id}` and must offer the organization's `ocpp_subprotocol`.
An organization with `connect_to_backend: true` and a `backends` list relays: per charger one
websockets client to `{backend url}/{charger_id}` (the leader backend), every charger frame read
as text, `json.loads`-ed for a log line and sent on; every backend frame passed back to the
charger. `validate_messages_when_backend_leader: false` (its default) leaves validation off; tag
management off stores nothing. `GET /health` answers 200.

What this launcher changes, and only this: the organization is named after the bench's path
(`ocpp`, so chargers use /ocpp/{id} as with every other relay), and logging is at WARNING (the
package's server module sets the root logger to INFO when imported and starts uvicorn with
log_level "info"; here both are WARNING). The broker object, its config loader, the FastAPI app
and uvicorn's settings are otherwise those of `ocpp-broker-server`, event loop included
(`--loop uvloop` to compare, only if uvloop is installed in the peer venv).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

PACKAGE = "ocpp-broker==0.4"
VENV = Path(__file__).resolve().parent / "results" / "peer-venv"


def venv_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path = VENV, log: Callable[[str], None] | None = None) -> dict[str, object]:
    """Make (once) and check the peer's venv; returns what is installed there ({name: version}).
    Raises RuntimeError with the reason when it cannot (e.g. no package index reachable)."""
    py = venv_python(venv)
    check = [str(py), "-c", "import ocpp_broker.server, uvicorn"]
    if not py.exists() or subprocess.run(check, capture_output=True).returncode != 0:
        if log is not None:
            log(f"creating the peer's venv ({PACKAGE}) under bench/results/peer-venv (once)")
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        r = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", PACKAGE],
                           capture_output=True, text=True)
        if r.returncode != 0 or subprocess.run(check, capture_output=True).returncode != 0:
            raise RuntimeError(f"could not install {PACKAGE} into {venv.name}: {(r.stderr or r.stdout)[-1500:]}")
    r = subprocess.run([str(py), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                       capture_output=True, text=True)
    try:
        return {p["name"]: p["version"] for p in json.loads(r.stdout)}
    except (ValueError, KeyError, TypeError):
        return {}


def broker_config(host: str, port: int, org: str, upstream: str) -> dict[str, object]:
    """ocpp-broker's YAML config (written as JSON, which YAML reads) for relay mode."""
    return {
        "broker": {"host": host, "port": port, "enable_validation": False, "enable_tag_management": False},
        "logging": {"level": "WARNING", "ocpp_commands": False, "tag_management": False},
        "organizations": [{
            "name": org,
            "connect_to_backend": True,
            "ocpp_subprotocol": "ocpp1.6",
            "backends": [{"id": "csms", "url": upstream.rstrip("/"), "leader": True}],
            "validate_messages_when_backend_leader": False,
            "tag_management": {"enabled": False},
        }],
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.peer_broker", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:9703")
    ap.add_argument("--path", default="/ocpp", help="chargers connect at {path}/{id}: the organization's name")
    ap.add_argument("--upstream", required=True, help="base URL, e.g. ws://127.0.0.1:9700/ocpp")
    ap.add_argument("--dir", required=True, help="where to write the broker's config file")
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio",
                    help="uvicorn's event loop; ocpp-broker-server uses asyncio")
    args = ap.parse_args()
    host, _, port_text = args.listen.rpartition(":")
    port = int(port_text)
    org = args.path.strip("/")
    if not org or "/" in org:
        ap.error("--path must be one segment, e.g. /ocpp (ocpp-broker serves /{organization}/{charger_id})")
    cfg_path = Path(args.dir) / "ocpp-broker.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(json.dumps(broker_config(host, port, org, args.upstream), indent=2) + "\n")

    import asyncio
    import logging
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    import uvicorn  # type: ignore[import-not-found]  # only in the peer's venv
    from ocpp_broker import server  # type: ignore[import-not-found]  # only in the peer's venv; sets the root logger to INFO
    from ocpp_broker.broker import OcppBroker  # type: ignore[import-not-found]  # only in the peer's venv

    logging.getLogger().setLevel(logging.WARNING)
    cfg = server.load_broker_config(str(cfg_path))

    async def serve() -> None:
        # what server.main_async does, with uvicorn's log level at WARNING
        server.broker = OcppBroker()
        server.broker._cfg_path = cfg.get("_path", str(cfg_path))
        await server.broker.load_config()
        config = uvicorn.Config(server.app, host=host, port=port, log_level="warning", loop=args.loop)
        print(f"peer_broker (ocpp-broker) listening on {host}:{port} -> {args.upstream} (pid {os.getpid()})",
              file=sys.stderr, flush=True)
        await uvicorn.Server(config).serve()

    if args.loop == "uvloop":
        import uvloop  # optional: only if installed in the peer's venv

        uvloop.run(serve())
    else:
        asyncio.run(serve())


if __name__ == "__main__":
    main()
