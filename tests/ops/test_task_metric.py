"""`ocppgw_event_loop_tasks` in /metrics follows the tasks of the gateway's event loop (the soak run
in bench/soak.py watches it for leaks): up with connected chargers, back down when they leave."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path
from typing import Callable

from websockets.asyncio.client import connect

from tests.harness import GatewayProcess


def _tasks(gw: GatewayProcess) -> float:
    api = gw.config["api"]["listen"]
    request = urllib.request.Request(f"http://{api}/metrics")
    token = gw.dir / "data" / "api-token"
    if token.exists():
        request.add_header("Authorization", f"Bearer {token.read_text().strip()}")
    with urllib.request.urlopen(request, timeout=10) as r:
        text = r.read().decode()
    m = re.search(r"^ocppgw_event_loop_tasks (\S+)$", text, re.M)
    assert m, "ocppgw_event_loop_tasks is not in /metrics"
    return float(m.group(1))


async def _settled(gw: GatewayProcess, want: Callable[[float], bool], timeout: float = 15.0) -> float:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        n = await asyncio.to_thread(_tasks, gw)
        if want(n) or loop.time() > end:
            return n
        await asyncio.sleep(0.2)


async def test_task_gauge_follows_chargers(tmp_path: Path) -> None:
    """[variables].read_delay is 60 s here: each charger's variables read waits that long after its
    connect, and a read still waiting when its charger leaves is dropped with the connection, so
    the gauge comes down when the chargers leave, not a minute later."""
    gw = GatewayProcess(tmp_path, {"logging": {"level": "INFO"}, "variables": {"read_delay": 60.0}}).start()
    try:
        idle = await asyncio.to_thread(_tasks, gw)
        assert idle >= 1
        sockets = [await connect(gw.url(f"T{i}"), subprotocols=["ocpp1.6"]) for i in range(10)]  # type: ignore[list-item]
        busy = await _settled(gw, lambda n: n >= idle + 10)
        assert busy >= idle + 10, (idle, busy)  # at least one task per connection
        for ws in sockets:
            await ws.close()
        after = await _settled(gw, lambda n: n <= idle)
        assert after <= idle, (idle, busy, after)  # nothing left behind by the ten sessions
    finally:
        gw.stop()
