"""A real-sized device model: a 2.0.1 charger (the `ocpp` package) with 3011 variables in 61
NotifyReport parts, against the gateway in this event loop. Below the bound every one is kept;
above `[variables].max_per_charger` the rest is counted as dropped and the read says so."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.api.helpers import inproc
from tests.variables.peers import connected, device_model

pytestmark = pytest.mark.timeout(120)


async def _read(gw: object, cid: str) -> dict[str, object]:
    mirror = gw.variables  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    while True:
        status: dict[str, object] = await mirror.read_status(cid)
        if status["state"] not in ("never", "reading"):
            return status
        assert time.monotonic() < deadline, "the read did not end"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("bound", [5000, 2500])
async def test_thousands_of_variables_in_many_parts(tmp_path: Path, bound: int) -> None:
    config = {"variables": {"read_delay": 0.1, "report_timeout": 5.0, "max_per_charger": bound}}
    async with inproc(tmp_path, **config) as gw, \
            connected(gw.url("BIG"), "ocpp2.0.1", "BIG", model=device_model(filler=3000), per_part=50) as cp:
        status = await _read(gw, "BIG")
        stored = await gw.variables.values("BIG")
        assert cp.reports and status["parts"] == 61
        if bound > 3011:
            assert status["state"] == "complete" and status["variables"] == 3011 and len(stored) == 3011
        else:
            assert status["state"] == "partial" and status["dropped"] == 3011 - bound and len(stored) == bound
        assert gw.variables.chargers["BIG"].report is None  # nothing of the report is held any more


async def test_the_mirror_switched_off(tmp_path: Path) -> None:
    """`[variables].enabled = false`: no read, and the API says the mirror is off (409)."""
    from tests.api.helpers import api_client

    async with inproc(tmp_path, variables={"enabled": False, "read_delay": 0.0}) as gw, \
            api_client(gw.api_url) as api, connected(gw.url("OFF"), "ocpp2.0.1", "OFF") as cp:
        for method, path, body in (("GET", "/api/v1/chargers/OFF/variables", None),
                                   ("POST", "/api/v1/chargers/OFF/variables", {"values": {"A/B": "1"}}),
                                   ("GET", "/api/v1/chargers/OFF/environment", None)):
            status, answer, _ = await api.request(method, path, body)
            assert status == 409 and answer["error"] == "disabled", answer
        await asyncio.sleep(0.5)
        assert cp.reports == [] and cp.commands == []
