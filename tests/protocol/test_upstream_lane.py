"""The upstream link's synchronous lane (adapters/upstream_ws.py), over a real WebSocket.

The replay takes the CSMS's answer as it is parsed and writes the next CALL from a plain callback.
What must hold: frames written that way are valid masked frames the peer reads in order with
those sent the usual way; the lane sees a message only while the reader waits with nothing
queued, so what it leaves reaches `recv()` in the order the CSMS sent it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from websockets.asyncio.server import serve

from adapters.upstream_dial import text_frame
from adapters.upstream_ws import WsUpstreamConnector
from gateway.config import Settings
from gateway.protocol.frames import OcppVersion
from tests.harness import free_port

pytestmark = pytest.mark.timeout(30)


class Peer:
    """A CSMS stand-in: records what arrives, sends what the test asks for."""

    def __init__(self) -> None:
        self.got: list[str] = []
        self.ws: Any = None
        self.connected = asyncio.Event()
        self.arrived = asyncio.Condition()

    async def handler(self, ws: Any) -> None:
        self.ws = ws
        self.connected.set()
        async for message in ws:
            async with self.arrived:
                self.got.append(message)
                self.arrived.notify_all()

    async def until(self, n: int) -> None:
        async with asyncio.timeout(10):
            async with self.arrived:
                await self.arrived.wait_for(lambda: len(self.got) >= n)


async def link_to(peer: Peer, compression: bool = False) -> tuple[Any, Any]:
    port = free_port()
    server = await serve(peer.handler, "127.0.0.1", port, subprotocols=["ocpp1.6"])  # type: ignore[list-item]
    settings = Settings(upstream={"url": f"ws://127.0.0.1:{port}/ocpp", "compression": compression})
    link = await WsUpstreamConnector(settings).connect("CP1", OcppVersion.V16, None)
    await asyncio.wait_for(peer.connected.wait(), 5)
    return server, link


def test_text_frame_layout_at_each_length_form() -> None:
    key = b"\x01\x02\x03\x04"
    for n, head in ((0, b"\x81\x80"), (125, b"\x81\xfd"), (126, b"\x81\xfe\x00\x7e"), (65535, b"\x81\xfe\xff\xff"),
                    (65536, b"\x81\xff\x00\x00\x00\x00\x00\x01\x00\x00")):
        data = os.urandom(n)
        frame = text_frame(data, key)
        assert frame.startswith(head + key) and len(frame) == len(head) + 4 + n
        body = frame[len(head) + 4:]
        assert bytes(b ^ key[i % 4] for i, b in enumerate(body)) == data


@pytest.mark.parametrize("compression", [False, True])
async def test_frames_written_at_once_arrive_in_order_with_the_others(compression: bool) -> None:
    peer = Peer()
    server, link = await link_to(peer, compression)
    try:
        sent = []
        for i in range(300):
            text = f'[2,"m{i}","MeterValues",{{"n":"{"x" * (i * 7)}"}}]'  # up to 2 kB: both short length forms
            sent.append(text)
            if i % 3 == 0:
                await link.send(text)
            else:
                assert link.send_now(text)
        await peer.until(300)
        assert peer.got == sent
        await peer.ws.close()
        async with asyncio.timeout(5):
            while link.send_now("[]"):  # closed: nothing is written, the caller uses send() (which raises)
                await asyncio.sleep(0.01)
    finally:
        await link.close()
        server.close()
        await server.wait_closed()


async def test_the_lane_sees_messages_only_while_the_reader_waits_idle() -> None:
    peer = Peer()
    server, link = await link_to(peer)
    taken: list[str] = []
    link.set_fast_reader(lambda text: taken.append(text) is None and text.startswith("take"))
    try:
        # nobody reads: every message is queued for recv(), the lane sees none of them
        for text in ("take-0", "keep-1", "take-2"):
            await peer.ws.send(text)
        await asyncio.sleep(0.2)
        assert taken == []
        assert [await link.recv() for _ in range(3)] == ["take-0", "keep-1", "take-2"]
        # the reader waits: the lane takes what it wants, the rest reaches recv() in order
        reader = asyncio.create_task(link.recv())
        await asyncio.sleep(0.05)
        await peer.ws.send("take-3")
        await peer.ws.send("keep-4")
        assert await asyncio.wait_for(reader, 5) == "keep-4"
        assert taken == ["take-3", "keep-4"]
        # once a message waits in the queue, those behind it queue too, even ones the lane would take
        reader = asyncio.create_task(link.recv())
        await asyncio.sleep(0.05)
        await peer.ws.send("keep-5")
        await peer.ws.send("take-6")
        assert await asyncio.wait_for(reader, 5) == "keep-5"
        assert await asyncio.wait_for(link.recv(), 5) == "take-6"
        assert taken == ["take-3", "keep-4", "keep-5"]
    finally:
        await link.close()
        server.close()
        await server.wait_closed()
