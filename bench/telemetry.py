"""What the telemetry sinks cost the relay: gateway CPU per relayed MeterValues with MQTT and
InfluxDB off, then on, in one run.

    python -m bench.telemetry                 # 20 chargers, 6 s measured per variant (~40 s)
    python -m bench.telemetry --chargers 50 --seconds 10

Processes (all on 127.0.0.1, all stopped by PID): the echo CSMS (`bench/echo_csms.py`), a
Mosquitto and an InfluxDB 1.x started like the tests do (`tests/telemetry/services.py`), and the
gateway twice: `off` (no sinks) and `on` (`[mqtt]` QoS 1 + `[influx]` v1). The load runs in this
process: N websockets chargers sharing one offered rate (`--rate`, 2000 MeterValues/s by default,
the same for every variant; each charger waits for its answer before its next call; the
per-charger message rate limit is off), 1.6, four sampled values per call (energy, power, current,
temperature in Fahrenheit: the normaliser's full path). After a warm-up, the gateway's CPU time
(user + system, read from /proc by PID through psutil) is divided by the calls completed in the
window. The gateway runs pinned to the last CPU, everything else on the others (`--no-pin`).

Why a fixed rate: the relay's own CPU per call falls as the load rises (more frames per wake-up),
so with closed-loop chargers (`--rate 0`, as fast as the gateway answers) a variant that runs
slower also pays more per call for the relay itself, and the comparison mixes the two effects.

The target in issue 4: both sinks together add at most 25 % CPU per call. The bench also checks
that the sinks kept up: after the window it waits until InfluxDB holds one point per sample sent.
Linux only; needs psutil, websockets, the gateway's dependencies, mosquitto and influxd.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from websockets.asyncio.client import connect

from bench._common import REPO, child_setup, free_port, http_get_status

SAMPLES = [
    {"value": "1234.5", "measurand": "Energy.Active.Import.Register", "unit": "kWh"},
    {"value": "7.2", "measurand": "Power.Active.Import", "unit": "kW"},
    {"value": "16.0", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
    {"value": "77", "measurand": "Temperature", "unit": "Fahrenheit", "location": "Body"},
]


def start_gateway(workdir: Path, csms_port: int, extra: str,
                  cpus: list[int] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = workdir / "gateway.toml"
    conf.write_text(f"""site_id = "bench"
data_dir = "{workdir / 'data'}"
[websocket]
listen = "127.0.0.1:{port}"
max_messages_per_second = 0
[upstream]
url = "ws://127.0.0.1:{csms_port}/ocpp"
[api]
listen = "127.0.0.1:{free_port()}"
[logging]
level = "WARNING"
{extra}
""")
    log = open(workdir / "gateway.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(conf)], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, preexec_fn=child_setup(cpus))
    log.close()
    deadline = time.monotonic() + 20
    while http_get_status("127.0.0.1", port, "/healthz") != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"gateway did not start: {(workdir / 'gateway.log').read_text()[-2000:]}")
        time.sleep(0.05)
    idle(proc.pid)
    return proc, port


def idle(pid: int, limit: float = 0.05, timeout: float = 20.0) -> None:
    """Wait until the process uses under `limit` of a core over 0.5 s (schema warm-up done)."""
    p = psutil.Process(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = sum(p.cpu_times()[:2])
        time.sleep(0.5)
        if (sum(p.cpu_times()[:2]) - before) / 0.5 < limit:
            return


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def load(port: int, chargers: int, warmup: float, seconds: float, pid: int,
               rate: float = 0.0, profile: Path | None = None) -> dict[str, float]:
    done = 0
    interval = chargers / rate if rate > 0 else 0.0  # s between one charger's calls; 0 = closed loop
    measuring = False
    stop_at = 0.0

    async def one(i: int) -> None:
        nonlocal done
        async with connect(f"ws://127.0.0.1:{port}/ocpp/B{i:04d}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                           compression=None, open_timeout=10) as ws:
            await ws.send(json.dumps([2, "boot", "BootNotification", {"chargePointVendor": "B", "chargePointModel": "M"}]))
            await asyncio.wait_for(ws.recv(), 10)
            seq = 0
            due = time.monotonic() + interval * i / chargers  # spread the chargers over one interval
            while time.monotonic() < stop_at:
                if interval:
                    due += interval
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                seq += 1
                stamp = f"2026-01-01T{seq // 3600 % 24:02d}:{seq // 60 % 60:02d}:{seq % 60:02d}.{i % 1000:03d}Z"
                payload = {"connectorId": 1, "meterValue": [{"timestamp": stamp, "sampledValue": SAMPLES}]}
                await ws.send(json.dumps([2, f"{i}.{seq}", "MeterValues", payload]))
                await asyncio.wait_for(ws.recv(), 10)
                if measuring:
                    done += 1

    proc = psutil.Process(pid)
    stop_at = time.monotonic() + warmup + seconds + 60
    tasks = [asyncio.create_task(one(i)) for i in range(chargers)]
    await asyncio.sleep(warmup)
    spy = None
    if profile is not None:  # sampled during the window, so its figures are perturbed a little
        spy = await asyncio.create_subprocess_exec(
            "py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "1000", "--gil", "--duration",
            str(int(seconds)), "--output", str(profile), "--nonblocking",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    t_0, done, measuring = proc.cpu_times(), 0, True
    cpu0 = t_0.user + t_0.system
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    t_1, calls, measuring = proc.cpu_times(), done, False
    cpu1 = t_1.user + t_1.system
    if spy is not None:
        await asyncio.wait_for(spy.wait(), 30)
    elapsed = time.monotonic() - t0
    stop_at = 0.0
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"calls": calls, "calls_per_s": calls / elapsed, "cpu_s": cpu1 - cpu0,
            "cpu_us_per_call": (cpu1 - cpu0) / max(calls, 1) * 1e6,
            "user_us_per_call": (t_1.user - t_0.user) / max(calls, 1) * 1e6,
            "sys_us_per_call": (t_1.system - t_0.system) / max(calls, 1) * 1e6, "cpu_util": (cpu1 - cpu0) / elapsed}


def points(influx: Any) -> int:
    rows = influx.rows("bench", "SELECT count(value) FROM meter_value")
    return int(rows[0]["count"]) if rows else 0


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.telemetry", description=__doc__.splitlines()[0])
    ap.add_argument("--chargers", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--variants", default="off,on",
                    help="comma-separated: off, on, mqtt, influx, mqtt-qos0, on-qos0, on-mqtt311, on-thin "
                         "(on = MQTT QoS 1 + InfluxDB v1; on-thin: retained_min_interval = 10)")
    ap.add_argument("--repeat", type=int, default=2, help="rounds of all variants, interleaved; medians are reported")
    ap.add_argument("--rate", type=float, default=2000.0,
                    help="MeterValues per second offered by all chargers together, the same for every variant "
                         "(0: each charger in a closed loop, as fast as the gateway answers; then the variants "
                         "run at different rates and the relay's own cost per call changes with the rate)")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin the gateway to its own CPU (default: gateway on the last CPU, the load, "
                         "echo CSMS, Mosquitto and InfluxDB on the others): less noise between rounds")
    ap.add_argument("--pyspy", action="store_true",
                    help="record the gateway with py-spy during each measured window into "
                         "bench/results/profiles/telemetry-{variant}-{round}.txt (summarise with bench.pyspy_top)")
    args = ap.parse_args()
    if args.pyspy and not shutil.which("py-spy"):
        ap.error("--pyspy needs py-spy on PATH (pip install py-spy)")
    sys.path.insert(0, str(REPO))
    profiles = REPO / "bench" / "results" / "profiles"
    if args.pyspy:
        profiles.mkdir(parents=True, exist_ok=True)
    ncpu = os.cpu_count() or 1
    gateway_cpus = [ncpu - 1] if args.pin and ncpu >= 2 and hasattr(os, "sched_setaffinity") else None
    if gateway_cpus:
        os.sched_setaffinity(0, set(range(ncpu - 1)))  # this process and what it starts (echo, broker, influxd)
    from tests.telemetry.services import Influx, Mosquitto

    with tempfile.TemporaryDirectory(prefix="bench-telemetry-") as tmp:
        root = Path(tmp)
        csms_port = free_port()
        csms = subprocess.Popen([sys.executable, "-m", "bench.echo_csms", "--listen", f"127.0.0.1:{csms_port}"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        broker = Mosquitto(root / "mosquitto").start()
        influx = Influx(root / "influxdb").start()
        influx.create_db("bench")
        runs: dict[str, list[dict[str, float]]] = {}
        try:
            deadline = time.monotonic() + 10
            while http_get_status("127.0.0.1", csms_port, "/healthz") != 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            mqtt = f'[mqtt]\nurl = "{broker.url}"\nqos = 1\n'
            inf = f'[influx]\nurl = "{influx.url}"\napi = "v1"\ndatabase = "bench"\n'
            variants = {"off": "", "on": mqtt + inf, "mqtt": mqtt, "influx": inf, "mqtt-qos0": mqtt.replace("qos = 1", "qos = 0"),
                        "on-qos0": mqtt.replace("qos = 1", "qos = 0") + inf,
                        "on-mqtt311": mqtt + "protocol_version = 4\n" + inf,
                        "on-thin": mqtt + "retained_min_interval = 10.0\n" + inf}
            for rnd in range(args.repeat):
                for name in args.variants.split(","):
                    extra = variants[name]
                    workdir = root / f"{name}-{rnd}"
                    workdir.mkdir()
                    gw, port = start_gateway(workdir, csms_port, extra, gateway_cpus)
                    try:
                        before = points(influx)
                        prof = profiles / f"telemetry-{name}-{rnd + 1}.txt" if args.pyspy else None
                        r = asyncio.run(load(port, args.chargers, args.warmup, args.seconds, gw.pid, args.rate, prof))
                        if name in ("on", "influx"):  # the sink kept up: every sample of the window landed
                            want = before + r["calls"] * len(SAMPLES)
                            deadline = time.monotonic() + 30
                            while points(influx) < want and time.monotonic() < deadline:
                                time.sleep(0.5)
                            r["influx_kept_up"] = float(points(influx) >= want)
                        runs.setdefault(name, []).append(r)
                        print(f"round {rnd + 1} {name:7} {r['calls_per_s']:7.0f} calls/s  "
                              f"{r['cpu_us_per_call']:6.0f} us CPU per call (user {r['user_us_per_call']:.0f}, "
                              f"system {r['sys_us_per_call']:.0f})", flush=True)
                    finally:
                        stop(gw)
        finally:
            influx.stop()
            broker.stop()
            stop(csms)

    import statistics

    results = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    off, on = results["off"], results.get("on") or results[list(results)[-1]]
    overhead = on["cpu_us_per_call"] / off["cpu_us_per_call"] - 1
    print(f"{'variant':8} {'calls/s':>9} {'gateway CPU':>12} {'CPU per call':>13}")
    for name, r in results.items():
        print(f"{name:8} {r['calls_per_s']:9.0f} {r['cpu_util'] * 100:11.0f}% {r['cpu_us_per_call']:10.0f} us")
    for name, r in results.items():
        if name != "off":
            print(f"{name}: {r['cpu_us_per_call'] / off['cpu_us_per_call'] - 1:+.0%} CPU per relayed MeterValues "
                  f"against off (target for on: <= +25 %)")
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "telemetry.json").write_text(json.dumps({"args": vars(args), "runs": runs, "medians": results,
                                                    "overhead": overhead}, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
