"""What a call costs through the gateway per charger transport: OCPP-J over WebSocket, OCPP-S
(SOAP 1.6) and the HTTP binding, relayed to the same echo CSMS by the same gateway process.

    python -m bench.soap                  # 20 chargers per transport, 5 s each
    python -m bench.soap --chargers 100 --seconds 10

Each transport gets its own N chargers, run closed-loop (each sends its next MeterValues as soon
as the previous one is answered), after one BootNotification each (which opens their upstream
links). Reported per transport: calls/s, latency percentiles, and the gateway's CPU time per call
(user + system of its process, by PID). Everything is on 127.0.0.1; every process started here is
stopped by its PID. Needs `psutil`, `aiohttp`, `websockets`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import orjson
import psutil
from websockets.asyncio.client import connect

from bench._common import free_port, http_get_status, percentiles, run_async

SAMPLES = [{"value": "1234.5", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
           {"value": "16.0", "measurand": "Current.Import", "unit": "A", "phase": "L1"},
           {"value": "230.1", "measurand": "Voltage", "unit": "V", "phase": "L1-N"}]
TS = "2030-01-01T00:00:00Z"
METER = {"connectorId": 1, "meterValue": [{"timestamp": TS, "sampledValue": SAMPLES}]}
BOOT = {"chargePointVendor": "Bench", "chargePointModel": "B1"}
CS16 = "urn://Ocpp/Cs/2015/10/"


def soap_body(charger_id: str, op: str, inner: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
            f'xmlns:cs="{CS16}" xmlns:a="http://www.w3.org/2005/08/addressing"><s:Header>'
            f"<cs:chargeBoxIdentity>{charger_id}</cs:chargeBoxIdentity><a:Action>/{op}</a:Action>"
            f"<a:MessageID>urn:uuid:{os.urandom(8).hex()}</a:MessageID></s:Header><s:Body>{inner}</s:Body>"
            "</s:Envelope>").encode()


SOAP_BOOT = ("<cs:bootNotificationRequest><cs:chargePointVendor>Bench</cs:chargePointVendor>"
             "<cs:chargePointModel>B1</cs:chargePointModel></cs:bootNotificationRequest>")
SOAP_METER = ("<cs:meterValuesRequest><cs:connectorId>1</cs:connectorId><cs:meterValue>"
              f"<cs:timestamp>{TS}</cs:timestamp>"
              "<cs:sampledValue><cs:value>1234.5</cs:value><cs:measurand>Energy.Active.Import.Register</cs:measurand>"
              "<cs:unit>Wh</cs:unit></cs:sampledValue>"
              "<cs:sampledValue><cs:value>16.0</cs:value><cs:measurand>Current.Import</cs:measurand>"
              "<cs:phase>L1</cs:phase><cs:unit>A</cs:unit></cs:sampledValue>"
              "<cs:sampledValue><cs:value>230.1</cs:value><cs:measurand>Voltage</cs:measurand>"
              "<cs:phase>L1-N</cs:phase><cs:unit>V</cs:unit></cs:sampledValue>"
              "</cs:meterValue></cs:meterValuesRequest>")

Client = Callable[[str], Awaitable[tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]]]


async def ws_client(url: str, cid: str) -> tuple[Any, Any]:
    ws = await connect(f"{url}/{cid}", subprotocols=["ocpp1.6"], compression=None)  # type: ignore[list-item]
    n = 0

    async def call(action: str, payload: dict[str, Any]) -> None:
        nonlocal n
        n += 1
        await ws.send(orjson.dumps([2, str(n), action, payload]).decode())
        reply = orjson.loads(await ws.recv())
        assert reply[0] == 3, reply

    async def boot() -> None:
        await call("BootNotification", BOOT)

    async def meter() -> None:
        await call("MeterValues", METER)

    async def close() -> None:
        await ws.close()

    return (boot, meter), close


async def soap_client(http: aiohttp.ClientSession, url: str, cid: str) -> tuple[Any, Any]:
    async def post(op: str, inner: str) -> None:
        async with http.post(url, data=soap_body(cid, op, inner),
                             headers={"Content-Type": "application/soap+xml; charset=utf-8"}) as r:
            await r.read()
            assert r.status == 200, r.status

    async def boot() -> None:
        await post("BootNotification", SOAP_BOOT)

    async def meter() -> None:
        await post("MeterValues", SOAP_METER)

    async def close() -> None:
        pass

    return (boot, meter), close


async def http_client(http: aiohttp.ClientSession, url: str, cid: str) -> tuple[Any, Any]:
    n = 0

    async def call(action: str, payload: dict[str, Any]) -> None:
        nonlocal n
        n += 1
        async with http.post(f"{url}/{cid}", data=orjson.dumps([2, str(n), action, payload]),
                             headers={"Content-Type": "application/json"}) as r:
            reply = orjson.loads(await r.read())
            assert reply[0] == 3, reply

    async def boot() -> None:
        await call("BootNotification", BOOT)

    async def meter() -> None:
        await call("MeterValues", METER)

    async def close() -> None:
        pass

    return (boot, meter), close


async def measure(name: str, clients: list[Any], seconds: float, proc: psutil.Process) -> dict[str, Any]:
    for (boot, _), _ in clients:
        await boot()
    await asyncio.sleep(1.0)  # upstream links open, warm-up done
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    cpu0 = proc.cpu_times()

    async def loop(meter: Callable[[], Awaitable[None]]) -> None:
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            await meter()
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(loop(m) for (_, m), _ in clients))
    elapsed = time.perf_counter() - started
    cpu1 = proc.cpu_times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    for _, close in clients:
        await close()
    p = percentiles([x * 1000 for x in latencies], (50, 99))
    return {"transport": name, "calls": len(latencies), "calls_per_s": len(latencies) / elapsed,
            "p50_ms": p["p50"], "p99_ms": p["p99"], "gateway_cpu_us_per_call": cpu / max(1, len(latencies)) * 1e6}


def wait_http(port: int, path: str, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while http_get_status("127.0.0.1", port, path) != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not come up")
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.soap", description=__doc__.splitlines()[0])
    ap.add_argument("--chargers", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=8.0, help="seconds to let the gateway compile schemas first")
    args = ap.parse_args()
    root = Path(__file__).resolve().parent.parent
    tmp = Path(tempfile.mkdtemp(prefix="bench-soap-"))
    echo_port, ws_port, soap_port, http_port, api_port = (free_port() for _ in range(5))
    (tmp / "gateway.toml").write_text(
        f'data_dir = "{tmp / "data"}"\n'
        f'[websocket]\nlisten = "127.0.0.1:{ws_port}"\nmax_messages_per_second = 0.0\n'
        f'[soap]\nenabled = true\nlisten = "127.0.0.1:{soap_port}"\n'
        f'[http]\nenabled = true\nlisten = "127.0.0.1:{http_port}"\n'
        f'[upstream]\nurl = "ws://127.0.0.1:{echo_port}/ocpp"\n'
        f'[api]\nlisten = "127.0.0.1:{api_port}"\n[logging]\nlevel = "WARNING"\n')
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "bench.echo_csms", "--listen", f"127.0.0.1:{echo_port}"],
                                      cwd=root))
        procs.append(subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(tmp / "gateway.toml")],
                                      cwd=root))
        wait_http(echo_port, "/healthz", "echo CSMS")
        wait_http(ws_port, "/healthz", "gateway")
        gateway = psutil.Process(procs[1].pid)
        time.sleep(args.warmup)  # schema and contract compilation in the background

        async def run() -> list[dict[str, Any]]:
            rows = []
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                n = args.chargers
                ws = [await ws_client(f"ws://127.0.0.1:{ws_port}/ocpp", f"WS{i}") for i in range(n)]
                rows.append(await measure("OCPP-J WebSocket", ws, args.seconds, gateway))
                soap = [await soap_client(http, f"http://127.0.0.1:{soap_port}/ocpp-s", f"SOAP{i}") for i in range(n)]
                rows.append(await measure("OCPP-S 1.6 SOAP", soap, args.seconds, gateway))
                hb = [await http_client(http, f"http://127.0.0.1:{http_port}/ocpp-http", f"HTTP{i}") for i in range(n)]
                rows.append(await measure("OCPP-J HTTP binding", hb, args.seconds, gateway))
            return rows

        rows = run_async(run)
        print(f"{args.chargers} chargers per transport, MeterValues (3 samples), closed loop, {args.seconds:.0f} s each")
        print(f"{'transport':<22}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'gateway CPU µs/call':>22}")
        for r in rows:
            print(f"{r['transport']:<22}{r['calls_per_s']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                  f"{r['gateway_cpu_us_per_call']:>22.0f}")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


if __name__ == "__main__":
    main()
