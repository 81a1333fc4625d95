"""`Flag`: asyncio.Event's set/clear/wait at a fraction of its memory.

An asyncio.Event holds a deque for its waiters from birth (about 800 bytes with the object); the
gateway keeps a few per charger that are waited on rarely (a close finishing, a report arriving),
so with thousands of chargers that is megabytes of empty deques. A Flag is a slotted object whose
list of waiters exists only while someone waits.
"""

from __future__ import annotations

import asyncio


class Flag:
    """Like asyncio.Event: `wait()` returns once `set()` was called (at once if it is set now);
    `clear()` makes later waits wait again. Waiters cancelled while waiting are forgotten."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[bool]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for fut in waiters or ():
            if not fut.done():
                fut.set_result(True)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = [fut]
        else:
            self._waiters.append(fut)
        try:
            return await fut
        finally:
            if self._waiters is not None and fut in self._waiters:
                self._waiters.remove(fut)
