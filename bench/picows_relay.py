"""The limit: a raw-frame relay on picows, the least a Python charger-to-CSMS relay can do.

    python -m bench.picows_relay --listen 127.0.0.1:PORT --upstream ws://127.0.0.1:P/ocpp

For every client at {path}/{id} (subprotocol negotiated from the client's offer) it opens one
upstream WebSocket to {upstream}/{id} with that subprotocol and passes every data frame on as
it arrives, in both directions, from picows' frame callbacks: no parsing, no validation, no
tasks, no queues. Frames that arrive from the charger before the upstream link is open wait in
a list (a charger may send its BootNotification right after its own handshake). Closes are
passed on, pings answered by picows, back-pressure passed on (a side whose writes are paused
stops the other side's reads). No compression (picows has none; the load offers none either).
uvloop if importable. `GET /healthz` answers 200 so the bench can treat it like the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_connect,
    ws_create_server,
)

from bench._common import loop_name, parse_hostport, raise_nofile, run_async

SUBPROTOCOLS = ("ocpp1.6", "ocpp2.0.1", "ocpp2.1")
DATA = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION)
PING_IDLE = 20.0  # s without incoming data before a ping, as websockets' ping_interval


class Side(WSListener):
    """One leg of a relayed pair: frames it receives go out on `peer`."""

    def __init__(self) -> None:
        self.transport: WSTransport | None = None
        self.peer: Side | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        mt = frame.msg_type
        peer = self.peer
        if mt in DATA:
            if peer is not None and peer.transport is not None:
                peer.transport.send(mt, frame.get_payload_as_memoryview(), frame.fin)
            else:
                self.held(mt, frame.get_payload_as_bytes(), frame.fin)
        elif mt == WSMsgType.CLOSE:
            code = frame.get_close_code()
            transport.send_close(code, frame.get_close_message())
            transport.disconnect()
            if peer is not None and peer.transport is not None and not peer.transport.is_close_frame_sent:
                peer.transport.send_close(code if code != WSCloseCode.NO_INFO else WSCloseCode.OK)
                peer.transport.disconnect()

    def held(self, mt: WSMsgType, payload: bytes, fin: bool) -> None:
        """A frame that arrived before the other leg exists; only the charger side holds any."""
        raise RuntimeError("frame before the relay pair was complete")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_disconnected:
            peer.transport.disconnect()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.underlying_transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.underlying_transport.resume_reading()


class ChargerSide(Side):
    def __init__(self, url: str, subprotocol: str | None) -> None:
        super().__init__()
        self.url = url
        self.subprotocol = subprotocol
        self.waiting: list[tuple[WSMsgType, bytes, bool]] = []
        self.task: asyncio.Task[None] | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.task = asyncio.get_running_loop().create_task(self.open_upstream())

    def held(self, mt: WSMsgType, payload: bytes, fin: bool) -> None:
        self.waiting.append((mt, payload, fin))

    async def open_upstream(self) -> None:
        up = Side()
        up.peer = self
        headers = {"Sec-WebSocket-Protocol": self.subprotocol} if self.subprotocol else None
        try:
            await ws_connect(lambda: up, self.url, extra_headers=headers, enable_auto_ping=True,
                             auto_ping_idle_timeout=PING_IDLE, auto_ping_reply_timeout=PING_IDLE,
                             auto_ping_strategy=WSAutoPingStrategy.PING_WHEN_IDLE)
        except Exception:  # noqa: BLE001 - any upstream failure closes the charger with 1011
            if self.transport is not None:
                self.transport.send_close(WSCloseCode.INTERNAL_ERROR, b"upstream unavailable")
                self.transport.disconnect()
            return
        if self.transport is None or self.transport.is_disconnected:
            if up.transport is not None:
                up.transport.disconnect()
            return
        assert up.transport is not None
        for mt, payload, fin in self.waiting:
            up.transport.send(mt, payload, fin)
        self.waiting = []
        self.peer = up


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.picows_relay", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:9702")
    ap.add_argument("--path", default="/ocpp")
    ap.add_argument("--upstream", required=True, help="base URL, e.g. ws://127.0.0.1:9700/ocpp")
    args = ap.parse_args()
    raise_nofile()
    host, port = parse_hostport(args.listen)
    prefix = (args.path.rstrip("/") + "/").encode()
    upstream = args.upstream.rstrip("/") + "/"

    def route(request: WSUpgradeRequest) -> Any:
        path = request.path
        if path == b"/healthz":
            return WSUpgradeResponseWithListener(WSUpgradeResponse.create_ok_response(b"ok\n"), None)
        if not path.startswith(prefix) or len(path) == len(prefix):
            return None  # 404
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        sub = next((p for p in offered if p in SUBPROTOCOLS), None)
        listener = ChargerSide(upstream + path[len(prefix):].decode(), sub)
        extra = {"Sec-WebSocket-Protocol": sub} if sub else None
        return WSUpgradeResponseWithListener(WSUpgradeResponse.create_101_response(extra), listener)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop: asyncio.Future[None] = loop.create_future()

        def on_signal() -> None:
            if not stop.done():
                stop.set_result(None)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        server = await ws_create_server(route, host, port, backlog=1024, enable_auto_ping=True,
                                        auto_ping_idle_timeout=PING_IDLE, auto_ping_reply_timeout=PING_IDLE,
                                        auto_ping_strategy=WSAutoPingStrategy.PING_WHEN_IDLE)
        print(f"picows_relay listening on {host}:{port} -> {upstream} ({loop_name()})", file=sys.stderr, flush=True)
        try:
            await stop
        finally:
            server.close()

    run_async(run)


if __name__ == "__main__":
    main()
