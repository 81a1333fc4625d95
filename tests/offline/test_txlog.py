"""The transaction log records what chargers report, online, offline and standalone alike."""

from __future__ import annotations

from pathlib import Path

from ocpp import v16, v201

from tests.e2e.test_wire import inproc
from tests.offline.peers import Connected, now, until


async def test_transactions_are_logged_with_filters(tmp_path: Path) -> None:
    async with inproc(tmp_path, auth={"unknown_id_tags": "accept"}) as gw:
        async with Connected(gw.url("TL16"), "ocpp1.6", "TL16") as cp:
            first = await cp.call(v16.call.StartTransaction(connector_id=1, id_tag="A", meter_start=1000,
                                                            timestamp="2026-01-01T10:00:00Z"))
            await cp.call(v16.call.StopTransaction(meter_stop=3500, timestamp="2026-01-01T11:00:00Z",
                                                   transaction_id=first.transaction_id, reason="Local"))
            second = await cp.call(v16.call.StartTransaction(connector_id=2, id_tag="B", meter_start=0,
                                                             timestamp="2026-01-02T10:00:00Z"))
        async with Connected(gw.url("TL201"), "ocpp2.0.1", "TL201") as cp:
            await cp.call(v201.call.TransactionEvent(event_type="Started", timestamp=now(), trigger_reason="Authorized",
                                                     seq_no=0, transaction_info={"transaction_id": "X-1"},
                                                     evse={"id": 1, "connector_id": 1}))
        store = gw.hub.store

        async def rows(**kw: object) -> list[dict]:
            return await store.transactions(**kw)

        # the log sees an exchange after the charger has its answer: wait until it has taken in all
        # four events, then until they are written
        await until(lambda: gw.txlog.events >= 4, what="four transaction events observed")
        await gw.txlog.flush()
        everything = await rows()
        assert {(r["charger_id"], r["transaction_id"]) for r in everything} == {
            ("TL16", str(first.transaction_id)), ("TL16", str(second.transaction_id)), ("TL201", "X-1")}
        ended = await rows(state="ended")
        assert len(ended) == 1 and ended[0]["energy_wh"] == 2500 and ended[0]["reason"] == "Local"
        assert {r["transaction_id"] for r in await rows(state="open", charger_id="TL16")} == {str(second.transaction_id)}
        assert [r["transaction_id"] for r in await rows(since="2026-01-02T00:00:00Z", charger_id="TL16")] == [
            str(second.transaction_id)]
        assert [r["transaction_id"] for r in await rows(until="2026-01-02T00:00:00Z")] == [str(first.transaction_id)]
