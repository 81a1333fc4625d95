"""`ocpp-gateway` (also `python -m gateway`): run, check-config, store check|recover, hash-password;
status, call, outbox, health (through the REST API, gateway/opsclient.py).

Exit status of `run` (docs/troubleshooting.md): 0 stopped cleanly, 1 unexpected error (logged with
its traceback), 2 configuration error, 3 another gateway runs on this data_dir, 4 a charger port
cannot be bound, 5 the store is damaged. The systemd unit restarts on none of 2-5.
"""

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
    for name, text in (("status", "show every charger: connection, protocol, upstream, connectors, power, queues"),
                       ("call", "send a CALL to a charger and print its answer"),
                       ("outbox", "show what waits for the CSMS, per charger"),
                       ("health", "exit 0 when the gateway's /healthz answers (for HEALTHCHECK and monitors)"),
                       ("variables", "show a charger's variables (configuration keys / device model), or set one")):
        s = sub.add_parser(name, help=text)
        s.add_argument("-c", "--config", help="TOML file whose [api] gives the defaults of --api and --token")
        s.add_argument("--api", help="the API's URL (default: http://[api].listen)")
        s.add_argument("--token", help="bearer token (default: [api].token)")
        if name == "call":
            s.add_argument("charger", help="charger id")
            s.add_argument("action", help="OCPP action, e.g. Reset")
            s.add_argument("payload", nargs="?", default="{}", help="the request payload as JSON ('-' reads stdin)")
            s.add_argument("--timeout", type=float, help="seconds to wait for the charger (default: the gateway's)")
        elif name == "status":
            s.add_argument("charger", nargs="?", help="one charger in detail (connectors, open transactions)")
        elif name == "variables":
            s.add_argument("charger", help="charger id")
            s.add_argument("name", nargs="?", help="one variable (1.6 key, 2.x Component/Variable); without it: all")
            s.add_argument("--set", metavar="VALUE", dest="set_value", help="set NAME to VALUE on the charger")
            s.add_argument("--refresh", action="store_true", help="read the charger's variables again first")
            s.add_argument("--component", help="only this 2.x component")
            s.add_argument("--changed-since", help="only values changed since this ISO 8601 time")
        if name in ("status", "outbox", "variables"):
            s.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    s = sub.add_parser("store", help="check the store (data_dir/gateway.sqlite3), or move a damaged one aside")
    s.add_argument("action", choices=("check", "recover"),
                   help="check: full integrity check (exit 5 when damaged); recover: move it aside, start a fresh one")
    s.add_argument("-c", "--config", help="TOML file whose data_dir holds the store")
    s.add_argument("--force", action="store_true", help="recover: start a fresh store even when the check passes")
    s = sub.add_parser("hash-password", help="print the stored form of a charger password for [chargers.ID].password")
    s.add_argument("--hex", action="store_true", help="the input is a 1.6 AuthorizationKey in hex (hashes its bytes)")
    s.add_argument("--iterations", type=int, default=None, help="PBKDF2-SHA256 iterations (default 200000)")
    from simulator import add_arguments as simulate_arguments

    simulate_arguments(sub.add_parser("simulate", help="simulated chargers (1.6, 2.0.1, 2.1) for a demo or a soak"))
    return p


def _operator(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, load_settings
    from gateway.opsclient import Client, api_base, client_token, run

    base, token = args.api, args.token
    if base is None or token is None:
        try:
            settings, _ = load_settings(args.config)
        except ConfigError as exc:
            print(f"configuration error:\n{exc}", file=sys.stderr)
            return 2
        base = base or api_base(settings)
        token = token if token is not None else client_token(settings)
    return run(args.command, Client(base, token), args)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "hash-password":
        from gateway.security import hash_password_command

        return hash_password_command(args.hex, args.iterations)
    if args.command == "simulate":
        from simulator import run as simulate

        return simulate(args)
    if args.command in ("status", "call", "outbox", "health", "variables"):
        return _operator(args)
    from gateway.config import ConfigError, load_settings, masked

    try:
        settings, source = load_settings(args.config)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    if args.command == "store":
        from adapters.store_check import store_command
        from gateway.errors import StartupError

        try:
            return store_command(args.action, settings.data_dir, force=args.force)
        except StartupError as exc:  # recover while the gateway runs
            print(f"cannot recover: {exc}", file=sys.stderr)
            return exc.exit_code
    if args.command == "check-config":
        import orjson

        from gateway.security import configuration_warnings

        print(f"# configuration OK ({source or 'embedded defaults'})")
        print(orjson.dumps(masked(settings), option=orjson.OPT_INDENT_2).decode())
        for warning in configuration_warnings(settings):  # security notes, on stderr (stdout stays JSON)
            print(f"warning: {warning}", file=sys.stderr)
        return 0
    from gateway import logs
    from gateway.app import serve_forever
    from gateway.errors import StartupError

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
    except ConfigError as exc:  # found only while starting (e.g. a TLS file that cannot be read)
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return exc.exit_code
    except StartupError as exc:  # one line that says what to do; the exit code is documented
        print(f"cannot start: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
