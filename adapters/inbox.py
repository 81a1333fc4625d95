"""Ordered, eager delivery of one connection's messages to an async handler.

A transport that hands over messages from a plain callback (picows' `on_ws_frame`, an asyncio
protocol's `data_received`) gives each one to `Inbox.deliver`. The handler's coroutine is started
at once, in that callback: most relayed messages finish without ever waiting (the frame goes out
on the other link with a synchronous write), so they cost no task, no future and no trip through
the event loop. A handler that does wait (a store commit, a full write buffer) goes on in a task;
messages arriving meanwhile wait in order and that task runs them one after the other. Messages
are never run concurrently and never change order.

When more than `limit` messages wait, `pause()` is called (the transport stops reading: TCP
back-pressure slows the sender down), and `resume()` once the queue is empty again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Generator
from typing import Any

Handler = Callable[[str], Coroutine[Any, Any, None]]


class _Resume:
    """Awaiting it goes on with a coroutine that was started outside any task and is suspended
    on `waiting` (what its last step yielded): the task awaiting this carries the rest."""

    __slots__ = ("coro", "waiting")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        self.coro = coro
        self.waiting = waiting

    def __await__(self) -> Generator[Any, Any, None]:
        coro, waiting = self.coro, self.waiting
        self.coro = self.waiting = None  # type: ignore[assignment]  # one use only
        while True:
            try:
                sent = yield waiting
            except BaseException as exc:  # noqa: BLE001 - cancellation and errors go to the coroutine
                try:
                    waiting = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting = coro.send(sent)
                except StopIteration:
                    return


class Inbox:
    """See the module docstring. `on_error(exc)` gets an exception the handler raised (the
    transport then closes the connection); the messages still waiting are dropped with it."""

    __slots__ = ("_handler", "_limit", "_pause", "_resume", "_on_error", "_queue", "_task", "_paused",
                 "_closed", "_loop", "_name", "_resuming")

    def __init__(self, handler: Handler, *, limit: int = 4, pause: Callable[[], None] | None = None,
                 resume: Callable[[], None] | None = None, on_error: Callable[[BaseException], None] | None = None,
                 name: str = "inbox") -> None:
        self._handler = handler
        self._limit = limit
        self._pause = pause
        self._resume = resume
        self._on_error = on_error
        self._queue: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._name = name
        self._resuming: _Resume | None = None  # the last handler carried by a task

    @property
    def busy(self) -> bool:
        """A message's handler is waiting (later messages queue)."""
        return self._task is not None

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def deliver(self, text: str) -> None:
        if self._closed:
            return
        if self._task is not None:
            self._queue.append(text)
            if not self._paused and len(self._queue) > self._limit and self._pause is not None:
                self._paused = True
                self._pause()
            return
        coro = self._handler(text)
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - the transport decides (it closes the connection)
            self._failed(exc)
            return
        resume = self._resuming = _Resume(coro, waiting)
        self._task = self._loop.create_task(self._carry(resume), name=self._name)

    async def _carry(self, resume: _Resume) -> None:
        try:
            await resume
            queue, handler = self._queue, self._handler
            while queue and not self._closed:
                text = queue.pop(0)
                if self._paused and not queue:
                    self._paused = False
                    if self._resume is not None:
                        self._resume()
                await handler(text)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - see deliver
            self._failed(exc)
        finally:
            self._task = None
            if self._paused and not self._closed:
                self._paused = False
                if self._resume is not None:
                    self._resume()

    def _failed(self, exc: BaseException) -> None:
        self._queue.clear()
        if self._on_error is not None:
            self._on_error(exc)
        else:
            raise exc

    async def drain(self) -> None:
        """Wait until every message delivered so far has been handled."""
        while self._task is not None:
            task = self._task
            await asyncio.shield(task)

    async def close(self) -> None:
        """Drop what waits and stop the handler that is waiting (cancelled)."""
        self._closed = True
        self._queue.clear()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        resume, self._resuming = self._resuming, None
        coro = resume.coro if resume is not None else None
        if coro is not None:  # its task was cancelled before it ever ran: cancel the handler itself
            try:
                coro.throw(asyncio.CancelledError())
            except (asyncio.CancelledError, StopIteration):
                pass
            else:
                coro.close()
