"""Offline operation at its edges, counted at the far end (CSMS on loopback, gateway a process):
a CSMS that answers late, a charger that comes back in another OCPP version, ids the CSMS must
know, every status of an outage, the `offline` flag of the transaction log, and a site that
notices the CSMS's return within seconds whatever its backoff."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Callable

import pytest
from ocpp import v16, v201

from tests.harness import GatewayProcess
from tests.offline.peers import Connected, meter_value, now, until
from tests.offline.test_offline import stop_csms, store_rows
from tests.uplink.peers import LoopbackCsms, Timed

pytestmark = pytest.mark.timeout(180)
LOCAL = range(2_000_000_000, 2_147_483_647)  # the gateway's own 1.6 ids (the default range)
FAST = {"reconnect_min": 0.2, "reconnect_max": 0.5}
ANSWER_WITHIN, LATE = 3.0, 5.0  # the late-start test: a CSMS answer that comes after answer_within


def api(gw: GatewayProcess, path: str) -> Any:
    status, body = gw.api("GET", path, timeout=5)
    assert status == 200, (path, status, body)
    return body


def metrics(gw: GatewayProcess) -> str:
    return str(api(gw, "/metrics"))


def tx_ids(csms: LoopbackCsms, cid: str) -> list[int]:
    return [r.payload["transaction_id"] for r in csms.of(cid) if "transaction_id" in r.payload
            and r.action in ("MeterValues", "StopTransaction")]


async def boot16(cp: Any) -> Any:
    return await cp.call(v16.call.BootNotification(charge_point_vendor="ACME", charge_point_model="M1"))


async def test_a_late_start_answer_binds_the_local_id_and_is_never_sent_twice(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """The CSMS answers the start after answer_within: the gateway has answered it with its own id,
    binds that id to the CSMS's when the late answer comes and never sends the start again. The
    mechanism, not the default: answer_within is 3 s here (default 8 s), the CSMS takes 5 s."""
    csms = await LoopbackCsms(slow={"StartTransaction": LATE}).start()
    gw = gateway_factory({"upstream": {"url": csms.url, "answer_within": ANSWER_WITHIN}})
    cid = "LATE1"
    timed = Timed()
    try:
        async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:
            await timed(cp, v16.call.BootNotification(charge_point_vendor="ACME", charge_point_model="M1"))
            await timed(cp, v16.call.Authorize(id_tag="TAG1"))  # the gateway learns the tag from the CSMS
            start = await timed(cp, v16.call.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=0,
                                                               timestamp=now()))
            local = start.transaction_id
            assert local in LOCAL, "answered by the gateway within the budget, with its own id"
            assert start.id_tag_info["status"] == "Accepted"
            for v in (1, 2):  # while the CSMS still works on the start: kept, in order
                await timed(cp, v16.call.MeterValues(connector_id=1, transaction_id=local,
                                                     meter_value=meter_value(str(v))))
            await until(lambda: len(csms.of(cid, "MeterValues")) == 2, 30, "the meter values at the CSMS")
            await timed(cp, v16.call.MeterValues(connector_id=1, transaction_id=local, meter_value=meter_value("3")))
            await timed(cp, v16.call.StopTransaction(transaction_id=local, meter_stop=3, timestamp=now()))
            await until(lambda: len(csms.of(cid, "StopTransaction")) == 1, 30, "the stop at the CSMS")
        assert len(csms.of(cid, "StartTransaction")) == 1, "the late answer came: no second copy"
        (csms_id,) = [tx for (c, tx) in csms.issued if c == cid]
        assert tx_ids(csms, cid) == [csms_id] * 4
        values = [r.payload["meter_value"][0]["sampled_value"][0]["value"] for r in csms.of(cid, "MeterValues")]
        assert values == ["1", "2", "3"]
        print(f"\nFIGURES late CSMS ({LATE:g} s, answer_within {ANSWER_WITHIN:g} s): slowest charger answer "
              f"{timed.slowest:.2f} s")
        assert timed.slowest <= ANSWER_WITHIN + 1, timed.answers
        (row,) = [t for t in api(gw, "/api/v1/transactions")["transactions"] if t["charger_id"] == cid]
        assert row["offline"] is True  # the gateway answered its start
    finally:
        await csms.stop()


async def test_a_16_backlog_survives_the_charger_returning_as_201(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    csms = await LoopbackCsms().start()
    gw = gateway_factory({"upstream": {"url": csms.url, **FAST}})
    cid = "FW1"
    try:
        async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:
            await boot16(cp)
            await stop_csms(csms, gw)
            local = (await cp.call(v16.call.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=0,
                                                              timestamp=now()))).transaction_id
            await cp.call(v16.call.MeterValues(connector_id=1, transaction_id=local, meter_value=meter_value("5")))
            await cp.call(v16.call.StopTransaction(transaction_id=local, meter_stop=9, timestamp=now()))
        # a firmware update: the same charger comes back speaking 2.0.1, the CSMS still away
        async with Connected(gw.url(cid), "ocpp2.0.1", cid) as cp:
            await cp.call(v201.call.BootNotification(charging_station={"model": "M", "vendor_name": "V"},
                                                     reason="FirmwareUpdate"))
            await cp.call(v201.call.TransactionEvent(event_type="Started", timestamp=now(), trigger_reason="Authorized",
                                                     seq_no=0, transaction_info={"transaction_id": "T2"}))
            before = len(csms.received)
            await csms.start()
            await until(lambda: len(csms.of(cid, "TransactionEvent")) == 1, 30, "the 2.0.1 event at the CSMS")
            got = list(zip([r.action for r in csms.received[before:]], csms.protocols[before:]))
        # the 1.6 rows over a 1.6 link, in order, before the charger's own 2.0.1 messages
        assert [g for g in got if g[0] != "BootNotification"] == [
            ("StartTransaction", "ocpp1.6"), ("MeterValues", "ocpp1.6"), ("StopTransaction", "ocpp1.6"),
            ("TransactionEvent", "ocpp2.0.1")], got
        (csms_id,) = [tx for (c, tx) in csms.issued if c == cid]
        assert tx_ids(csms, cid) == [csms_id, csms_id]
        assert not store_rows(gw, "SELECT seq FROM outbox WHERE state = 'dead'")
    finally:
        await csms.stop()


async def test_a_csms_refusing_the_stored_version_keeps_the_rows_and_says_so(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    csms = await LoopbackCsms().start()
    gw = gateway_factory({"upstream": {"url": csms.url, **FAST}})
    cid = "FW2"
    try:
        async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:
            await boot16(cp)
            await stop_csms(csms, gw)
            local = (await cp.call(v16.call.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=0,
                                                              timestamp=now()))).transaction_id
            await cp.call(v16.call.StopTransaction(transaction_id=local, meter_stop=9, timestamp=now()))
        refusing = LoopbackCsms(subprotocols=("ocpp2.0.1",))
        refusing.port = csms.port
        await refusing.start()  # back, but only for 2.0.1
        try:
            async with Connected(gw.url(cid), "ocpp2.0.1", cid) as cp:
                await cp.call(v201.call.BootNotification(charging_station={"model": "M", "vendor_name": "V"},
                                                         reason="FirmwareUpdate"))
                await until(lambda: "ocpp1.6" in json.dumps(api(gw, f"/api/v1/chargers/{cid}").get("outbox") or {}),
                            30, "the API says the 1.6 backlog waits")
                view = api(gw, f"/api/v1/chargers/{cid}")
                assert view["outbox"]["depth"] == 2 and view["outbox"]["dead_letters"] == 0
                assert view["outbox"]["waiting_for"]["protocol"] == "ocpp1.6", view["outbox"]
                assert f'ocppgw_outbox_blocked{{charger="{cid}",protocol="ocpp1.6"}} 1.0' in metrics(gw)
                assert "refuses ocpp1.6" in gw.logs() or "did not accept subprotocol ocpp1.6" in gw.logs()
                assert not refusing.of(cid, "StartTransaction")
        finally:
            await refusing.stop()
        assert not store_rows(gw, "SELECT seq FROM outbox WHERE state = 'dead'")
        await csms.start()  # a CSMS that takes 1.6 again: the rows go
        await until(lambda: len(csms.of(cid, "StopTransaction")) == 1, 30, "the 1.6 stop at the CSMS")
    finally:
        await csms.stop()


async def test_ids_the_csms_knows_late_meter_values_retried_stops_and_unknown_local_ids(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    csms = await LoopbackCsms().start()
    gw = gateway_factory({"upstream": {"url": csms.url, **FAST}})
    cid = "IDS1"
    try:
        async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:
            await boot16(cp)
            await stop_csms(csms, gw)
            local = (await cp.call(v16.call.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=0,
                                                              timestamp=now()))).transaction_id
            await cp.call(v16.call.StopTransaction(transaction_id=local, meter_stop=9, timestamp=now()))
            await csms.start()
            await until(lambda: len(csms.of(cid, "StopTransaction")) == 1, 30, "the replayed stop")
            await until(lambda: store_rows(gw, "SELECT retired_at FROM tx_map")[0][0] is not None, 10, "retired")
            # after the stop was acknowledged: a late MeterValues, a retried stop
            await cp.call(v16.call.MeterValues(connector_id=1, transaction_id=local, meter_value=meter_value("7")))
            await cp.call(v16.call.StopTransaction(transaction_id=local, meter_stop=9, timestamp=now()))
        gw.kill()  # and across a crash
        gw.start()
        async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:
            await cp.call(v16.call.MeterValues(connector_id=1, transaction_id=local, meter_value=meter_value("8")))
            # an id in the gateway's range that it never issued (or forgot long ago)
            await cp.call(v16.call.MeterValues(connector_id=1, transaction_id=2_000_999_999,
                                               meter_value=meter_value("9")))
            # each message id once: the late MeterValues may have been in flight at the SIGKILL and
            # arrive again (counted below); the one with the unknown id is set aside, never sent
            await until(lambda: len({r.message_id for r in csms.of(cid, "MeterValues")}) >= 2, 20,
                        "the late meter values")
            await until(lambda: bool(store_rows(gw, "SELECT seq FROM outbox WHERE state = 'dead'")), 20,
                        "the unknown id set aside")
        (csms_id,) = [tx for (c, tx) in csms.issued if c == cid]
        sent = [r for r in csms.of(cid) if "transaction_id" in r.payload and r.action in ("MeterValues", "StopTransaction")]
        firsts: dict[str, Any] = {}  # message id -> its first arrival
        for r in sent:
            firsts.setdefault(r.message_id, r)
        once = list(firsts.values())  # each id once, in the order of first arrival
        # stop, late MV, retried stop, MV after restart
        assert [r.payload["transaction_id"] for r in once] == [csms_id] * 4, [(r.action, r.message_id, r.payload) for r in sent]
        # the message in flight at the SIGKILL may arrive again, with its own message id (ARCHITECTURE invariant 3)
        assert len(sent) - len(once) <= 1, [(r.action, r.message_id) for r in sent]
        assert not any(isinstance(t, int) and t in LOCAL for t in tx_ids(csms, cid))
        dead = store_rows(gw, "SELECT action, error FROM outbox WHERE state = 'dead'")
        assert len(dead) == 1 and dead[0][0] == "MeterValues" and "2000999999" in dead[0][1], dead
        assert "no CSMS transaction id" in dead[0][1]
    finally:
        await csms.stop()


@pytest.mark.parametrize("history", [False, True])
async def test_status_history_keeps_every_status_of_the_outage(
    history: bool, gateway_factory: Callable[..., GatewayProcess],
) -> None:
    csms = await LoopbackCsms().start()
    gw = gateway_factory({"upstream": {"url": csms.url, **FAST}, "offline": {"status_history": history}})
    cid = "HIST1"
    statuses = ["Preparing", "Charging", "SuspendedEV", "Finishing", "Available"]
    try:
        async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:
            await boot16(cp)
            await stop_csms(csms, gw)
            for status in statuses:
                await cp.call(v16.call.StatusNotification(connector_id=1, error_code="NoError", status=status,
                                                          timestamp=now()))
            await csms.start()
            await until(lambda: any(r.payload.get("status") == "Available" for r in csms.of(cid, "StatusNotification")),
                        30, "the statuses at the CSMS")
            await asyncio.sleep(0.5)
        got = [r.payload["status"] for r in csms.of(cid, "StatusNotification")]
        assert got == (statuses if history else ["Available"])
    finally:
        await csms.stop()


async def test_the_offline_flag_says_who_answered_the_start_or_stop(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    csms = await LoopbackCsms().start()
    gw = gateway_factory({"upstream": {"url": csms.url, **FAST}})
    cid = "FLAG1"
    try:
        async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:
            await boot16(cp)
            live = (await cp.call(v16.call.StartTransaction(connector_id=1, id_tag="T", meter_start=0,
                                                             timestamp=now()))).transaction_id
            await cp.call(v16.call.StopTransaction(transaction_id=live, meter_stop=1, timestamp=now()))
            await stop_csms(csms, gw)
            away = (await cp.call(v16.call.StartTransaction(connector_id=1, id_tag="T", meter_start=0,
                                                             timestamp=now()))).transaction_id
            await cp.call(v16.call.StopTransaction(transaction_id=away, meter_stop=1, timestamp=now()))
        await until(lambda: len(api(gw, "/api/v1/transactions?charger=FLAG1")["transactions"]) == 2, 10, "logged")
        flags = {t["transaction_id"]: t["offline"] for t in api(gw, "/api/v1/transactions?charger=FLAG1")["transactions"]}
        assert flags == {str(live): False, str(away): True}
    finally:
        await csms.stop()


async def test_a_site_notices_the_csms_return_within_seconds_whatever_its_backoff(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """While a link waits out a backoff well beyond the bound, the site notices the CSMS's return
    through the probe within probe_interval + 3 s. The mechanism, not the defaults: probe_interval
    1 s here (default 5 s) and reconnect_min 8 s (default 1 s: the backoff would take ~15 s to grow
    as long), so the logged backoff is 8-16 s from the first failed dial: beyond the bound (4 s)
    by at least 4 s, as 12 s was beyond the default bound of 8 s."""
    csms = await LoopbackCsms().start()
    probe, bound = 1.0, 1.0 + 3.0
    gw = gateway_factory({"upstream": {"url": csms.url, "probe_interval": probe, "reconnect_min": 8.0}})
    cid = "BACK1"
    try:
        async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:
            await boot16(cp)
            await stop_csms(csms, gw)
            # a backoff well beyond the bound
            await until(lambda: "retry in" in gw.logs() and max(
                float(line.rsplit("retry in ", 1)[1].split(" ")[0]) for line in gw.logs().splitlines()
                if "retry in " in line) >= bound + 4.0, 60, "a long backoff")
            await csms.start()
            back_at = time.monotonic()
            await until(lambda: api(gw, f"/api/v1/chargers/{cid}")["upstream"]["state"] == "online", 60, "online")
            took = time.monotonic() - back_at
        print(f"\nFIGURES back soon: online {took:.1f} s after the CSMS returned (probe_interval {probe:g} s)")
        assert took <= bound, took
    finally:
        await csms.stop()


def _dial_failures(gw: GatewayProcess, level: str) -> int:
    return sum(1 for line in gw.logs().splitlines() if f" {level} " in line and "upstream connect failed" in line)


async def test_failing_dials_make_one_warning_per_outage_and_the_reconnect_says_how_many(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """A CSMS that is away from the start: the charger's dials fail every 0.2-0.5 s, the operator's
    log gets one WARNING for it (the rest at DEBUG; a line per charger every 15 min while it goes
    on), and the reconnection says how many dials failed."""
    csms = LoopbackCsms()  # not started yet: its port refuses
    gw = gateway_factory({"upstream": {"url": csms.url, **FAST, "connect_timeout": 1.0}})
    cid = "AWAY1"
    try:
        async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:
            await boot16(cp)  # answered by the gateway
            await until(lambda: _dial_failures(gw, "DEBUG") >= 5, 30, "several failed dials")
            assert _dial_failures(gw, "WARNING") == 1, gw.logs()[-3000:]
            await csms.start()
            await until(lambda: "upstream connected after" in gw.logs(), 30, "the reconnection")
            line = next(x for x in gw.logs().splitlines() if "upstream connected after" in x)
            failed = int(line.split("upstream connected after ", 1)[1].split(" ")[0])
            assert failed >= 6, line  # the WARNING, the DEBUG ones, and any after them
    finally:
        await csms.stop()
