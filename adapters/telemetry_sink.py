"""What the MQTT and InfluxDB sinks share: a bounded in-memory queue fed with put_nowait, one worker
task that delivers, and a disk spool used while the far end is away.

`offer` encodes the record at once (MQTT messages, InfluxDB lines: microseconds of CPU, no I/O) and
queues what it became as one tuple; the worker gathers those into batches and delivers them. The
record itself is freed right away. When the worker encoded records after a flush interval (one
second for InfluxDB), thousands of them (each a handful of objects the garbage collector tracks)
waited in the queue long enough to be promoted to the collector's older generations and scanned
again and again; what waits now is tuples of strings and bytes, which the collector stops tracking
the first time it sees them.

The worker is the only thing that delivers or touches the spool, so order is simple to keep: while
anything is spooled, new items are appended behind it, and the spool is drained oldest first when
the far end is back. At the queue's bound a record is dropped and counted (the relay never waits);
at the spool's bound the oldest items go (see adapters/spool.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
import time
from typing import Any, Generic, Sequence, TypeVar

from adapters.spool import Spool
from gateway.telemetry.records import Record

Item = TypeVar("Item")


class Inbox:
    """A bounded FIFO for one consumer: what `asyncio.Queue` does here, for a third of the cost per
    record (no task accounting, one waiter). An entry is what one hand-off encoded (the records of
    one or many exchanges); the bound counts records, and an entry is taken while any room is
    left. `put_nowait` raises asyncio.QueueFull at the bound."""

    __slots__ = ("_items", "_max", "_waiter", "_size")

    def __init__(self, maxsize: int) -> None:
        self._items: collections.deque[tuple[int, Any]] = collections.deque()  # (records, entry)
        self._max = maxsize
        self._size = 0  # records queued
        self._waiter: asyncio.Future[None] | None = None

    def full(self) -> bool:
        return self._size >= self._max

    def put_nowait(self, item: Any, records: int = 1) -> None:
        if self._size >= self._max:
            raise asyncio.QueueFull
        self._items.append((records, item))
        self._size += records
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def get_nowait(self) -> Any:
        """The oldest entry; IndexError when there is none."""
        records, item = self._items.popleft()
        self._size -= records
        return item

    async def get(self) -> Any:
        while not self._items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        return self.get_nowait()

    def qsize(self) -> int:
        """Records queued."""
        return self._size


class SpooledSink(Generic[Item]):
    name = "sink"

    def __init__(self, spool: Spool, *, queue_size: int, batch_size: int, flush_interval: float) -> None:
        self.spool = spool
        self.queue = Inbox(queue_size)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.dropped = 0  # records refused because the queue was full
        self.delivered = 0  # items handed to the far end
        self._task: asyncio.Task[None] | None = None
        self._busy = False  # the worker holds records it took from the queue and has not delivered or spooled
        self._last_drop_log = 0.0
        self.log = logging.getLogger(f"gateway.telemetry.{self.name}")

    # -- what a sink implements -----------------------------------------------------------------

    def encode(self, record: Record) -> list[Item]:
        raise NotImplementedError

    def pack(self, item: Item) -> bytes:
        raise NotImplementedError

    def unpack(self, body: bytes) -> Item:
        raise NotImplementedError

    async def deliver(self, items: list[Item]) -> bool:
        """Hand the items to the far end. False: it is away, nothing was taken (they get spooled)."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Worth trying to deliver now (connected, or the retry time has come)."""
        return True

    def take_unsent(self) -> list[Item]:
        """Items `deliver` took earlier that the far end never acknowledged (it went away): they
        are spooled ahead of everything else and delivered again, oldest first."""
        return []

    def wake(self) -> None:
        """Make the worker look at `take_unsent` now, even if no record arrives."""
        try:
            self.queue.put_nowait((), 0)
        except asyncio.QueueFull:
            pass  # it is busy anyway

    # -- the hand-off -----------------------------------------------------------------------------

    def offer(self, record: Record) -> None:
        """Encode the record and queue what it became (one queue entry). Never raises, never waits:
        at the queue's bound the record is dropped and counted."""
        self.offer_all((record,))

    def offer_all(self, records: Sequence[Record]) -> None:
        """`offer` for many records at once (those of one exchange, or what the telemetry observer
        gathered from many): one queue entry for all of them."""
        queue = self.queue
        if queue.full():
            for _ in records:
                self._drop()
            return
        items: list[Item] = []
        encode = self.encode
        pending = iter(records)
        while True:  # one loop for all of them; a record that fails is logged and the next one goes on
            try:
                for record in pending:
                    items += encode(record)
                break
            except Exception:  # noqa: BLE001 - one odd record must not stop the sink (nor reach the relay)
                self.log.exception("%s could not encode %r", self.name, record)
        if items:
            queue.put_nowait(tuple(items), len(records))

    def _drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log > 10:
            self._last_drop_log = now
            self.log.warning("%s queue full: %d records dropped so far", self.name, self.dropped)

    @property
    def backlog(self) -> int:
        return self.queue.qsize() + self.spool.count

    async def start_worker(self) -> None:
        await self.spool.open()
        self._task = asyncio.create_task(self._run(), name=f"telemetry:{self.name}")

    async def stop_worker(self, grace: float = 5.0) -> None:
        """Deliver or spool what is queued, then stop."""
        deadline = time.monotonic() + grace
        # polled, for at most `grace`: the condition spans the queue and the worker's write in flight
        while (self._task is not None and not self._task.done() and (self.queue.qsize() or self._busy)  # noqa: ASYNC110
               and time.monotonic() < deadline):
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._spool_unsent()
        rest = self._take_nowait(sys.maxsize)  # everything still queued
        if rest:
            await self.spool.append([self.pack(i) for i in rest])
        await self.spool.close()

    async def _spool_unsent(self) -> bool:
        unsent = self.take_unsent()
        if unsent:
            # shielded: once taken they are only in this call, and stop_worker may cancel the worker now
            await asyncio.shield(self.spool.prepend([self.pack(i) for i in unsent]))
            self.log.info("%s: %d messages were not acknowledged; spooled to be sent again", self.name, len(unsent))
        return bool(unsent)

    def _take_nowait(self, limit: int) -> list[Item]:
        """Encoded items from the queue, a whole record's at a time, until at least `limit` (or none left)."""
        items: list[Item] = []
        get = self.queue.get_nowait
        while len(items) < limit:
            try:
                items += get()
            except IndexError:
                break
        return items

    async def _collect(self) -> list[Item]:
        """Wait for a first record, then gather a batch: what is queued already, and if that is not
        a full batch, what arrives within flush_interval (one sleep per batch, not a timed wait per
        record: asyncio.wait_for costs a task and a timer each time)."""
        items = list(await self.queue.get())
        self._busy = True
        items += self._take_nowait(self.batch_size - len(items))
        if len(items) < self.batch_size and self.flush_interval > 0:
            await asyncio.sleep(self.flush_interval)
            items.extend(self._take_nowait(self.batch_size - len(items)))
        return items

    async def _run(self) -> None:
        spooling = self.spool.count > 0
        while True:
            try:
                if await self._spool_unsent():
                    spooling = True
                if not spooling:
                    try:
                        items = await self._collect()
                        if not items:
                            continue
                        if await self.deliver(items):
                            self.delivered += len(items)
                        else:
                            await self._spool_unsent()  # older than `items`
                            await self.spool.append([self.pack(i) for i in items])
                            spooling = True
                            self.log.info("%s away: spooling to disk", self.name)
                    finally:
                        self._busy = False
                    continue
                # spooling: new items go behind the spooled ones; drain when the far end is back
                items = self._take_nowait(self.batch_size)
                if items:
                    await self.spool.append([self.pack(i) for i in items])
                if self.ready():
                    rows = await self.spool.peek(self.batch_size)
                    if not rows:
                        spooling = False
                        self.log.info("%s back: spool drained", self.name)
                        continue
                    if await self.deliver([self.unpack(body) for _, body in rows]):
                        self.delivered += len(rows)
                        await self.spool.remove_through(rows[-1][0])
                        continue
                if not items:
                    try:
                        # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that
                        # arrives as the record does, and this loop would then never stop
                        async with asyncio.timeout(0.2):
                            entry = await self.queue.get()
                    except TimeoutError:
                        continue
                    if entry:
                        await self.spool.append([self.pack(i) for i in entry])
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep the worker alive whatever happens
                self.log.exception("%s worker error", self.name)
                await asyncio.sleep(1.0)
