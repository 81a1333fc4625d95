"""Reference relay: the least a charger-to-CSMS websocket relay can do.

    python -m bench.bare_relay --listen 127.0.0.1:PORT --upstream ws://127.0.0.1:P/ocpp

For every client websocket at {path}/{id} it opens one upstream websocket to
{upstream}/{id} with the subprotocol the client negotiated, then forwards every frame
untouched in both directions with two asyncio tasks. No parsing, no validation, no
state. websockets defaults on both legs (permessage-deflate on), uvloop if importable.
`/healthz` answers 200 so the bench can treat it exactly like the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from http import HTTPStatus

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from bench._common import loop_name, parse_hostport, raise_nofile, run_async

SUBPROTOCOLS = ["ocpp1.6", "ocpp2.0.1", "ocpp2.1"]


async def pump(src, dst) -> None:  # type: ignore[no-untyped-def]
    """Forward every frame from src to dst (text stays text, binary stays binary)."""
    try:
        async for message in src:
            await dst.send(message)
    except ConnectionClosed:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bare_relay", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:9701")
    ap.add_argument("--path", default="/ocpp")
    ap.add_argument("--upstream", required=True, help="base URL, e.g. ws://127.0.0.1:9700/ocpp")
    ap.add_argument("--compression", choices=["deflate", "none"], default="deflate",
                    help="permessage-deflate offered to chargers (as the gateway does) or not")
    ap.add_argument("--upstream-compression", choices=["deflate", "none"], default="none",
                    help="permessage-deflate towards the CSMS; off by default, like the gateway's "
                         "[upstream].compression, so that both relays do the same work")
    args = ap.parse_args()
    raise_nofile()
    host, port = parse_hostport(args.listen)
    prefix = args.path.rstrip("/") + "/"
    upstream = args.upstream.rstrip("/") + "/"
    compression = None if args.compression == "none" else "deflate"
    upstream_compression = None if args.upstream_compression == "none" else "deflate"

    def process_request(connection, request):  # type: ignore[no-untyped-def]
        if request.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if not request.path.startswith(prefix) or len(request.path) == len(prefix):
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        return None

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        charger_id = ws.request.path[len(prefix):]
        sub = ws.subprotocol
        try:
            up = await connect(upstream + charger_id, subprotocols=[sub] if sub else None, proxy=None,
                               compression=upstream_compression)
        except (OSError, asyncio.TimeoutError, Exception):  # noqa: BLE001 - any upstream failure
            await ws.close(1011, "upstream unavailable")
            return
        a = asyncio.create_task(pump(ws, up))
        b = asyncio.create_task(pump(up, ws))
        try:
            await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            a.cancel()
            b.cancel()
            await up.close()
            await ws.close()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        async with serve(handler, host, port, subprotocols=SUBPROTOCOLS, process_request=process_request,
                         compression=compression):
            print(f"bare_relay listening on {host}:{port} -> {upstream} ({loop_name()})", file=sys.stderr, flush=True)
            await stop

    run_async(run)


if __name__ == "__main__":
    main()
