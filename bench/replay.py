"""Replay bench: how fast the gateway drains buffered messages into a CSMS, against the bound that
OCPP's one-CALL-in-flight rule sets.

    python -m bench.replay [--sizes 1x2000,10x500,50x200] [--repeat 3] [--quick]

For each N x M (chargers x messages each), in one run:
1. the reference: a bare sender process keeps one CALL in flight on each of N plain WebSocket
   connections to a counting echo CSMS and sends M frames on each (the fastest any OCPP sender may
   go: it must wait for each answer before the next CALL);
2. the gateway: N chargers send M MeterValues each while the CSMS is down (the gateway answers and
   stores them), disconnect, then the echo CSMS starts and the gateway replays every outbox.
The echo CSMS counts what arrives and times first to last message; the figure is messages per
second, and the ratio gateway / reference is printed (target >= 0.8). Every size runs --repeat times
(3 by default, the sizes in turn); the summary gives each size's median ratio and the runs' ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.typing import Subprotocol

from bench._common import free_port, http_get_status, raise_nofile

REPO = Path(__file__).resolve().parent.parent
STAMP = "2026-01-01T00:00:00Z"
TARGET = 0.8  # issue 15: the gateway replays at least 0.8 of the reference at N = 1, 10 and 50


def meter_frame(message_id: str, i: int) -> str:
    return orjson.dumps([2, message_id, "MeterValues", {
        "connectorId": 1, "transactionId": 1,
        "meterValue": [{"timestamp": STAMP, "sampledValue": [{"value": str(i), "measurand": "Energy.Active.Import.Register",
                                                              "unit": "Wh"}]}]}]).decode()


class CountingEcho:
    """Answers every CALL with {} (schema-valid for MeterValues) and times the traffic."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.server: Any = None

    async def handler(self, ws: Any) -> None:
        try:
            async for message in ws:
                data = orjson.loads(message)
                if data[0] != 2:
                    continue
                now = time.perf_counter()
                if self.count == 0:
                    self.first = now
                self.count += 1
                self.last = now
                await ws.send('[3,"%s",{}]' % data[1])
        except Exception:  # noqa: BLE001 - connection closed
            pass

    async def start(self) -> None:
        self.server = await serve(self.handler, "127.0.0.1", self.port, subprotocols=[Subprotocol("ocpp1.6")], compression=None)

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def wait_for(self, n: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while self.count < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.count} of {n} messages arrived")
            await asyncio.sleep(0.01)
        return n / (self.last - self.first) if self.last > self.first else float("nan")


# -- the reference sender (a separate process) -------------------------------------------------------

async def _sender(url: str, n: int, m: int) -> None:
    async def one(k: int) -> None:
        async with connect(f"{url}/S{k}", subprotocols=[Subprotocol("ocpp1.6")], compression=None) as ws:
            for i in range(m):
                await ws.send(meter_frame(f"s{k}-{i}", i))
                await ws.recv()

    await asyncio.gather(*(one(k) for k in range(n)))


def _run_sender(url: str, n: int, m: int) -> None:
    raise_nofile()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_sender(url, n, m))


# -- the gateway ----------------------------------------------------------------------------------

def start_gateway(tmp: Path, upstream_port: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cfg = tmp / "gateway.toml"
    cfg.write_text(
        f'site_id = "bench"\ndata_dir = "{(tmp / "data").as_posix()}"\n'
        f'[websocket]\nlisten = "127.0.0.1:{port}"\nmax_messages_per_second = 0\n'
        f'[upstream]\nurl = "ws://127.0.0.1:{upstream_port}/ocpp"\nreconnect_min = 0.05\nreconnect_max = 0.1\n'
        f'compression = false\n[api]\nlisten = "127.0.0.1:{free_port()}"\n[logging]\nlevel = "WARNING"\n')
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(cfg)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "gateway.log", "wb"))
    deadline = time.monotonic() + 20
    while http_get_status("127.0.0.1", port, "/healthz") != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("gateway did not start: " + (tmp / "gateway.log").read_text()[-2000:])
        time.sleep(0.05)
    return proc, port


async def buffer_messages(port: int, n: int, m: int) -> None:
    async def one(k: int) -> None:
        async with connect(f"ws://127.0.0.1:{port}/ocpp/R{k}", subprotocols=[Subprotocol("ocpp1.6")], compression=None) as ws:
            for i in range(m):
                await ws.send(meter_frame(f"r{k}-{i}", i))
                reply = orjson.loads(await ws.recv())
                while reply[0] == 2:  # the gateway's own CALL (the variables mirror reads the charger):
                    # answered NotImplemented, as bench/load.py does, and the charger goes on
                    await ws.send(orjson.dumps([4, reply[1], "NotImplemented", "", {}]).decode())
                    reply = orjson.loads(await ws.recv())
                assert reply[0] == 3 and reply[1] == f"r{k}-{i}", reply

    sem = asyncio.Semaphore(20)

    async def bounded(k: int) -> None:
        async with sem:
            await one(k)

    await asyncio.gather(*(bounded(k) for k in range(n)))


async def measure(n: int, m: int) -> dict[str, Any]:
    total = n * m
    # 1. reference
    echo = CountingEcho(free_port())
    await echo.start()
    sender = subprocess.Popen([sys.executable, "-c", "import sys; from bench.replay import _run_sender; "
                               f"_run_sender('ws://127.0.0.1:{echo.port}/ocpp', {n}, {m})"], cwd=REPO)
    bare = await echo.wait_for(total, timeout=300)
    sender.wait(60)
    await echo.stop()
    # 2. the gateway: buffer while the CSMS is down, then let it replay
    with tempfile.TemporaryDirectory() as d:
        echo = CountingEcho(free_port())
        proc, port = start_gateway(Path(d), echo.port)
        try:
            await asyncio.sleep(4.0)  # let the gateway finish compiling its schemas (~3 s of CPU after start)
            t0 = time.perf_counter()
            await buffer_messages(port, n, m)
            buffered_in = time.perf_counter() - t0
            await echo.start()
            gw = await echo.wait_for(total, timeout=600)
            await echo.stop()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return {"chargers": n, "messages_each": m, "bare_msgs_per_s": bare, "gateway_msgs_per_s": gw,
            "ratio": gw / bare, "buffering_msgs_per_s": total / buffered_in}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1x2000,10x500,50x200", help="NxM list: chargers x messages each")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs of every size, taken in turn (default 3; --quick 1); each ratio is gateway / "
                         "reference within one run, and the median of the runs' ratios is reported")
    ap.add_argument("--quick", action="store_true", help="1x300,10x100, one run")
    args = ap.parse_args()
    raise_nofile()
    sizes = [tuple(int(x) for x in s.split("x")) for s in ("1x300,10x100" if args.quick else args.sizes).split(",")]
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        ap.error("--repeat must be at least 1")
    results = []
    for rep in range(1, repeat + 1):
        for n, m in sizes:
            r = asyncio.run(measure(n, m))
            r["run"] = rep
            results.append(r)
            print(f"run {rep}/{repeat}  N={n:<4} M={m:<5} reference {r['bare_msgs_per_s']:8.0f} msg/s   gateway replay "
                  f"{r['gateway_msgs_per_s']:8.0f} msg/s   ratio {r['ratio']:.2f} (target >= {TARGET:.2f})   "
                  f"[buffering while offline: {r['buffering_msgs_per_s']:.0f} msg/s]", flush=True)
    summary = []
    for n, m in sizes:
        mine = [r for r in results if r["chargers"] == n and r["messages_each"] == m]
        ratios = [r["ratio"] for r in mine]
        summary.append({
            "chargers": n, "messages_each": m, "ratios": ratios, "ratio_median": statistics.median(ratios),
            "gateway_msgs_per_s_median": statistics.median(r["gateway_msgs_per_s"] for r in mine),
            "reference_msgs_per_s_median": statistics.median(r["bare_msgs_per_s"] for r in mine),
            "target_met": statistics.median(ratios) >= TARGET,
        })
    how = f"median of {repeat} runs" if repeat > 1 else "one run"
    print(f"\nreplay rate against the reference ({how}; ratios within each run; target >= {TARGET:.2f})")
    print(f"{'N x M':<10} {'median':>6}  {'verdict':<7} {'gateway msg/s':>13} {'reference msg/s':>15}  ratio per run")
    for s in summary:
        print(f"{str(s['chargers']) + ' x ' + str(s['messages_each']):<10} {s['ratio_median']:6.2f}  "
              f"{'PASS' if s['target_met'] else 'FAIL':<7} {s['gateway_msgs_per_s_median']:13.0f} "
              f"{s['reference_msgs_per_s_median']:15.0f}  " + " ".join(f"{x:.2f}" for x in s["ratios"]))
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "replay.json").write_text(json.dumps({"cpus": os.cpu_count(), "repeat": repeat, "target": TARGET,
                                                 "summary": summary, "results": results}, indent=2))


if __name__ == "__main__":
    main()
