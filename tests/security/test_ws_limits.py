"""The WebSocket port's own limits (adapters/ws_limits.py), in process and small: bytes held in
unfinished messages for the whole gateway, the deadline to finish a message, handshakes and
connections per address with capacity reserved for configured chargers. The same attacks at full
size against a gateway process are in test_attacks.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from adapters.ws_limits import TARPIT, Admission
from gateway.config import Settings
from tests.security.conftest import gateway
from tests.security.test_hostile import BOOT16, good_charger, rpc


async def _never_ending(first: str) -> AsyncIterator[str]:
    """A message whose first fragment is sent and whose last never comes."""
    yield first
    await asyncio.Event().wait()


def health(gw: Any) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.ws_port}/healthz", timeout=5) as r:
        return dict(json.loads(r.read()))


async def unfinished(gw: Any, cid: str, size: int, **kw: Any) -> tuple[ClientConnection, asyncio.Task[None]]:
    ws = await connect(gw.url(cid), subprotocols=["ocpp1.6"], max_size=None, **kw)  # type: ignore[list-item]
    first = '[2,"u","DataTransfer",{"vendorId":"x","data":"' + "A" * size
    return ws, asyncio.create_task(ws.send(_never_ending(first)))


async def closed_code(ws: ClientConnection, timeout: float = 10) -> int | None:
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    return ws.close_code


async def test_all_connections_together_hold_at_most_the_cap(tmp_path: Path) -> None:
    cap = 1_048_576
    async with gateway(tmp_path, websocket={"max_frame_size": 524_288, "max_buffered_bytes": cap}) as gw, \
            good_charger(gw) as rtts:
        attackers = [await unfinished(gw, f"FAT{i}", 300_000, compression="deflate", local_addr=("127.0.0.2", 0))
                     for i in range(8)]
        await asyncio.sleep(1.0)
        h = await asyncio.to_thread(health, gw)
        assert h["buffered_peak"] <= cap and h["buffered_bytes"] <= cap, h
        assert h["closed_for_buffering"] >= 4, h  # 8 x 300 kB do not fit in 1 MiB
        codes = [await closed_code(ws, 0.5) for ws, _ in attackers]
        assert codes.count(1013) >= 4, codes  # "try again later"
        # another address is served meanwhile
        for ws, task in attackers:
            task.cancel()
            ws.transport.abort()
        assert (await rpc(await stack_connect(gw, "AFTER"), BOOT16))[0] == 3
    assert rtts and max(rtts) < 10


async def stack_connect(gw: Any, cid: str) -> ClientConnection:
    return await connect(gw.url(cid), subprotocols=["ocpp1.6"])  # type: ignore[list-item]


async def test_a_message_must_be_finished_in_time(tmp_path: Path) -> None:
    async with gateway(tmp_path, websocket={"message_timeout": 1.0}) as gw:
        ws, task = await unfinished(gw, "SLOW", 1000)
        assert await closed_code(ws, 10) == 1008
        task.cancel()
        assert (await asyncio.to_thread(health, gw))["buffered_bytes"] == 0
        # a charger that finishes its messages is not touched, however long it stays
        async with connect(gw.url("STEADY"), subprotocols=["ocpp1.6"]) as ok:  # type: ignore[list-item]
            for i in range(3):
                assert (await rpc(ok, f'[2,"h{i}","Heartbeat",{{}}]'))[0] == 3
                await asyncio.sleep(0.6)


async def test_handshakes_per_address_and_reserved_capacity(tmp_path: Path) -> None:
    async with gateway(tmp_path, websocket={"max_handshakes_per_address": 5, "max_connections": 8,
                                            "max_connections_per_address": 3,
                                            "unlimited_networks": []},  # loopback is limited too here
                       chargers={"KNOWN1": {}, "KNOWN2": {}}) as gw:
        held = []
        for _ in range(12):  # half-open handshakes from 127.0.0.2
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.ws_port, local_addr=("127.0.0.2", 0))
            writer.write(b"GET /ocpp/X HTTP/1.1\r\nHost: x\r\n")
            held.append((reader, writer))
        await asyncio.sleep(0.3)
        assert not any(r.at_eof() or r.exception() for r, _ in held)  # the refused ones are held a while (>= 1 s)...
        await asyncio.sleep(TARPIT * 1.5)
        dropped = sum(1 for r, _ in held if r.at_eof() or r.exception())
        assert dropped == 7, dropped  # ...and closed: all beyond 5, unread
        # other addresses are not affected
        async with connect(gw.url("OTHER"), subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            assert (await rpc(ws, BOOT16))[0] == 3
        for _, writer in held:
            writer.close()
        # unconfigured ids: 3 per address
        async with contextlib.AsyncExitStack() as stack:
            for i in range(3):
                await stack.enter_async_context(connect(gw.url(f"U{i}"), subprotocols=["ocpp1.6"]))  # type: ignore[list-item]
            with pytest.raises(InvalidStatus) as info:
                await connect(gw.url("U3"), subprotocols=["ocpp1.6"])  # type: ignore[list-item]
            assert info.value.response.status_code == 503
            # max_connections (8) of unconfigured ids in all, from other addresses
            for i in range(5):
                await stack.enter_async_context(connect(gw.url(f"V{i}"), subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                                        local_addr=(f"127.0.1.{i + 1}", 0)))
            with pytest.raises(InvalidStatus) as info:
                await connect(gw.url("V9"), subprotocols=["ocpp1.6"], local_addr=("127.0.2.1", 0))  # type: ignore[list-item]
            assert info.value.response.status_code == 503
            # configured chargers always get in, from a full address too
            for cid in ("KNOWN1", "KNOWN2"):
                ws = await stack.enter_async_context(connect(gw.url(cid), subprotocols=["ocpp1.6"]))  # type: ignore[list-item]
                assert (await rpc(ws, BOOT16))[0] == 3


async def test_ipv6_addresses_count_by_their_64() -> None:
    admission = Admission(Settings(websocket={"max_handshakes_per_address": 2}))
    from gateway.security import address_group

    assert address_group("2001:db8:1:2:aaaa::1") == address_group("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_group("2001:db8:1:3::1") != address_group("2001:db8:1:2::1")
    assert address_group("::ffff:192.0.2.7") == "192.0.2.7"
    assert admission.start_handshake(address_group("2001:db8::1"))
    assert admission.start_handshake(address_group("2001:db8::ffff:2"))
    assert not admission.start_handshake(address_group("2001:db8::3"))  # the same /64
    assert admission.start_handshake(address_group("2001:db8:0:1::1"))


async def test_loopback_is_not_limited_per_address_by_default(tmp_path: Path) -> None:
    """A reverse proxy on the gateway host (or a local tool) brings every charger from one
    loopback address: the per-address limits do not apply there unless unlimited_networks says so."""
    async with gateway(tmp_path, websocket={"max_handshakes_per_address": 2, "max_connections_per_address": 2}) as gw:
        async with contextlib.AsyncExitStack() as stack:
            held = [await asyncio.open_connection("127.0.0.1", gw.ws_port) for _ in range(4)]  # half-open
            for i in range(6):  # more connections than the per-address limit
                await stack.enter_async_context(connect(gw.url(f"P{i}"), subprotocols=["ocpp1.6"]))  # type: ignore[list-item]
            async with connect(gw.url("P9"), subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
                assert (await rpc(ws, BOOT16))[0] == 3
            for _, writer in held:
                writer.close()
        assert (await asyncio.to_thread(health, gw))["dropped_handshakes"] == 0


@pytest.mark.parametrize("evses", [4])
def test_a_large_notify_report_fits_the_default_frame_size(evses: int) -> None:
    """max_frame_size's default (1 MiB) holds a 2.x NotifyReport of a whole device model in one
    message 2.5 times over: 1000 variables with their attribute and characteristics (~400 kB)."""
    from gateway.protocol.frames import OcppVersion
    from gateway.protocol.schemas import SchemaRegistry

    data = [{"component": {"name": f"Component{i % 50}", "evse": {"id": i % evses + 1, "connectorId": 1}},
             "variable": {"name": f"Variable{i}", "instance": "Default"},
             "variableAttribute": [{"type": "Actual", "value": "x" * 40, "mutability": "ReadWrite",
                                    "persistent": True, "constant": False}],
             "variableCharacteristics": {"unit": "W", "dataType": "decimal", "minLimit": 0, "maxLimit": 22000,
                                         "valuesList": "", "supportsMonitoring": True}}
            for i in range(1000)]
    payload = {"requestId": 1, "generatedAt": "2026-01-01T00:00:00Z", "tbc": False, "seqNo": 0, "reportData": data}
    assert SchemaRegistry([OcppVersion.V201]).validate(OcppVersion.V201, "NotifyReport", payload) is None
    size = len(orjson.dumps([2, "m1", "NotifyReport", payload]))
    assert 300_000 < size < Settings().websocket.max_frame_size / 2.5, size
