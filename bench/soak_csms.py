"""The CSMS of the soak run: the `ocpp` package's ChargePoint (the test CSMS of tests/e2e/peers.py,
without its frame log) on a fixed port, so that `bench/soak.py` can stop it and start it again
where the gateway's upstream links expect it.

    python -m bench.soak_csms --listen 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from urllib.parse import unquote

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from bench._common import parse_hostport, raise_nofile
from tests.e2e.peers import CSMS_CLASSES, VERSION_OF


async def _handler(ws: ServerConnection) -> None:
    assert ws.request is not None
    charger_id = unquote(ws.request.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])
    version = VERSION_OF.get(ws.subprotocol or "")
    if version is None:
        await ws.close()
        return
    cp = CSMS_CLASSES[version](charger_id, ws, response_timeout=30)
    with contextlib.suppress(ConnectionClosed):
        await cp.start()


async def _main(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(_handler, host, port, subprotocols=["ocpp2.1", "ocpp2.0.1", "ocpp1.6"],  # type: ignore[list-item]
                     max_size=None, ping_interval=None):
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.soak_csms", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="HOST:PORT")
    args = ap.parse_args()
    raise_nofile()
    logging.getLogger("ocpp").setLevel(logging.CRITICAL)
    host, port = parse_hostport(args.listen)
    asyncio.run(_main(host, port))


if __name__ == "__main__":
    main()
