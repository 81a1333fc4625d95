"""`ocpp-gateway status | call | outbox` as subprocesses against a running gateway process, with
an `ocpp` charger connected to it."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, Callable

from tests.api.helpers import charger
from tests.harness import REPO, GatewayProcess


async def cli(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, cwd=str(REPO), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_status_call_and_outbox_against_a_running_gateway(gateway_factory: Callable[..., GatewayProcess]) -> None:
    gw = gateway_factory({"api": {"token": "cli-token"}})
    cfg = str(gw.config_path)  # the CLI takes --api and --token from its [api] section
    async with charger(gw.url("CLI-1"), "CLI-1") as cp:
        await cp.boot()
        await cp.status(1, "Charging")
        tx = await cp.start_tx(1, meter_start=0)
        await cp.meter(1, tx.transaction_id, power_w=3700, energy_wh=1250)
        code, out, err = await cli("status", "-c", cfg)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == "1 of 1 chargers connected"
        header = lines[2].split()
        assert header[:6] == ["CHARGER", "CONNECTED", "PROTOCOL", "TRANSPORT", "UPSTREAM", "CONNECTORS"]
        row = next(line for line in lines if line.startswith("CLI-1"))
        assert row.split()[:6] == ["CLI-1", "yes", "ocpp1.6", "websocket", "standalone", "1:Charging"]
        assert "3.7 kW" in row and "1.25 kWh" in row
        code, out, err = await cli("status", "-c", cfg, "CLI-1")
        assert code == 0, err
        assert "connected          yes (websocket, ocpp1.6)" in out and "ACME Wallbox 7" in out
        evse = next(line for line in out.splitlines() if line.startswith("1 "))
        assert evse.split()[:2] == ["1", "Charging"] and "3.7 kW" in evse and "1.25 kWh" in evse
        assert f"{tx.transaction_id} " in out.split("TRANSACTION  EVSE")[1]
        code, out, err = await cli("status", "-c", cfg, "NOBODY")
        assert code == 1 and "HTTP 404" in err
        code, out, _ = await cli("status", "-c", cfg, "--json")
        assert code == 0 and json.loads(out)["chargers"][0]["id"] == "CLI-1"

        code, out, err = await cli("call", "-c", cfg, "CLI-1", "Reset", '{"type": "Soft"}')
        assert code == 0, err
        assert json.loads(out) == {"status": "Accepted"} and cp.resets == ["Soft"]
        code, out, err = await cli("call", "-c", cfg, "CLI-1", "Reset", "-", stdin=b'{"type": "Hard"}')
        assert code == 0 and cp.resets == ["Soft", "Hard"]
        code, out, err = await cli("call", "-c", cfg, "CLI-1", "Reset", '{"type": "Sideways"}')
        assert code == 1 and "HTTP 400" in err and "PropertyConstraintViolation" in err
        code, out, err = await cli("call", "-c", cfg, "CLI-1", "ClearCache")
        assert code == 1 and "HTTP 502" in err and "OCPP error: NotImplemented" in err
        code, out, err = await cli("call", "-c", cfg, "NOBODY", "Reset", '{"type": "Soft"}')
        assert code == 1 and "HTTP 404" in err
        code, out, err = await cli("call", "-c", cfg, "CLI-1", "Reset", "{oops")
        assert code == 2 and "not JSON" in err

        api = f"http://{gw.config['api']['listen']}"
        code, out, err = await cli("status", "--api", api, "--token", "wrong")
        assert code == 1 and "HTTP 401" in err
        code, out, err = await cli("status", "--api", api, "--token", "cli-token")
        assert code == 0 and "CLI-1" in out

        code, out, err = await cli("health", "-c", cfg)
        assert code == 0 and out.startswith("ok: 1 chargers connected"), err

        code, out, err = await cli("outbox", "-c", cfg)
        assert code == 0, err
        assert out.strip()  # the outbox (or, before the offline store serves it, a note saying so)

    code, out, err = await cli("status", "--api", "http://127.0.0.1:9", "--token", "")
    assert code == 3 and "cannot reach" in err
    gw.stop()
    code, out, err = await cli("health", "-c", cfg)
    assert code == 3


def test_tables_render_generic_outbox_shapes() -> None:
    import io

    from gateway.opsclient import print_generic

    out = io.StringIO()
    data: dict[str, Any] = {"total": 3, "chargers": [{"charger_id": "A", "depth": 2, "oldest_age_seconds": 4.5},
                                                     {"charger_id": "B", "depth": 1, "oldest_age_seconds": None}],
                            "dead_letters": []}
    print_generic(data, out)
    text = out.getvalue()
    assert "total: 3" in text and "CHARGER_ID  DEPTH  OLDEST_AGE_SECONDS" in text
    assert "dead_letters: none" in text


async def test_the_cli_finds_the_generated_token(gateway_factory: Callable[..., GatewayProcess]) -> None:
    gw = gateway_factory()  # no [api].token: the gateway made one in its data_dir
    cfg = str(gw.config_path)
    assert (await cli("status", "-c", cfg))[0] == 0
    api = f"http://{gw.config['api']['listen']}"
    code, _, err = await cli("status", "--api", api, "--token", "")
    assert code == 1 and "HTTP 401" in err
    assert "REST API token generated and kept in" in gw.logs()
