"""gateway/heap.py: sessions that settled leave the collector's full passes; cycles left by sessions
that ended are freed by the next pass, which runs only after enough sessions came or went and
they settled (or kept coming for `longest`), at most once per `min_interval`."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable, Iterator

import orjson
import pytest
from websockets.asyncio.client import connect

from gateway.heap import HeapKeeper
from tests.harness import GatewayProcess


class _Session:
    """A session's shape for the collector: an object in a reference cycle."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def _thawed() -> Iterator[None]:
    """The test process's heap as it was: nothing of ours left frozen."""
    yield
    gc.unfreeze()


async def _settle(keeper: HeapKeeper, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while keeper._timer is not None:
            await asyncio.sleep(0.01)


async def test_settled_sessions_are_frozen_and_the_cycles_of_ended_ones_freed() -> None:
    keeper = HeapKeeper(settle=0.05, longest=10, min_changes=5, min_interval=0)
    sessions = [_Session() for _ in range(5)]
    for n in range(1, 6):
        keeper.changed(n)
    assert keeper.passes == 0  # not while they are still coming
    await _settle(keeper)
    assert keeper.passes == 1 and keeper.frozen_sessions == 5
    assert gc.get_freeze_count() > 0
    ended = weakref.ref(sessions[0])
    del sessions[0]
    gc.collect()
    assert ended() is not None  # frozen: a full collection skips it (the point of freezing)
    for n in range(4, 0, -1):  # sessions end, but too few for a pass yet: the cycle waits
        keeper.changed(n)
    await asyncio.sleep(0.15)
    assert keeper.passes == 1 and ended() is not None
    keeper.changed(0)  # the 5th change: a pass once they have settled
    await _settle(keeper)
    assert keeper.passes == 2 and ended() is None
    keeper.close()


async def test_changes_that_never_settle_still_get_a_pass_after_longest() -> None:
    keeper = HeapKeeper(settle=0.2, longest=0.3, min_changes=3, min_interval=0)
    async with asyncio.timeout(5):
        n = 0
        while keeper.passes == 0:  # a change every 50 ms: never quiet for `settle`
            n += 1
            keeper.changed(n)
            await asyncio.sleep(0.05)
    assert 0.3 <= n * 0.05 <= 1.0  # after `longest`, not after the changes stopped (they did not)
    keeper.close()


async def test_passes_are_at_most_one_per_min_interval() -> None:
    keeper = HeapKeeper(settle=0.02, longest=10, min_changes=1, min_interval=0.5)
    keeper.changed(1)
    await _settle(keeper)
    assert keeper.passes == 1
    keeper.changed(2)
    await asyncio.sleep(0.2)
    assert keeper.passes == 1  # due, but the last pass was less than min_interval ago
    await _settle(keeper)
    assert keeper.passes == 2
    keeper.close()


async def test_a_small_site_gets_no_pass_and_no_timer_left_running() -> None:
    keeper = HeapKeeper(settle=0.02, min_changes=20, min_interval=0)
    for n in range(5):
        keeper.changed(n)
    await _settle(keeper)
    assert keeper.passes == 0 and keeper._timer is None  # the next change looks again
    keeper.close()
    keeper.changed(6)
    assert keeper._timer is None  # closed: nothing more is scheduled


async def test_a_connect_burst_is_frozen_as_it_comes_and_its_garbage_freed_by_the_pass() -> None:
    keeper = HeapKeeper(settle=0.05, longest=10, min_changes=5, min_interval=0, burst=10)
    frozen_before = gc.get_freeze_count()
    gc.disable()  # no automatic collection may free the cycle before the freeze
    try:
        garbage = _Session()
        gone = weakref.ref(garbage)
        del garbage  # a cycle nobody holds, frozen with the burst
        for n in range(1, 10):
            keeper.changed(n)
        assert gc.get_freeze_count() == frozen_before  # not yet: fewer than `burst` came
        keeper.changed(10)
    finally:
        gc.enable()
    assert gc.get_freeze_count() > frozen_before and keeper.passes == 0  # frozen at once, no collection
    gc.collect()
    assert gone() is not None  # frozen: skipped by the collector until the pass
    await _settle(keeper)
    assert keeper.passes == 1 and gone() is None
    keeper.close()


async def test_a_running_gateway_freezes_the_sessions_that_came(
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    """The keeper wired into the gateway process (Hub.notify): 20 chargers come, settle, and one
    pass runs (logged at DEBUG), after which the relay goes on as before."""
    gw = gateway_factory()
    chargers = []
    try:
        for i in range(20):
            ws = await connect(gw.url(f"HEAP{i:02d}"), subprotocols=["ocpp1.6"])  # type: ignore[list-item]
            chargers.append(ws)
            await ws.send('[2,"b","BootNotification",{"chargePointVendor":"V","chargePointModel":"M"}]')
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))[:2] == [3, "b"]
        loop = asyncio.get_running_loop()
        until = loop.time() + 30  # the pass comes 5 s after the last one settled
        while "one full collection" not in gw.logs() and loop.time() < until:
            await asyncio.sleep(0.2)
        line = next((x for x in gw.logs().splitlines() if "heap:" in x and "one full collection" in x), "")
        assert "20 sessions came or went" in line and "for 20 sessions" in line, gw.logs()[-3000:]
        for i, ws in enumerate(chargers):
            await ws.send(f'[2,"h{i}","Heartbeat",{{}}]')
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))[:2] == [3, f"h{i}"]
    finally:
        for ws in chargers:
            await ws.close()
