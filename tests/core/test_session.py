"""The charger session without sockets: real sessions, hub, relay decisions, replay and link keeper
over in-memory ports (tests/fakes.py). Ordering, one CALL in flight per direction, the 1.6 id map
and the replay, each checked frame by frame as the charger and the CSMS see them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from gateway.protocol.relay import UpstreamState
from tests.fakes import STEP, CsmsEnd, Site, joined, settings

LOCAL = 2_000_000_000  # the first 1.6 transaction id the gateway issues offline (config default)
NOW = "2026-01-01T00:00:00Z"
BOOT = {"chargePointVendor": "V", "chargePointModel": "M"}
START = {"connectorId": 1, "idTag": "T1", "meterStart": 0, "timestamp": NOW}


def meter(value: int, tx: int | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"connectorId": 1, "meterValue": [{"timestamp": NOW,
                                                                 "sampledValue": [{"value": str(value)}]}]}
    if tx is not None:
        payload["transactionId"] = tx
    return payload


async def until(check: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(STEP):
        while not check():
            await asyncio.sleep(0.002)  # bounded by the timeout above
    assert check(), what


async def online(site: Site) -> CsmsEnd:
    csms = await site.connector.next_end()
    await until(lambda: site.s.upstream_state is UpstreamState.ONLINE, "the upstream link is up")
    return csms


async def quiet(end: Any) -> bool:
    """Nothing more arrives at `end` (a CsmsEnd or a MemoryCharger) while the loop runs a while."""
    await asyncio.sleep(0.02)
    return bool(end.frames.empty())


async def test_charger_calls_reach_the_csms_in_order_one_at_a_time() -> None:
    site = await Site.start()
    try:
        csms = await online(site)
        for i in range(4):
            await site.call(f"h{i}", "Heartbeat", {})

        for i in range(4):
            sent = await csms.next()
            assert sent == [2, f"h{i}", "Heartbeat", {}]
            assert await quiet(csms), "a second CALL went to the CSMS before the first was answered"
            csms.result(f"h{i}", {"currentTime": NOW})
            assert await site.charger.next() == [3, f"h{i}", {"currentTime": NOW}]
        assert len(site.s.to_upstream) == 0
    finally:
        await site.close()


async def test_csms_and_gateway_calls_reach_the_charger_one_at_a_time() -> None:
    site = await Site.start()
    try:
        csms = await online(site)
        reset = asyncio.create_task(site.s.call_charger("Reset", {"type": "Soft"}))
        first = await site.charger.next()
        csms.send([2, "c1", "GetConfiguration", {}])
        csms.send([2, "c2", "ClearCache", {}])

        assert first[2:] == ["Reset", {"type": "Soft"}]
        assert await quiet(site.charger), "a CSMS CALL reached the charger while the gateway's was in flight"
        await site.reply(first[1], {"status": "Accepted"})
        assert await reset == {"status": "Accepted"}
        assert await site.charger.next() == [2, "c1", "GetConfiguration", {}]
        assert await quiet(site.charger)
        assert await quiet(csms), "the answer to the gateway's own call must not reach the CSMS"
        await site.reply("c1", {"configurationKey": []})
        assert await csms.next() == [3, "c1", {"configurationKey": []}]
        assert await site.charger.next() == [2, "c2", "ClearCache", {}]
        await site.reply("c2", {"status": "Accepted"})
        assert await csms.next() == [3, "c2", {"status": "Accepted"}]
    finally:
        await site.close()


async def test_offline_transaction_gets_a_local_id_that_the_csms_never_sees() -> None:
    site = await Site.start(csms_down=True)
    try:
        await until(lambda: site.s.upstream_state is UpstreamState.OFFLINE, "the dial failed")
        await site.call("b1", "BootNotification", BOOT)
        assert (await site.charger.next())[2]["status"] == "Accepted"
        await site.call("s1", "StartTransaction", START)
        started = await site.charger.next()
        assert started[:2] == [3, "s1"] and started[2]["transactionId"] == LOCAL
        await site.call("m1", "MeterValues", meter(5, LOCAL))
        assert await site.charger.next() == [3, "m1", {}]

        site.connector.down = False
        csms = await site.connector.next_end()
        boot = await csms.next()  # the latest boot first, then the outbox in order
        assert boot[2:] == ["BootNotification", BOOT]
        csms.result(boot[1], {"status": "Accepted", "currentTime": NOW, "interval": 300})
        start = await csms.next()
        assert start[2:] == ["StartTransaction", START]
        assert await quiet(csms)
        csms.result(start[1], {"transactionId": 777, "idTagInfo": {"status": "Accepted"}})
        replayed = await csms.next()
        assert replayed[2:] == ["MeterValues", meter(5, 777)]  # the CSMS's id, not the local one
        csms.result(replayed[1], {})
        await until(lambda: not site.s.backlog, "the outbox is replayed")
        assert site.store.tx == {("CP1", LOCAL): 777}

        csms.send([2, "r1", "RemoteStopTransaction", {"transactionId": 777}])
        assert await site.charger.next() == [2, "r1", "RemoteStopTransaction", {"transactionId": LOCAL}]
        await site.reply("r1", {"status": "Accepted"})
        assert await csms.next() == [3, "r1", {"status": "Accepted"}]

        stop = {"transactionId": LOCAL, "meterStop": 9, "timestamp": NOW}
        await site.call("st", "StopTransaction", stop)
        assert await csms.next() == [2, "st", "StopTransaction", {**stop, "transactionId": 777}]
        csms.result("st", {})
        assert await site.charger.next() == [3, "st", {}]
        # the finished mapping is kept for [offline].id_map_grace (late MeterValues, retried stops)
        await until(lambda: LOCAL in site.s.relay.tx.retired, "the stopped transaction's mapping is retired")
        await until(lambda: (site.s.charger_id, LOCAL) in site.store.retired, "... in the store too")
    finally:
        await site.close()


async def test_replay_keeps_order_and_one_call_in_flight_and_lets_live_calls_in_between() -> None:
    site = await Site.start(csms_down=True)
    try:
        await until(lambda: site.s.upstream_state is UpstreamState.OFFLINE, "the dial failed")
        n = 120  # more than the first page (50): the next pages are read ahead
        for i in range(n):
            await site.call(f"m{i}", "MeterValues", meter(i))
            assert await site.charger.next() == [3, f"m{i}", {}]
        assert len(site.store.pending("CP1")) == n

        site.connector.down = False
        csms = await site.connector.next_end()
        for i in range(n):
            sent = await csms.next()
            assert sent[2:] == ["MeterValues", meter(i)], f"row {i} out of order"
            if i % 20 == 0:
                assert await quiet(csms), "two replayed CALLs in flight"
            if i == 60:  # a live call from the charger waits for the row in flight, not for the backlog
                await site.call("hb", "Heartbeat", {})
                assert await quiet(csms)
                csms.result(sent[1], {})
                assert await csms.next() == [2, "hb", "Heartbeat", {}]
                csms.result("hb", {"currentTime": NOW})
                assert await site.charger.next() == [3, "hb", {"currentTime": NOW}]
                continue
            csms.result(sent[1], {})
        await until(lambda: not site.s.backlog, "the outbox is replayed")

        assert site.store.pending("CP1") == []
        assert site.s.counters["replayed"] == n
        # the steady state ran on the link's synchronous lane: most rows written from the commit
        # callback and most answers taken as they arrived
        assert csms.link.sent_now > n // 2
        assert csms.link.taken_fast > n // 2
        assert await quiet(csms)
    finally:
        await site.close()


async def test_a_call_the_csms_does_not_answer_in_time_is_answered_by_the_gateway() -> None:
    site = await Site.start(settings(upstream={"call_timeout": 0.3}))
    try:
        csms = await online(site)
        await site.call("a1", "Authorize", {"idTag": "T9"})
        assert (await csms.next())[:3] == [2, "a1", "Authorize"]

        answered = await site.charger.next()  # after call_timeout, from the gateway

        assert answered == [3, "a1", {"idTagInfo": {"status": "Invalid"}}]  # unknown tags are refused locally
        await site.call("h1", "Heartbeat", {})
        assert await csms.next() == [2, "h1", "Heartbeat", {}]  # the line is free again
        csms.result("a1", {"idTagInfo": {"status": "Accepted"}})  # too late: dropped
        csms.result("h1", {"currentTime": NOW})
        assert await site.charger.next() == [3, "h1", {"currentTime": NOW}]
        assert await quiet(site.charger)
    finally:
        await site.close()


async def test_a_start_in_flight_when_the_link_drops_is_kept_and_replayed_with_its_id() -> None:
    site = await Site.start()
    try:
        csms = await online(site)
        await site.call("s1", "StartTransaction", START)
        assert (await csms.next())[:3] == [2, "s1", "StartTransaction"]
        site.connector.down = True
        await csms.drop()

        answered = await site.charger.next()  # the gateway answers and keeps it for the CSMS
        assert answered[:2] == [3, "s1"] and answered[2]["transactionId"] == LOCAL
        site.connector.down = False
        again = await site.connector.next_end()
        replayed = await again.next()
        assert replayed == [2, "s1", "StartTransaction", START]  # the same message id: the CSMS can tell
        assert site.s.counters["possible_duplicates"] == 1
        again.result("s1", {"transactionId": 31, "idTagInfo": {"status": "Accepted"}})
        await until(lambda: not site.s.backlog, "the outbox is replayed")
        assert site.store.tx == {("CP1", LOCAL): 31}
    finally:
        await site.close()


async def test_two_sessions_joined_in_memory() -> None:
    """Gateway A relays a charger to gateway B, which answers as the CSMS: two real sessions, each
    with its queues, talk through an in-memory link (the h11 ConnectionPair pattern)."""
    site, b = await joined()
    try:
        await until(lambda: site.s.upstream_state is UpstreamState.ONLINE, "A reached B")
        await until(lambda: "CP1" in b.sessions, "B has the charger's session")
        for i, (action, payload) in enumerate([("BootNotification", BOOT), ("StartTransaction", START),
                                               ("MeterValues", meter(3, 1)), ("Heartbeat", {})]):
            await site.call(f"x{i}", action, payload)
        answers = [await site.charger.next() for _ in range(4)]

        assert [a[1] for a in answers] == ["x0", "x1", "x2", "x3"]  # in order
        assert answers[0][2]["interval"] == 300  # B's own BootNotification answer
        assert answers[1][2]["transactionId"] == 1  # B's standalone transaction counter
        bridge = site.hub.connector.bridges[0]  # type: ignore[attr-defined]
        assert [f[1] for f in bridge.frames_to_b] == ["x0", "x1", "x2", "x3"]

        # B calls the charger through A: B's CALL is a CSMS call for A
        b_session = b.sessions["CP1"]
        got = asyncio.create_task(b_session.call_charger("GetConfiguration", {"key": ["HeartbeatInterval"]}))
        asked = await site.charger.next()
        assert asked[2:] == ["GetConfiguration", {"key": ["HeartbeatInterval"]}]
        assert len(site.s.to_charger) == 1 and len(b_session.to_charger) == 1  # in flight on both sides
        await site.reply(asked[1], {"configurationKey": [{"key": "HeartbeatInterval", "readonly": False,
                                                          "value": "300"}]})
        assert (await got)["configurationKey"][0]["value"] == "300"
        assert len(site.s.to_charger) == 0 and len(b_session.to_charger) == 0
    finally:
        await site.close()
        await b.close()


async def test_the_answer_budget_answers_in_time_and_takes_the_late_answer_for_the_stored_row() -> None:
    """[upstream].answer_within: the charger gets the gateway's answer when the CSMS is late, once;
    the start stays in flight, the link is probed at once; the CSMS's late answer binds the local id
    and is the stored row's acknowledgement (nothing is sent again)."""
    site = await Site.start(settings(upstream={"answer_within": 0.2, "call_timeout": 5.0}))
    try:
        csms = await online(site)
        await site.call("s1", "StartTransaction", START)
        assert (await csms.next())[:3] == [2, "s1", "StartTransaction"]

        answered = await site.charger.next()  # after answer_within, from the gateway
        assert answered[:2] == [3, "s1"] and answered[2]["transactionId"] == LOCAL
        assert csms.link.probes == 1 and site.s.awaiting_late
        await site.call("m1", "MeterValues", meter(5, LOCAL))  # kept behind the start, answered at once
        assert await site.charger.next() == [3, "m1", {}]

        csms.result("s1", {"transactionId": 31, "idTagInfo": {"status": "Accepted"}})  # late
        replayed = await csms.next()  # the meter value, under the CSMS's id; the start is not sent again
        assert replayed[2] == "MeterValues" and replayed[3]["transactionId"] == 31
        csms.result(replayed[1], {})
        await until(lambda: not site.s.backlog, "the outbox is replayed")
        assert site.store.tx == {("CP1", LOCAL): 31}
        assert await quiet(site.charger) and await quiet(csms)  # one answer per charger CALL
    finally:
        await site.close()


async def test_each_call_gets_its_own_budget_behind_the_sessions_one_timer() -> None:
    """The budget's one timer per session: armed for the first call, which is answered in time; it
    then runs out for nothing and is armed again for the next call's own deadline. Every call is
    answered by the gateway no earlier than its own budget (the one in flight and the one queued
    behind it alike), once, and the CSMS's late answers are never relayed."""
    within = 0.3
    site = await Site.start(settings(upstream={"answer_within": within, "call_timeout": 5.0}))
    loop = asyncio.get_running_loop()
    try:
        csms = await online(site)
        await site.call("h1", "Heartbeat", {})
        assert (await csms.next())[:2] == [2, "h1"]
        csms.result("h1", {"currentTime": "2026-01-01T00:00:00Z"})  # in time: relayed, its budget disarmed
        assert (await site.charger.next())[:2] == [3, "h1"]
        await asyncio.sleep(within / 2)

        sent: dict[str, float] = {}
        sent["h2"] = loop.time()
        await site.call("h2", "Heartbeat", {})  # in flight, the CSMS silent
        assert (await csms.next())[:2] == [2, "h2"]
        await asyncio.sleep(within / 3)
        sent["h3"] = loop.time()
        await site.call("h3", "Heartbeat", {})  # queued behind h2
        for message_id in ("h2", "h3"):  # the gateway's answers, in order, each at its own deadline
            answer = await site.charger.next()
            assert answer[:2] == [3, message_id]
            assert loop.time() - sent[message_id] >= within - 0.01, f"{message_id} answered before its budget"
        csms.result("h2", {"currentTime": "2026-01-01T00:00:00Z"})  # late: the charger is not told again
        assert await quiet(site.charger)
        assert not site.s.budget.armed
    finally:
        await site.close()


async def test_a_late_callerror_sets_the_stored_row_aside_and_a_timed_out_call_probes_the_link() -> None:
    site = await Site.start(settings(upstream={"answer_within": 0.1, "call_timeout": 0.6}))
    try:
        csms = await online(site)
        await site.call("m1", "MeterValues", meter(1, 7))
        assert (await csms.next())[:2] == [2, "m1"]
        assert await site.charger.next() == [3, "m1", {}]  # answer_within: the gateway's answer
        csms.send([4, "m1", "InternalError", "no", {}])  # late CALLERROR: a dead letter, never sent again
        await until(lambda: any(r.state == "dead" for r in site.store.rows.values()), "the row is set aside")
        assert await quiet(csms) and await quiet(site.charger)

        await site.call("h1", "Heartbeat", {})
        assert (await csms.next())[:2] == [2, "h1"]
        assert (await site.charger.next())[:2] == [3, "h1"]  # answer_within
        probes = csms.link.probes
        await until(lambda: csms.link.probes > probes, "call_timeout probes the link")
    finally:
        await site.close()
