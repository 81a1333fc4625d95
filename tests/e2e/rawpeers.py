"""Raw WebSocket peers that see and send frames as exact text (for byte-for-byte relay checks)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from tests.harness import free_port


@dataclass
class RawConnection:
    ws: ServerConnection
    path: str
    subprotocol: str | None
    headers: dict[str, str]
    received: asyncio.Queue[str] = field(default_factory=asyncio.Queue)


class RawCsms:
    """A WebSocket server at /ocpp/{id}. `answer(text) -> reply text | None` runs for every frame;
    every frame received is also queued on the connection for the test to read."""

    def __init__(self, answer: Callable[[str], str | None] | None = None, subprotocols: tuple[str, ...] = ("ocpp2.1", "ocpp2.0.1", "ocpp1.6"),
                 handshake_delay: float = 0.0) -> None:
        self.port = free_port()
        self.answer = answer
        self.subprotocols = subprotocols
        self.handshake_delay = handshake_delay
        self.connections: list[RawConnection] = []
        self.connected = asyncio.Condition()
        self.handshakes_in_progress = 0
        self.max_concurrent_handshakes = 0
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.handshakes_in_progress += 1
        self.max_concurrent_handshakes = max(self.max_concurrent_handshakes, self.handshakes_in_progress)
        try:
            if self.handshake_delay:
                await asyncio.sleep(self.handshake_delay)
        finally:
            self.handshakes_in_progress -= 1
        return None

    def _select(self, connection: ServerConnection, offered: Any) -> Any:
        for p in offered:
            if p in self.subprotocols:
                return p
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        conn = RawConnection(ws, ws.request.path, ws.subprotocol, dict(ws.request.headers.raw_items()))
        async with self.connected:
            self.connections.append(conn)
            self.connected.notify_all()
        try:
            async for message in ws:
                assert isinstance(message, str)
                conn.received.put_nowait(message)
                if self.answer is not None:
                    reply = self.answer(message)
                    if reply is not None:
                        await ws.send(reply)
        except Exception:  # noqa: BLE001 - the test reads what arrived
            pass

    async def wait_connections(self, n: int, timeout: float = 5.0) -> list[RawConnection]:
        async def _wait() -> None:
            async with self.connected:
                await self.connected.wait_for(lambda: len(self.connections) >= n)

        await asyncio.wait_for(_wait(), timeout)
        return self.connections

    async def __aenter__(self) -> "RawCsms":
        self._server = await serve(self._handler, "127.0.0.1", self.port, process_request=self._process_request,
                                   select_subprotocol=self._select)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
