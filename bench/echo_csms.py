"""Echo CSMS for the bench: answers every OCPP 1.6 CALL with a schema-valid CALLRESULT.

    python -m bench.echo_csms --listen 127.0.0.1:PORT [--path /ocpp]

Accepts websockets at {path}/{charger_id} with subprotocol ocpp1.6 (compression as the
websockets default, i.e. permessage-deflate offered/accepted), and answers `/healthz`
with 200. It never sends CALLs of its own. Answers for unknown actions are `{}`.

Forwarding probe: a DataTransfer with vendorId "bench", messageId "probe" and data D is
answered `{"status": "Accepted", "data": "MARKER:D"}`, MARKER being --marker (a secret the
bench makes per run): only a relay that really forwarded the CALL here can return it.
Other DataTransfers get `{"status": "Accepted"}`.
"""

from __future__ import annotations

import argparse
import signal
import sys
from http import HTTPStatus
from typing import Any

import orjson
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from bench._common import FIXED_TIME, loop_name, parse_hostport, raise_nofile, run_async

# CALLRESULT payloads, valid against the OCPP 1.6 JSON response schemas.
RESPONSES: dict[str, bytes] = {
    "Heartbeat": orjson.dumps({"currentTime": FIXED_TIME}),
    "BootNotification": orjson.dumps({"status": "Accepted", "currentTime": FIXED_TIME, "interval": 300}),
    "MeterValues": b"{}",
    "StatusNotification": b"{}",
    "Authorize": orjson.dumps({"idTagInfo": {"status": "Accepted"}}),
    "StartTransaction": orjson.dumps({"transactionId": 1, "idTagInfo": {"status": "Accepted"}}),
    "StopTransaction": b"{}",
    "DiagnosticsStatusNotification": b"{}",
    "FirmwareStatusNotification": b"{}",
}
EMPTY = b"{}"
ACCEPTED = orjson.dumps({"status": "Accepted"})
PROBE = ("bench", "probe")  # DataTransfer vendorId/messageId of the bench's forwarding probe


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.echo_csms", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:9700")
    ap.add_argument("--path", default="/ocpp")
    ap.add_argument("--marker", default="", help="secret put in the answer to the forwarding probe")
    args = ap.parse_args()
    raise_nofile()
    host, port = parse_hostport(args.listen)
    prefix = args.path.rstrip("/") + "/"
    stats = {"connections": 0, "calls": 0}
    marker = args.marker

    def other(action: str, payload: object) -> bytes:
        """Answers not in RESPONSES (off the hot path)."""
        if action != "DataTransfer":
            return EMPTY
        if (marker and type(payload) is dict and (payload.get("vendorId"), payload.get("messageId")) == PROBE
                and isinstance(payload.get("data"), str)):
            return orjson.dumps({"status": "Accepted", "data": f"{marker}:{payload['data']}"})
        return ACCEPTED

    def process_request(connection: Any, request: Any) -> Any:
        if request.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if not request.path.startswith(prefix) or len(request.path) == len(prefix):
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        return None

    async def handler(ws: Any) -> None:
        stats["connections"] += 1
        recv = ws.recv
        send = ws.send
        get = RESPONSES.get
        try:
            while True:
                raw = await recv(decode=False)
                try:
                    msg = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if type(msg) is list and len(msg) == 4 and msg[0] == 2:
                    stats["calls"] += 1
                    body = get(msg[2])
                    if body is None:
                        body = other(msg[2], msg[3])
                    await send(b"[3," + orjson.dumps(msg[1]) + b"," + body + b"]", text=True)
        except ConnectionClosed:
            pass

    async def run() -> None:
        import asyncio

        stop = asyncio.get_running_loop().create_future()

        def on_signal() -> None:
            if not stop.done():
                stop.set_result(None)

        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, on_signal)
        async with serve(
            handler, host, port, subprotocols=[Subprotocol("ocpp1.6")], process_request=process_request, backlog=1024
        ):
            print(f"echo_csms listening on {host}:{port} ({loop_name()})", file=sys.stderr, flush=True)
            await stop
        print(f"echo_csms stopped: {stats}", file=sys.stderr, flush=True)

    run_async(run)


if __name__ == "__main__":
    main()
