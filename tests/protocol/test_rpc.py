"""The one-outstanding-CALL queue, driven with explicit times."""

import pytest

from gateway.protocol.rpc import CallQueue, MessageIds, PendingCall, QueueFull


def call(mid: str, timeout: float = 10.0) -> PendingCall:
    return PendingCall(message_id=mid, action="A", frame=f"[2,\"{mid}\",\"A\",{{}}]", timeout=timeout)


def test_one_in_flight_fifo() -> None:
    q = CallQueue()
    assert q.submit(call("a"), 0.0).message_id == "a"
    assert q.submit(call("b"), 0.1) is None
    assert q.submit(call("c"), 0.2) is None
    assert len(q) == 3
    done, nxt = q.complete("b", 1.0)  # not the one in flight
    assert done is None and nxt is None
    done, nxt = q.complete("a", 1.0)
    assert done.message_id == "a" and nxt.message_id == "b"
    done, nxt = q.complete("b", 2.0)
    assert nxt.message_id == "c"
    assert q.complete("c", 3.0)[1] is None and len(q) == 0


def test_bounded() -> None:
    q = CallQueue(max_queued=2)
    q.submit(call("a"), 0)  # goes in flight
    q.submit(call("b"), 0)
    q.submit(call("c"), 0)
    with pytest.raises(QueueFull):
        q.submit(call("d"), 0)


def test_deadlines_are_data() -> None:
    q = CallQueue()
    q.submit(call("a", timeout=5), 0.0)
    q.submit(call("b", timeout=3), 1.0)
    assert q.next_deadline() == 4.0  # b may not wait past 1 + 3
    expired, nxt = q.expire(4.0)
    assert [c.message_id for c in expired] == ["b"] and nxt is None
    expired, nxt = q.expire(5.0)
    assert [c.message_id for c in expired] == ["a"]
    assert q.next_deadline() is None


def test_paused_queue_holds_calls() -> None:
    q = CallQueue(paused=True)
    assert q.submit(call("a"), 0) is None
    assert q.resume(1.0).message_id == "a"
    lost = q.pause()
    assert lost.message_id == "a" and q.in_flight is None


def test_gateway_ids_are_distinct_and_short() -> None:
    ids = MessageIds("abcdef012345")
    a, b = ids.next(), ids.next()
    assert a != b and ids.owns(a) and not ids.owns("c1f3e9a4-0000-4000-8000-000000000000")
    assert len(a) <= 36 and a.startswith("gw-")
