"""Prometheus metrics change as scripted sessions run: counts checked, exposition format parsed by
prometheus_client's own parser (what a Prometheus server accepts)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ocpp.v16 import call as call16
from prometheus_client.parser import text_string_to_metric_families

from tests.api.helpers import api_client, charger, csms_answer, inproc, until
from tests.e2e.peers import CsmsServer


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def duplicates(text: str) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """Series (name and labels) that the exposition lists more than once."""
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    twice = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            if key in seen:
                twice.append(key)
            seen.add(key)
    return twice


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(api) -> dict:  # type: ignore[no-untyped-def]
    status, text, _ = await api.get("/metrics")
    assert status == 200
    assert duplicates(text) == [], "a series is listed twice"
    return samples(text)


async def test_counts_follow_a_scripted_standalone_session(tmp_path: Path) -> None:
    async with inproc(tmp_path) as gw, api_client(gw.api_url) as api:
        m = await scrape(api)
        assert value(m, "ocppgw_build_info", version=__import__("gateway").__version__) == 1
        assert value(m, "ocppgw_upstream_links", state="standalone") == 0
        assert value(m, "ocppgw_charger_connects_total") == 0
        async with charger(gw.url("M1"), "M1") as cp:
            await cp.boot()
            await cp.status(0, "Available")
            await cp.status(1, "Preparing")
            tx = await cp.start_tx(1)
            await cp.meter(1, tx.transaction_id, 11000, 1500)
            assert (await api.post("/api/v1/chargers/M1/calls/Reset", {"type": "Hard"}))[0] == 200
            assert (await api.post("/api/v1/chargers/M1/calls/ClearCache"))[0] == 502
            cp.slow = 0.6
            assert (await api.post("/api/v1/chargers/M1/calls/GetConfiguration?timeout=0.2", {}))[0] == 504
            m = await scrape(api)
            assert value(m, "ocppgw_chargers_connected", transport="websocket", protocol="ocpp1.6") == 1
            assert value(m, "ocppgw_upstream_links", state="standalone") == 1
            assert value(m, "ocppgw_charger_connects_total") == 1
            calls = "ocppgw_calls_total"
            assert value(m, calls, origin="charger", action="BootNotification", answered_by="gateway", outcome="result") == 1
            assert value(m, calls, origin="charger", action="StatusNotification", answered_by="gateway", outcome="result") == 2
            assert value(m, calls, origin="charger", action="StartTransaction", answered_by="gateway", outcome="result") == 1
            assert value(m, calls, origin="charger", action="MeterValues", answered_by="gateway", outcome="result") == 1
            assert value(m, calls, origin="gateway", action="Reset", answered_by="charger", outcome="result") == 1
            assert value(m, calls, origin="gateway", action="ClearCache", answered_by="charger", outcome="error") == 1
            assert value(m, calls, origin="gateway", action="GetConfiguration", answered_by="gateway", outcome="timeout") == 1
            errors = "ocppgw_call_errors_total"
            assert value(m, errors, origin="gateway", action="ClearCache", code="NotImplemented") == 1
            assert value(m, errors, origin="gateway", action="GetConfiguration", code="timeout") == 1
            rtt = "ocppgw_call_round_trip_seconds_count"
            assert value(m, rtt, origin="charger", peer="gateway") == 5
            assert value(m, rtt, origin="gateway", peer="charger") == 2
            assert value(m, rtt, origin="gateway", peer="gateway") == 1  # the timeout, at ~0.2 s
            assert value(m, "ocppgw_call_round_trip_seconds_bucket", origin="gateway", peer="gateway", le="0.1") == 0
            assert value(m, "ocppgw_call_round_trip_seconds_bucket", origin="gateway", peer="gateway", le="2.5") == 1
            cp.slow = 0.0
        await until(lambda: not gw.hub.sessions, what="session ended")
        async with charger(gw.url("M1"), "M1") as cp:  # the same charger again: a reconnect
            await cp.boot()
            m = await scrape(api)
            assert value(m, "ocppgw_charger_connects_total") == 2
            assert value(m, "ocppgw_charger_reconnects_total") == 1
            assert value(m, "ocppgw_charger_disconnects_total") == 1
            assert value(m, "ocppgw_calls_total", origin="charger", action="BootNotification", answered_by="gateway",
                         outcome="result") == 2
        await until(lambda: not gw.hub.sessions, what="session ended")
        m = await scrape(api)
        assert value(m, "ocppgw_chargers_connected", transport="websocket", protocol="ocpp1.6") == 0
        assert value(m, "ocppgw_charger_disconnects_total") == 2
        assert value(m, "ocppgw_calls_queued", direction="to_charger") == 0


@pytest.mark.timeout(60)
async def test_upstream_links_and_round_trips_in_relay_mode(tmp_path: Path) -> None:
    async with CsmsServer() as csms:
        async with inproc(tmp_path, upstream={"url": csms.url, "reconnect_min": 0.2, "reconnect_max": 0.5}) as gw, \
                api_client(gw.api_url) as api:
            async with charger(gw.url("R1"), "R1") as cp:
                session = await csms.wait_session("R1")
                await until(lambda: gw.hub.sessions["R1"].upstream_state.value == "online", what="upstream online")
                await cp.boot()
                await session.cp.call(call16.Reset(type="Soft"))  # the CSMS calls the charger
                m = await scrape(api)
                assert value(m, "ocppgw_upstream_links", state="online") == 1
                assert value(m, "ocppgw_upstream_state_changes_total", state="online") == 1
                assert value(m, "ocppgw_calls_total", origin="charger", action="BootNotification", answered_by="csms",
                             outcome="result") == 1
                assert value(m, "ocppgw_calls_total", origin="csms", action="Reset", answered_by="charger",
                             outcome="result") == 1
                assert value(m, "ocppgw_call_round_trip_seconds_count", origin="charger", peer="csms") == 1
                assert value(m, "ocppgw_call_round_trip_seconds_count", origin="csms", peer="charger") == 1
                status, one, _ = await api.get("/api/v1/chargers/R1")
                assert one["upstream"]["state"] == "online"
                # the CSMS goes away: the link is offline (or redialling), and the API says so
                await session.log.ws.close()
                await until(lambda: gw.hub.sessions["R1"].upstream_state.value != "online", what="upstream lost")
                m = await scrape(api)
                assert value(m, "ocppgw_upstream_links", state="online") == 0
                assert value(m, "ocppgw_upstream_links", state="offline") + value(
                    m, "ocppgw_upstream_links", state="connecting") == 1
                assert value(m, "ocppgw_upstream_state_changes_total", state="offline") >= 1
                # ... and comes back (the CSMS server still listens): a reconnect
                await until(lambda: gw.hub.sessions["R1"].upstream_state.value == "online", timeout=10,
                            what="upstream back")
                m = await scrape(api)
                assert value(m, "ocppgw_upstream_reconnects_total") == 1
                assert value(m, "ocppgw_upstream_links", state="online") == 1


@pytest.mark.timeout(60)
async def test_outbox_depth_age_and_replay_while_the_csms_is_away(tmp_path: Path) -> None:
    from tests.e2e.rawpeers import RawCsms

    csms = RawCsms(csms_answer, subprotocols=("ocpp1.6",))  # nothing listens on its port yet
    async with inproc(tmp_path, upstream={"url": csms.url, "reconnect_min": 0.2, "reconnect_max": 0.4},
                      auth={"unknown_id_tags": "accept"}) as gw, api_client(gw.api_url) as api:
        async with charger(gw.url("OB1"), "OB1") as cp:
            await cp.boot()
            tx = await cp.start_tx(1)
            await cp.meter(1, tx.transaction_id, 3000, 1200)
            m = await scrape(api)
            assert value(m, "ocppgw_outbox_depth", charger="OB1") >= 2  # the start and the meter values
            assert value(m, "ocppgw_outbox_oldest_age_seconds", charger="OB1") >= 0
            assert value(m, "ocppgw_outbox_dead_letters", charger="OB1") == 0
            assert value(m, "ocppgw_outbox_messages_total", event="buffered") >= 2
            assert value(m, "ocppgw_outbox_messages_total", event="replayed") == 0
            status, one, _ = await api.get("/api/v1/chargers/OB1")
            assert one["outbox"]["depth"] >= 2 and one["outbox"]["oldest_age_seconds"] is not None
            assert one["upstream"]["state"] in ("offline", "connecting")
            async with csms:  # the CSMS comes back: the outbox drains
                await until(lambda: gw.hub.sessions["OB1"].counters["replayed"] >= 2, timeout=15, what="replayed")
                await until(lambda: not gw.hub.sessions["OB1"].backlog, timeout=15, what="outbox drained")
                m = await scrape(api)
                assert value(m, "ocppgw_outbox_depth", charger="OB1") == 0
                assert value(m, "ocppgw_outbox_messages_total", event="replayed") >= 2
                status, one, _ = await api.get("/api/v1/chargers/OB1")
                assert one["outbox"]["depth"] == 0 and one["upstream"]["state"] == "online"
        await until(lambda: not gw.hub.sessions, what="session ended")
        m = await scrape(api)  # totals survive the session's end
        assert value(m, "ocppgw_outbox_messages_total", event="replayed") >= 2


@pytest.mark.timeout(60)
async def test_sink_spool_depth_while_mqtt_and_influx_are_down(tmp_path: Path) -> None:
    from tests.harness import free_port

    # nothing listens on these ports: both sinks spool what the charger reports
    async with inproc(tmp_path, mqtt={"url": f"mqtt://127.0.0.1:{free_port()}"},
                      influx={"url": f"http://127.0.0.1:{free_port()}", "bucket": "b"}) as gw, \
            api_client(gw.api_url) as api:
        async with charger(gw.url("SK1"), "SK1") as cp:
            await cp.boot()
            await cp.status(1, "Available")
            m: dict = {}

            async def spooled() -> bool:
                nonlocal m
                m = await scrape(api)
                return all(value(m, "ocppgw_sink_spool_depth", sink=s) >= 1 for s in ("mqtt", "influx"))

            deadline = asyncio.get_running_loop().time() + 15
            while not await spooled():
                assert asyncio.get_running_loop().time() < deadline, "nothing spooled"
                await asyncio.sleep(0.2)
            # every sink once, whoever else holds it (local control hands its changes to the same sinks)
            status, text, _ = await api.get("/metrics")
            assert status == 200 and gw.control is not None
            assert [k for k in duplicates(text) if k[0].startswith("ocppgw_sink_")] == []
            assert sorted(s.labels["sink"] for f in text_string_to_metric_families(text)
                          if f.name == "ocppgw_sink_backlog" for s in f.samples) == ["influx", "mqtt"]
            for sink in ("mqtt", "influx"):
                assert value(m, "ocppgw_sink_backlog", sink=sink) >= value(m, "ocppgw_sink_spool_depth", sink=sink)
                assert value(m, "ocppgw_sink_delivered_total", sink=sink) == 0
                assert value(m, "ocppgw_sink_dropped_total", sink=sink) == 0
