"""adapters/inbox.py: eager, ordered delivery of a connection's messages."""

from __future__ import annotations

import asyncio

import pytest

from adapters.inbox import Inbox


async def test_a_handler_that_never_waits_runs_inside_deliver_without_a_task() -> None:
    seen: list[str] = []

    async def handler(text: str) -> None:
        seen.append(text)

    inbox = Inbox(handler)
    before = len(asyncio.all_tasks())
    for i in range(5):
        inbox.deliver(str(i))
        assert seen[-1] == str(i)  # handled before deliver returned
    assert not inbox.busy and len(asyncio.all_tasks()) == before


async def test_messages_keep_their_order_when_some_handlers_wait() -> None:
    seen: list[str] = []
    gate = asyncio.Event()

    async def handler(text: str) -> None:
        if text == "1":
            await gate.wait()  # the first one waits: the rest must queue behind it
        seen.append(text)

    paused: list[str] = []
    inbox = Inbox(handler, limit=2, pause=lambda: paused.append("pause"), resume=lambda: paused.append("resume"))
    for i in range(6):
        inbox.deliver(str(i))
    assert seen == ["0"] and inbox.busy and inbox.waiting == 4
    assert paused == ["pause"]  # more than `limit` waiting: the transport stops reading
    gate.set()
    await inbox.drain()
    assert seen == [str(i) for i in range(6)]
    assert paused == ["pause", "resume"] and not inbox.busy
    inbox.deliver("6")  # idle again: eager again
    assert seen[-1] == "6"


async def test_an_error_reaches_on_error_and_drops_what_waits() -> None:
    errors: list[BaseException] = []
    gate = asyncio.Event()

    async def handler(text: str) -> None:
        if text == "bad":
            await gate.wait()
            raise ValueError("broken")
        if text == "bad-now":
            raise KeyError("at once")

    inbox = Inbox(handler, on_error=errors.append)
    inbox.deliver("bad-now")
    assert isinstance(errors[-1], KeyError)
    inbox.deliver("bad")
    inbox.deliver("later")
    gate.set()
    await inbox.drain()
    assert isinstance(errors[-1], ValueError) and inbox.waiting == 0


async def test_close_cancels_the_waiting_handler() -> None:
    cancelled = asyncio.Event()

    async def handler(text: str) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    inbox = Inbox(handler)
    inbox.deliver("x")
    inbox.deliver("y")
    await inbox.close()
    assert cancelled.is_set() and not inbox.busy and inbox.waiting == 0
    inbox.deliver("z")  # closed: ignored
    assert not inbox.busy


@pytest.mark.parametrize("rounds", [1, 3])
async def test_a_handler_that_waits_several_times_gets_every_result(rounds: int) -> None:
    results: list[int] = []
    loop = asyncio.get_running_loop()

    async def handler(text: str) -> None:
        total = 0
        for i in range(rounds):
            fut: asyncio.Future[int] = loop.create_future()
            loop.call_soon(fut.set_result, i + 1)
            total += await fut
        results.append(total)

    inbox = Inbox(handler)
    inbox.deliver("a")
    inbox.deliver("b")
    await inbox.drain()
    assert results == [sum(range(1, rounds + 1))] * 2
