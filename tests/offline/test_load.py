"""20 chargers x 100 transaction messages through a 6-second CSMS outage: all delivered, in order.

6 s crosses every bound of the gateway's configuration here as a longer outage would: the
reconnect backoff reaches its maximum (1 s) several times over, and the outage outlasts
call_timeout (2 s) and answer_within (3 s; the defaults are longer, and tests/uplink measures them)."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from ocpp import v16

from tests.harness import GatewayProcess
from tests.offline.peers import Connected, CountingCsms, meter_value, now, until

CHARGERS = 20
MESSAGES = 100  # per charger: StartTransaction, 98 MeterValues, StopTransaction
OUTAGE = 6.0  # longer than reconnect_max, call_timeout and answer_within (docstring)
SPREAD = OUTAGE + 5.0  # each charger's messages are spread over this many seconds


async def test_twenty_chargers_through_a_six_second_outage(gateway_factory: Callable[..., GatewayProcess]) -> None:
    csms = await CountingCsms().start()
    gw = gateway_factory({"upstream": {"url": csms.url, "reconnect_min": 0.25, "reconnect_max": 1.0,
                                       "call_timeout": 2.0, "answer_within": 3.0},
                          "auth": {"unknown_id_tags": "accept"}, "logging": {"level": "INFO"}})
    began = time.monotonic()

    async def charger(n: int) -> None:
        cid = f"LOAD{n:02d}"
        async with Connected(gw.url(cid), "ocpp1.6", cid) as cp:
            await cp.call(v16.call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
            start = await cp.call(v16.call.StartTransaction(connector_id=1, id_tag=f"T{n}", meter_start=0,
                                                            timestamp=now()))
            tx = start.transaction_id
            pause = SPREAD / MESSAGES
            for i in range(1, MESSAGES - 1):
                await asyncio.sleep(pause)
                await cp.call(v16.call.MeterValues(connector_id=1, transaction_id=tx, meter_value=meter_value(str(i))))
            await cp.call(v16.call.StopTransaction(meter_stop=MESSAGES, timestamp=now(), transaction_id=tx))

    async def outage() -> None:
        await asyncio.sleep(3.0)
        await csms.stop()
        await asyncio.sleep(OUTAGE)
        await csms.start()

    try:
        await asyncio.wait_for(asyncio.gather(outage(), *(charger(n) for n in range(CHARGERS))), SPREAD + 60)
        await until(lambda: len(csms.of_action("StopTransaction")) >= CHARGERS, timeout=120, what="all replayed")
        for n in range(CHARGERS):
            cid = f"LOAD{n:02d}"
            got = [r for r in csms.of(cid) if r.action != "BootNotification"]
            keys = [(r.action, r.payload["meter_value"][0]["sampled_value"][0]["value"] if r.action == "MeterValues"
                     else "") for r in got]
            deduped = [k for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
            expected = [("StartTransaction", "")] + [("MeterValues", str(i)) for i in range(1, MESSAGES - 1)] + [
                ("StopTransaction", "")]
            assert deduped == expected, cid  # every message, in the charger's order
            # a duplicate can only be the message in flight when the CSMS went away, and is adjacent
            assert len(keys) - len(deduped) <= 1, cid
            (csms_id,) = {r.payload["transaction_id"] for r in got if r.action != "StartTransaction"}
            assert (cid, csms_id) in csms.issued
        print(f"\n{CHARGERS} x {MESSAGES} messages through a {OUTAGE:.0f} s outage delivered "
              f"in {time.monotonic() - began:.1f} s")
    finally:
        await csms.stop()
