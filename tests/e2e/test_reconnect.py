"""End to end: a charger that reconnects at once after a clean close keeps its new connection.

Real chargers reconnect within a millisecond of closing (a restart of the comms module, NAT
rebinding). The gateway ends the old connection's session while the new connection may already be
attached: that close must act on the old connection only. Each round here: connect, BootNotification,
Heartbeat, close cleanly (1000), and connect again with no pause. Every connection must get its
answers (in relay mode the CSMS's own answers) and must end with the charger's own close (1000),
never with the gateway's 1001 "gateway closing the session"; the CSMS gets every request exactly
once, in order.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest

from tests.e2e.peers import (
    CSMS_INTERVAL,
    CSMS_TIME,
    STEP,
    CsmsServer,
    boot_request,
    charger,
    heartbeat_request,
)
from tests.harness import GatewayProcess

pytestmark = pytest.mark.timeout(120)

ROUNDS = 30


async def _rounds(gw: GatewayProcess, cid: str, v: str, csms: CsmsServer | None) -> list[tuple[str, Any]]:
    """ROUNDS connections back to back; returns what the charger sent, in order. Each round's
    failure is collected so that the message names every connection that was cut."""
    sent: list[tuple[str, Any]] = []
    cut: list[str] = []
    for i in range(ROUNDS):
        async with charger(gw.url(cid), v, cid) as cp:
            try:
                boot = await cp.req(boot_request(v))
                hb = await cp.req(heartbeat_request(v))
            except Exception as exc:  # noqa: BLE001 - reported with the close code below
                cut.append(f"round {i}: {type(exc).__name__} {exc} (close {cp.ws.close_code} {cp.ws.close_reason!r})")
                continue
            finally:
                sent.extend((f[2], f[3]) for f in cp.log.calls_out())
            assert boot.status == "Accepted", f"round {i}: BootNotification answered {boot!r}"
            if csms is not None:  # the CSMS's answers, not answers the gateway made up
                assert (boot.interval, hb.current_time) == (CSMS_INTERVAL, CSMS_TIME), f"round {i}: {boot!r} {hb!r}"
            assert cp.ws.close_code is None, (
                f"round {i}: the gateway closed the new connection ({cp.ws.close_code} {cp.ws.close_reason!r})"
            )
            ws = cp.ws
            await asyncio.wait_for(ws.close(1000, "bye"), STEP)
        # the close handshake ends with the code of whoever closed first: 1000 is ours
        if ws.close_code != 1000:
            cut.append(f"round {i}: closed by the gateway with {ws.close_code} {ws.close_reason!r}")
    assert not cut, f"{len(cut)} of {ROUNDS} connections were cut by the gateway:\n" + "\n".join(cut)
    return sent


@pytest.mark.parametrize("v", ["1.6", "2.0.1"])
async def test_relay_reconnect_at_once_keeps_new_connection(
    gateway_factory: Callable[..., GatewayProcess], v: str,
) -> None:
    cid = f"RECONNECT-RLY{v.replace('.', '')}"
    async with CsmsServer() as csms:
        gw = await asyncio.wait_for(asyncio.to_thread(gateway_factory, {"upstream": {"url": csms.url}}), 30)
        try:
            sent = await _rounds(gw, cid, v, csms)
            # nothing lost, nothing twice, in order: every request reached the CSMS over one of the
            # upstream links the gateway opened for this charger (one per session, one after the other)
            received = [r for s in csms.sessions.get(cid, []) for r in s.log.requests_in()]
            assert received == sent, "the CSMS did not get the charger's requests exactly once, in order"
        finally:
            print(gw.logs()[-20000:])


@pytest.mark.parametrize("v", ["1.6", "2.0.1"])
async def test_standalone_reconnect_at_once_keeps_new_connection(
    gateway_factory: Callable[..., GatewayProcess], v: str,
) -> None:
    cid = f"RECONNECT-SA{v.replace('.', '')}"
    gw = await asyncio.wait_for(asyncio.to_thread(gateway_factory, {}), 30)
    try:
        await _rounds(gw, cid, v, None)
    finally:
        print(gw.logs()[-20000:])
