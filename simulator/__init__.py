"""`ocpp-gateway simulate`: chargers for a demo or a soak, built on the `ocpp` package.

N chargers of the chosen OCPP versions connect to a gateway (or any CSMS), boot, report their
status, and run transactions one after another: Authorize, start, meter values (energy, power,
current, voltage, SoC, temperature) at `--rate` per second, an environment report (temperature and
humidity: 1.6 through the `gateway.environment` DataTransfer, 2.x through NotifyEvent), stop.
They answer what a CSMS (or the gateway's local control) sends: Reset (the charger ends its
transaction, disconnects and boots again), RemoteStart/StopTransaction and
RequestStart/StopTransaction (a transaction starts or ends), TriggerMessage (the triggered message
is sent), GetConfiguration / ChangeConfiguration, GetVariables / SetVariables, ChangeAvailability,
UnlockConnector, DataTransfer, and Set/ClearChargingProfile (the simulated power follows the limit
in force; a limit of 0 suspends charging). A connection that drops is dialled again.

At the end (after `--duration` seconds, or Ctrl-C) it prints per action how many messages were
sent and answered, and how many got an error (a CALLERROR, no answer in time, or a lost link); the
same with `--json` as one JSON document on stdout. Exit status: 0 when every charger booted, 1 when
some never did, 2 for bad arguments.

A package of its own beside the gateway (it uses nothing of it), so it can drive any OCPP-J server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from typing import Any

SUBPROTOCOL = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1", "2.1": "ocpp2.1"}


# --------------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="ws://127.0.0.1:9000/ocpp",
                   help="the gateway's charger URL without the id (default ws://127.0.0.1:9000/ocpp)")
    p.add_argument("--chargers", type=int, default=5, help="how many chargers (default 5)")
    p.add_argument("--versions", default="1.6,2.0.1",
                   help="OCPP versions, comma-separated, assigned in turn (default 1.6,2.0.1; also 2.1)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds to run; 0 = until Ctrl-C (default 60)")
    p.add_argument("--rate", type=float, default=0.2,
                   help="meter values per second per charging charger (default 0.2: one every 5 s)")
    p.add_argument("--prefix", default="SIM", help="charger ids are PREFIX0001, PREFIX0002, ... (default SIM)")
    p.add_argument("--password", default="", help="HTTP Basic password for security profile 1 (user = charger id)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--connect-rate", type=float, default=50.0, help="new connections per second at start (default 50)")
    p.add_argument("--session", type=float, default=60.0,
                   help="mean length of a transaction in seconds (half to one and a half times it; default 60)")
    p.add_argument("--id-tag", default="", help="the id tag every charger presents (default: random SIMnnnn tags)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="log every failed call")


def _options(args: argparse.Namespace) -> Any:
    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    unknown = [v for v in versions if v not in SUBPROTOCOL]
    if not versions or unknown:
        return f"--versions: {', '.join(unknown) or '(none)'} not one of {', '.join(SUBPROTOCOL)}"
    if args.chargers < 1:
        return "--chargers: at least 1"
    if args.rate <= 0:
        return "--rate: must be above 0"
    if args.session <= 0:
        return "--session: must be above 0"
    if args.duration < 0:
        return "--duration: 0 or more"
    if not args.url.startswith(("ws://", "wss://")):
        return "--url: a ws:// or wss:// URL"
    from simulator.chargers import Options

    return Options(url=args.url, chargers=args.chargers, versions=versions, duration=args.duration,
                   rate=args.rate, prefix=args.prefix, password=args.password, seed=args.seed,
                   connect_rate=args.connect_rate, id_tag=args.id_tag, session=args.session)


def run(args: argparse.Namespace) -> int:
    from simulator.chargers import format_summary, simulate

    opts = _options(args)
    if isinstance(opts, str):
        print(f"ocpp-gateway simulate: {opts}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ocpp").setLevel(logging.CRITICAL)  # it logs every frame at INFO and handler errors
    logging.getLogger("websockets").setLevel(logging.CRITICAL)

    async def main() -> dict[str, Any]:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stopping.set)
        if not args.json:
            print(f"{opts.chargers} chargers ({', '.join(opts.versions)}) -> {opts.url}, "
                  f"{'until Ctrl-C' if opts.duration == 0 else f'{opts.duration:g} s'}", flush=True)
        return await simulate(opts, stopping)

    t0 = time.monotonic()
    summary = asyncio.run(main())
    summary["elapsed_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary), flush=True)
    return 0 if summary["booted"] == summary["chargers"] else 1
