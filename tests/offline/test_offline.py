"""Offline operation under faults, counted at the far end.

The gateway runs as its own process (so it can be killed with SIGKILL); the CSMS and the chargers
are built on the `ocpp` package. The CSMS is stopped and started again on the same port; what it
received is compared message by message with what the chargers sent.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable

import pytest
from ocpp import v16, v201

from tests.harness import GatewayProcess
from tests.offline.peers import CSMS_INTERVAL, Connected, CountingCsms, meter_value, now, until

FAST = {"reconnect_min": 0.2, "reconnect_max": 0.5, "call_timeout": 5.0}


def upstream(csms: CountingCsms, **extra: Any) -> dict[str, Any]:
    return {"upstream": {"url": csms.url, **FAST, **extra}}


def store_rows(gw: GatewayProcess, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{Path(gw.config['data_dir']) / 'gateway.sqlite3'}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


async def stop_csms(csms: CountingCsms, gw: GatewayProcess, links: int = 1) -> None:
    """Stop the CSMS and wait until the gateway has seen its `links` upstream links go: a message
    the charger sends in that moment would be relayed live and lost with the link (then replayed
    as a possible duplicate, which is right but not what these tests count)."""
    before = gw.logs().count("upstream offline")
    await csms.stop()
    await until(lambda: gw.logs().count("upstream offline") >= before + links, what="the gateway sees the outage")


async def boot16(cp: Any) -> Any:
    return await cp.call(v16.call.BootNotification(charge_point_vendor="ACME", charge_point_model="M1"))


async def test_v16_outage_session_reaches_the_csms_in_order_once_with_its_ids(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    csms = await CountingCsms().start()
    gw = gateway_factory(upstream(csms))
    cid = "OFF16"
    try:
        async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:
            assert (await boot16(cp)).interval == CSMS_INTERVAL  # the CSMS's answer
            assert (await cp.call(v16.call.Authorize(id_tag="TAG1"))).id_tag_info["status"] == "Accepted"
            await stop_csms(csms, gw)
            # -- the outage: the gateway answers, and keeps what the CSMS must get -------------------
            await cp.call(v16.call.StatusNotification(connector_id=1, error_code="NoError", status="Preparing"))
            start = await cp.call(v16.call.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=0,
                                                            timestamp=now()))
            local_id = start.transaction_id
            assert 2_000_000_000 <= local_id <= 2_147_483_646
            assert start.id_tag_info["status"] == "Accepted"  # learned from the CSMS's Authorize answer
            await cp.call(v16.call.StatusNotification(connector_id=1, error_code="NoError", status="Charging"))
            for i in range(1, 6):
                await cp.call(v16.call.MeterValues(connector_id=1, transaction_id=local_id,
                                                   meter_value=meter_value(str(100 * i))))
            await cp.call(v16.call.StopTransaction(meter_stop=600, timestamp=now(), transaction_id=local_id,
                                                   reason="Local"))
            await cp.call(v16.call.StatusNotification(connector_id=1, error_code="NoError", status="Available"))
            assert (await cp.call(v16.call.Heartbeat())).current_time
        # the charger reboots during the outage: booted locally
        async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:
            reboot = await boot16(cp)
            assert reboot.status == "Accepted"
        # ... and leaves: the replay must work without it
        before = len(csms.of(cid))
        await csms.start()
        await until(lambda: any(r.action == "StatusNotification" for r in csms.of(cid)[before:]), what="replay")
        replayed = csms.of(cid)[before:]
        assert [r.action for r in replayed] == [
            "BootNotification",  # the latest boot first
            "StartTransaction",
            *["MeterValues"] * 5,
            "StopTransaction",
            "StatusNotification",  # coalesced: only the latest per connector
        ]
        assert replayed[-1].payload["status"] == "Available"
        (csms_id,) = [tx for (c, tx) in csms.issued if c == cid]
        assert all(r.payload["transaction_id"] == csms_id for r in replayed[2:8])  # never the local id
        assert [r.payload["meter_value"][0]["sampled_value"][0]["value"] for r in replayed[2:7]] == [
            "100", "200", "300", "400", "500"]
        assert len({r.message_id for r in replayed}) == len(replayed)  # each exactly once
        assert not any(r.action == "Heartbeat" for r in replayed)  # never replayed
        await until(lambda: not store_rows(gw, "SELECT * FROM outbox"), what="outbox empty")
        # the mapping is retired after the acknowledged stop (kept for [offline].id_map_grace)
        assert [r[0] for r in store_rows(gw, "SELECT retired_at IS NOT NULL FROM tx_map")] == [1]
    finally:
        await csms.stop()


async def test_v201_outage_transaction_events_keep_seqno_and_are_marked_offline(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    csms = await CountingCsms().start()
    gw = gateway_factory(upstream(csms))
    cid = "OFF201"
    tx = {"transaction_id": "TX-201-A"}
    try:
        async with Connected(gw.url(cid), "ocpp2.0.1", cid) as cp:
            await cp.call(v201.call.BootNotification(charging_station={"model": "M", "vendor_name": "V"},
                                                     reason="PowerUp"))
            await stop_csms(csms, gw)
            events = [("Started", "CablePluggedIn")] + [("Updated", "MeterValuePeriodic")] * 4 + [("Ended", "EVDeparted")]
            stamps = []
            for seq, (event, trigger) in enumerate(events):
                stamps.append(now())
                await cp.call(v201.call.TransactionEvent(
                    event_type=event, timestamp=stamps[-1], trigger_reason=trigger, seq_no=seq, transaction_info=tx,
                    meter_value=[{"timestamp": stamps[-1], "sampledValue": [{"value": float(seq * 10)}]}]))
            before = len(csms.of(cid))
            await csms.start()
            await until(lambda: len(csms.of(cid, "TransactionEvent")) == len(events), what="replay")
        replayed = csms.of(cid, "TransactionEvent")
        assert [r.payload["seq_no"] for r in replayed] == list(range(len(events)))
        assert [r.payload["event_type"] for r in replayed] == [e for e, _ in events]
        assert [r.payload["timestamp"] for r in replayed] == stamps
        assert all(r.payload["offline"] is True for r in replayed)  # the gateway delayed them
        assert all(r.payload["transaction_info"]["transaction_id"] == "TX-201-A" for r in replayed)
        assert before == 1  # only the boot reached the CSMS before the outage
    finally:
        await csms.stop()


async def test_csms_commands_carry_the_chargers_id_for_a_transaction_started_offline(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    csms = await CountingCsms().start()
    gw = gateway_factory({**upstream(csms), "auth": {"unknown_id_tags": "accept"}})
    cid = "RS16"
    try:
        async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:
            await boot16(cp)
            await stop_csms(csms, gw)
            start = await cp.call(v16.call.StartTransaction(connector_id=1, id_tag="ANY", meter_start=0,
                                                            timestamp=now()))
            local_id = start.transaction_id
            await csms.start()
            await until(lambda: bool(csms.of(cid, "StartTransaction")) and cid in csms.cps, what="start replayed")
            (csms_id,) = [tx for (c, tx) in csms.issued if c == cid]
            assert csms_id != local_id
            # live traffic after the replay is rewritten too
            await until(lambda: not store_rows(gw, "SELECT * FROM outbox"), what="outbox drained")
            await cp.call(v16.call.MeterValues(connector_id=1, transaction_id=local_id, meter_value=meter_value("5")))
            await until(lambda: bool(csms.of(cid, "MeterValues")), what="meter values at the CSMS")
            assert csms.of(cid, "MeterValues")[-1].payload["transaction_id"] == csms_id
            # the CSMS stops it by its own id; the charger is told its own id
            answer = await csms.cps[cid].call(v16.call.RemoteStopTransaction(transaction_id=csms_id))
            assert answer.status == "Accepted"
            profile = {"chargingProfileId": 7, "transactionId": csms_id, "stackLevel": 1,
                       "chargingProfilePurpose": "TxProfile", "chargingProfileKind": "Relative",
                       "chargingSchedule": {"chargingRateUnit": "A",
                                            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}]}}
            await csms.cps[cid].call(v16.call.SetChargingProfile(connector_id=1, cs_charging_profiles=profile))
            assert cp.commands[0] == ("RemoteStopTransaction", {"transaction_id": local_id})
            assert cp.commands[1][1]["cs_charging_profiles"]["transaction_id"] == local_id
            await cp.call(v16.call.StopTransaction(meter_stop=10, timestamp=now(), transaction_id=local_id))
            await until(lambda: bool(csms.of(cid, "StopTransaction")), what="stop at the CSMS")
            assert csms.of(cid, "StopTransaction")[-1].payload["transaction_id"] == csms_id
            # the mapping is retired, kept for [offline].id_map_grace (late MeterValues, retried stops)
            await until(lambda: store_rows(gw, "SELECT retired_at IS NOT NULL FROM tx_map") == [(1,)],
                        what="mapping retired")
    finally:
        await csms.stop()


async def test_replayed_start_refused_by_the_csms_stops_the_running_transaction(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    csms = await CountingCsms().start()
    csms.blocked_tags.add("STOLEN")
    gw = gateway_factory({**upstream(csms), "auth": {"unknown_id_tags": "accept"}})
    cid = "INV16"
    try:
        async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:
            await boot16(cp)
            await stop_csms(csms, gw)
            start = await cp.call(v16.call.StartTransaction(connector_id=1, id_tag="STOLEN", meter_start=0,
                                                            timestamp=now()))
            assert start.id_tag_info["status"] == "Accepted"  # unknown tags accepted while offline
            await csms.start()
            await until(lambda: bool(cp.commands), what="RemoteStopTransaction from the gateway")
            assert cp.commands[0] == ("RemoteStopTransaction", {"transaction_id": start.transaction_id})
            # and the CSMS's verdict is now in the cache: the tag is refused locally from here on
            await stop_csms(csms, gw)
            again = await cp.call(v16.call.Authorize(id_tag="STOLEN"))
            assert again.id_tag_info["status"] == "Blocked"
        assert "answered the replayed start" in gw.logs()
    finally:
        await csms.stop()


async def test_a_csms_error_on_a_replayed_message_sets_it_aside_and_the_rest_continues(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    csms = await CountingCsms().start()
    csms.reject_meter_value = "300"
    gw = gateway_factory({**upstream(csms), "auth": {"unknown_id_tags": "accept"}})
    cid = "DL16"
    try:
        async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:
            await boot16(cp)
            await stop_csms(csms, gw)
            local_id = (await cp.call(v16.call.StartTransaction(connector_id=1, id_tag="A", meter_start=0,
                                                                timestamp=now()))).transaction_id
            for v in ("100", "200", "300", "400"):
                await cp.call(v16.call.MeterValues(connector_id=1, transaction_id=local_id, meter_value=meter_value(v)))
            await cp.call(v16.call.StopTransaction(meter_stop=400, timestamp=now(), transaction_id=local_id))
            await csms.start()
            await until(lambda: bool(csms.of(cid, "StopTransaction")), what="replay past the error")
            # acknowledged rows leave the outbox after the CSMS answered the last one: wait for that too
            await until(lambda: not store_rows(gw, "SELECT 1 FROM outbox WHERE state = 'pending'"),
                        what="acknowledged rows deleted")
        values = [r.payload["meter_value"][0]["sampled_value"][0]["value"] for r in csms.of(cid, "MeterValues")]
        assert values == ["100", "200", "300", "400"]  # 300 was tried once, refused, and not retried
        dead = store_rows(gw, "SELECT action, state, error FROM outbox")
        assert dead == [("MeterValues", "dead", dead[0][2])] and "GenericError" in dead[0][2]
        assert "dead letter" in gw.logs()
    finally:
        await csms.stop()


async def test_gateway_killed_during_the_outage_and_during_replay_loses_nothing(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    csms = await CountingCsms(delay=0.15).start()
    gw = gateway_factory({**upstream(csms), "auth": {"unknown_id_tags": "accept"}})
    cid = "KILL16"
    sent: list[str] = []  # what the charger was told was accepted, by meter value
    try:
        async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:
            await boot16(cp)
            await stop_csms(csms, gw)
            local_id = (await cp.call(v16.call.StartTransaction(connector_id=1, id_tag="K", meter_start=0,
                                                                timestamp=now()))).transaction_id
            for i in range(1, 4):
                await cp.call(v16.call.MeterValues(connector_id=1, transaction_id=local_id,
                                                   meter_value=meter_value(str(i))))
                sent.append(str(i))
        gw.kill()  # SIGKILL during the outage
        gw.start()
        async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:  # the charger reconnects
            for i in range(4, 9):
                await cp.call(v16.call.MeterValues(connector_id=1, transaction_id=local_id,
                                                   meter_value=meter_value(str(i))))
                sent.append(str(i))
            gw.kill()  # SIGKILL again, with the charger connected
        gw.start()
        async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:
            await cp.call(v16.call.StopTransaction(meter_stop=8, timestamp=now(), transaction_id=local_id))
        await csms.start()
        # kill it while it replays (the CSMS is slow: one message every 0.15 s)
        await until(lambda: len(csms.of(cid, "MeterValues")) >= 3, what="replay under way")
        gw.kill()
        gw.start()
        await until(lambda: bool(csms.of(cid, "StopTransaction")), timeout=30, what="replay after the restart")
        got = csms.of(cid)[1:]  # after the first boot
        keys = [(r.action, r.payload["meter_value"][0]["sampled_value"][0]["value"] if r.action == "MeterValues"
                 else "") for r in got]
        deduped = [k for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
        assert deduped == [("StartTransaction", "")] + [("MeterValues", v) for v in sent] + [("StopTransaction", "")]
        duplicates = len(keys) - len(deduped)
        assert duplicates <= 1  # at most the one message in flight when the gateway died
        if duplicates:
            twice = [got[i] for i in range(1, len(keys)) if keys[i] == keys[i - 1]][0]
            assert sum(1 for r in got if r.message_id == twice.message_id) == 2  # same id: detectable
            assert "may receive it twice" in gw.logs()
        (csms_id,) = [tx for (c, tx) in csms.issued if c == cid]
        assert all(r.payload["transaction_id"] == csms_id for r in got[1:])
    finally:
        await csms.stop()


async def test_gateway_killed_during_a_fast_replay_of_plain_messages_loses_nothing(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """Plain rows (1.6 MeterValues without a transaction) replay on the fast path, where the CSMS's
    answer itself sends the next row right after the acknowledgement is committed: SIGKILL in the
    middle of such a run loses nothing and repeats at most the one message in flight, same id."""
    csms = await CountingCsms(delay=0.05).start()
    gw = gateway_factory(upstream(csms))
    cid = "FAST16"
    sent = [str(i) for i in range(1, 41)]
    try:
        async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:
            await boot16(cp)
            await stop_csms(csms, gw)
            for value in sent:
                await cp.call(v16.call.MeterValues(connector_id=1, meter_value=meter_value(value)))
        await csms.start()
        await until(lambda: len(csms.of(cid, "MeterValues")) >= 10, what="replay under way")
        gw.kill()
        gw.start()
        await until(lambda: {r.payload["meter_value"][0]["sampled_value"][0]["value"]
                             for r in csms.of(cid, "MeterValues")} >= set(sent), timeout=30, what="every value")
        got = csms.of(cid, "MeterValues")
        keys = [r.payload["meter_value"][0]["sampled_value"][0]["value"] for r in got]
        deduped = [k for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
        assert deduped == sent
        assert len(keys) - len(deduped) <= 1  # at most the one in flight when the gateway died
        if len(keys) > len(deduped):
            twice = [got[i] for i in range(1, len(keys)) if keys[i] == keys[i - 1]][0]
            assert sum(1 for r in got if r.message_id == twice.message_id) == 2  # same id: detectable
            assert "may receive it twice" in gw.logs()
    finally:
        await csms.stop()


async def test_strict_mode_closes_the_charger_and_refuses_it_until_the_csms_is_back(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    from websockets.exceptions import InvalidStatus

    csms = await CountingCsms().start()
    gw = gateway_factory({**upstream(csms), "chargers": {"STR1": {"offline_mode": "strict"}}})
    try:
        conn = Connected(gw.url("STR1"), "ocpp1.6", "STR1")
        cp = await conn.__aenter__()
        await boot16(cp)
        await csms.stop()
        await until(lambda: conn.ws is not None and conn.ws.close_code is not None, what="charger closed")
        assert conn.ws is not None and conn.ws.close_code == 1013
        await conn.__aexit__(None, None, None)
        with pytest.raises(InvalidStatus) as info:
            async with Connected(gw.url("STR1"), "ocpp1.6", "STR1"):
                pass
        assert info.value.response.status_code == 503
        await csms.start()
        async with Connected(gw.url("STR1"), "ocpp1.6", "STR1") as cp:
            assert (await boot16(cp)).interval == CSMS_INTERVAL
        # nothing was answered by the gateway in strict mode
        assert store_rows(gw, "SELECT * FROM outbox") == []
    finally:
        await csms.stop()


async def test_outbox_bound_refuses_meter_values_but_never_a_start_or_stop(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    csms = await CountingCsms().start()
    gw = gateway_factory({**upstream(csms), "auth": {"unknown_id_tags": "accept"},
                          "offline": {"max_messages_per_charger": 10}})
    cid = "BOUND"
    try:
        async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:
            await boot16(cp)
            await stop_csms(csms, gw)
            tx = (await cp.call(v16.call.StartTransaction(connector_id=1, id_tag="A", meter_start=0,
                                                          timestamp=now()))).transaction_id
            for i in range(1, 13):  # every one is answered, even those not kept
                await cp.call(v16.call.MeterValues(connector_id=1, transaction_id=tx, meter_value=meter_value(str(i))))
            await cp.call(v16.call.StopTransaction(meter_stop=12, timestamp=now(), transaction_id=tx))
        rows = [r[0] for r in store_rows(gw, "SELECT action FROM outbox ORDER BY seq")]
        assert rows == ["StartTransaction"] + ["MeterValues"] * 9 + ["StopTransaction"]
        assert gw.logs().count("outbox full") == 3
        await csms.start()
        await until(lambda: bool(csms.of(cid, "StopTransaction")), what="replay")
        assert len(csms.of(cid, "MeterValues")) == 9
    finally:
        await csms.stop()


async def test_once_one_link_gets_through_the_others_stop_waiting_out_their_backoff(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """Backoff after failed dials is long here (30-60 s); when a new charger's dial reaches the
    CSMS, the chargers waiting out their backoff dial at once and their outboxes replay."""
    csms = await CountingCsms().start()
    await csms.stop()
    gw = gateway_factory(upstream(csms, reconnect_min=30.0, reconnect_max=60.0, connect_timeout=2.0))
    try:
        for cid in ("WAIT1", "WAIT2"):
            async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:
                await cp.call(v16.call.StatusNotification(connector_id=1, error_code="NoError", status="Faulted"))
        await until(lambda: gw.logs().count("upstream connect failed") >= 2, what="both dials failed")
        await csms.start()
        async with Connected(gw.url("FIRST"), "ocpp1.6", "FIRST") as cp:
            await boot16(cp)
            # well before the shortest backoff (15 s) could have run out
            await until(lambda: all(csms.of(cid, "StatusNotification") for cid in ("WAIT1", "WAIT2")),
                        timeout=10.0, what="the waiting chargers' outboxes replayed")
    finally:
        await csms.stop()
