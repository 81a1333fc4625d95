"""`ocpp-gateway` (also `python -m gateway`): run, check-config."""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway import __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ocpp-gateway", description="Site gateway for EV chargers (OCPP).")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("run", "start the gateway"), ("check-config", "validate and print the effective configuration")):
        s = sub.add_parser(name, help=text)
        s.add_argument("-c", "--config", help="TOML file (default: $OCPPGW_CONFIG, else ./gateway.toml, else embedded defaults)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from gateway.config import ConfigError, load_settings, masked

    try:
        settings, source = load_settings(args.config)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        import orjson

        print(f"# configuration OK ({source or 'embedded defaults'})")
        print(orjson.dumps(masked(settings), option=orjson.OPT_INDENT_2).decode())
        return 0
    from gateway import logs
    from gateway.app import serve_forever

    logs.setup(settings.logging.level, settings.logging.format)
    try:
        import uvloop  # faster event loop where installed

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(serve_forever(settings))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
