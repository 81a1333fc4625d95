"""gateway.flag.Flag behaves as asyncio.Event where the gateway uses it, for less memory."""

from __future__ import annotations

import asyncio
import sys

import pytest

from gateway.flag import Flag


async def test_set_wakes_every_waiter_and_clear_makes_them_wait_again() -> None:
    flag = Flag()
    assert not flag.is_set()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert flag.is_set() and await flag.wait() is True  # set: no waiting
    flag.clear()
    late = asyncio.create_task(flag.wait())
    await asyncio.sleep(0.01)
    assert not late.done()
    flag.set()
    assert await late is True


async def test_a_cancelled_waiter_is_forgotten_and_the_others_still_wake() -> None:
    flag = Flag()
    gone, stays = asyncio.create_task(flag.wait()), asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert flag._waiters is not None and len(flag._waiters) == 1
    flag.set()
    assert await stays is True
    assert flag._waiters is None


async def test_it_costs_a_small_part_of_an_event() -> None:
    flag, event = Flag(), asyncio.Event()
    event_size = sys.getsizeof(event) + sys.getsizeof(event.__dict__) + sys.getsizeof(event._waiters)
    assert sys.getsizeof(flag) * 5 < event_size, (sys.getsizeof(flag), event_size)
