"""What the telemetry sinks cost the relay: gateway CPU per relayed MeterValues with MQTT and
InfluxDB off, then on, in one run.

    python -m bench.telemetry                             # off and on side by side, 5 rounds (~3 min)
    python -m bench.telemetry --variants off,influx       # one sink
    python -m bench.telemetry --mode interleaved --variants off,on,mqtt,influx

Processes (all on 127.0.0.1, all stopped by PID): the echo CSMS (`bench/echo_csms.py`), a
Mosquitto (set up as the compose stack's `docker/mosquitto.conf`, unless `--broker-inflight`) and an
InfluxDB 1.x started like the tests do (`tests/telemetry/services.py`), and one
gateway per variant: `off` (no sinks) and `on` (`[mqtt]` QoS 1 + `[influx]` v1), ... The load runs in this
process: N websockets chargers sharing one offered rate (`--rate`, 1000 MeterValues/s by default,
the same for every variant; each charger waits for its answer before its next call; the
per-charger message rate limit is off), 1.6, four sampled values per call (energy, power, current,
temperature in Fahrenheit: the normaliser's full path). After a warm-up, the gateway's CPU time
(user + system, read from /proc by PID through psutil) is divided by the calls completed in the
window. The gateways run pinned to the last CPU, everything else on the others (`--no-pin`).

How the variants take turns (`--mode`): this is a shared 2-core VM whose speed drifts by tens of
per cent over minutes, more than the effect measured. By default (`concurrent`) every variant's
gateway starts once and all are loaded at the same time (the same seconds, sharing the CPU; keep
it to two variants); `interleaved` loads them one after another in short windows, round after
round; `fresh` starts a new gateway for every variant and round (the first version). Each round
gives a ratio, and the median of the rounds is reported next to the ratio of the medians.

Why a fixed rate: the relay's own CPU per call falls as the load rises (more frames per wake-up),
so with closed-loop chargers (`--rate 0`, as fast as the gateway answers) a variant that runs
slower also pays more per call for the relay itself, and the comparison mixes the two effects.

The target in issue 4: both sinks together add at most 25 % CPU per call (against the shipped broker
set-up; `--broker-inflight 20` measures a stock Mosquitto, whose small Receive Maximum costs QoS 1
a round trip every few messages). The bench also checks
that the sinks kept up: after the window it waits until InfluxDB holds one point per sample sent,
and reads the gateway's /metrics: a sink that dropped records in the window is reported (DROPPED),
because a sink that drops does less work and its figure is then no cost at all.
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


def start_gateway(workdir: Path, csms_port: int, extra: str, cpus: list[int] | None = None,
                  site: str = "bench", wait_idle: bool = True) -> tuple[subprocess.Popen[bytes], int]:
    port, api = free_port(), free_port()
    conf = workdir / "gateway.toml"
    conf.write_text(f"""site_id = "{site}"
data_dir = "{workdir / 'data'}"
[websocket]
listen = "127.0.0.1:{port}"
max_messages_per_second = 0
[upstream]
url = "ws://127.0.0.1:{csms_port}/ocpp"
[api]
listen = "127.0.0.1:{api}"
token = ""  # loopback only: /metrics without a bearer token (none is generated)
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
    if wait_idle:
        idle(proc.pid)
    proc.api_port = api  # type: ignore[attr-defined]
    return proc, port


def sink_counts(api_port: int) -> dict[str, dict[str, float]]:
    """The gateway's own sink counters from its /metrics: {sink: {dropped, delivered, backlog}}."""
    import re
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    text = opener.open(f"http://127.0.0.1:{api_port}/metrics", timeout=5).read().decode()
    out: dict[str, dict[str, float]] = {}
    for m in re.finditer(r'^ocppgw_sink_(dropped_total|delivered_total|backlog)\{sink="(\w+)"\} (\S+)$', text, re.M):
        out.setdefault(m.group(2), {})[m.group(1).replace("_total", "")] = float(m.group(3))
    return out


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


async def load(targets: list[tuple[str, int, int]], chargers: int, warmup: float, seconds: float,
               rate: float = 0.0, profiles: dict[str, Path] | None = None, day: int = 1) -> dict[str, dict[str, float]]:
    """Drive every target (variant name, gateway port, gateway pid) at once, each with its own
    `chargers` chargers at `rate` calls/s, and read every gateway's CPU at the same instants."""
    done = {name: 0 for name, _, _ in targets}
    interval = chargers / rate if rate > 0 else 0.0  # s between one charger's calls; 0 = closed loop
    measuring = False
    stop_at = 0.0

    async def one(name: str, port: int, i: int) -> None:
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
                stamp = f"2026-01-{day:02d}T{seq // 3600 % 24:02d}:{seq // 60 % 60:02d}:{seq % 60:02d}.{i % 1000:03d}Z"
                payload = {"connectorId": 1, "meterValue": [{"timestamp": stamp, "sampledValue": SAMPLES}]}
                await ws.send(json.dumps([2, f"{i}.{seq}", "MeterValues", payload]))
                await asyncio.wait_for(ws.recv(), 10)
                if measuring:
                    done[name] += 1

    procs = {name: psutil.Process(pid) for name, _, pid in targets}
    stop_at = time.monotonic() + warmup + seconds + 60
    tasks = [asyncio.create_task(one(name, port, i)) for name, port, _ in targets for i in range(chargers)]
    await asyncio.sleep(warmup)
    spies = []
    for name, _, pid in targets:
        if profiles and name in profiles:  # sampled during the window, so its figures are perturbed a little
            spies.append(await asyncio.create_subprocess_exec(
                "py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "1000", "--gil", "--duration",
                str(int(seconds)), "--output", str(profiles[name]), "--nonblocking",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL))
    before = {name: proc.cpu_times() for name, proc in procs.items()}
    threads0 = {name: {t.id: t.user_time + t.system_time for t in proc.threads()} for name, proc in procs.items()}
    for name in done:
        done[name] = 0
    measuring = True
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    after = {name: proc.cpu_times() for name, proc in procs.items()}
    threads1 = {name: {t.id: t.user_time + t.system_time for t in proc.threads()} for name, proc in procs.items()}
    calls, measuring = dict(done), False
    elapsed = time.monotonic() - t0
    for spy in spies:
        await asyncio.wait_for(spy.wait(), 30)
    stop_at = 0.0
    await asyncio.gather(*tasks, return_exceptions=True)
    out = {}
    for name, t_0 in before.items():
        t_1, n = after[name], max(calls[name], 1)
        cpu = t_1.user + t_1.system - t_0.user - t_0.system
        out[name] = {"calls": calls[name], "calls_per_s": calls[name] / elapsed, "cpu_s": cpu,
                     "cpu_us_per_call": cpu / n * 1e6, "user_us_per_call": (t_1.user - t_0.user) / n * 1e6,
                     "sys_us_per_call": (t_1.system - t_0.system) / n * 1e6, "cpu_util": cpu / elapsed,
                     # CPU per call of the threads other than the event loop's (the store's, executors)
                     "other_threads_us_per_call": sum(v - threads0[name].get(tid, 0.0) for tid, v in threads1[name].items()
                                                      if tid != procs[name].pid) / n * 1e6}
    return out


def _db(variant: str) -> str:
    return f"bench_{variant.replace('-', '_')}"


def points(influx: Any, database: str) -> int:
    rows = influx.rows(database, "SELECT count(value) FROM meter_value")
    return int(rows[0]["count"]) if rows else 0


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.telemetry", description=__doc__.splitlines()[0])
    ap.add_argument("--chargers", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--variants", default="off,on",
                    help="comma-separated: off, on, mqtt, influx, mqtt-qos0, on-qos0, on-mqtt311, on-thin "
                         "(on = MQTT QoS 1 + InfluxDB v1; on-thin: retained_min_interval = 10); a name ending in -b "
                         "(off-b, on-b) is a second gateway set up as the name without it (A against A)")
    ap.add_argument("--repeat", type=int, default=5, help="rounds of all variants; medians are reported")
    ap.add_argument("--rate", type=float, default=1000.0,
                    help="MeterValues per second offered by all chargers together, the same for every variant "
                         "(in concurrent mode each variant gets this rate and all share one CPU: keep their sum "
                         "under that CPU, or the calls/s fall short and the sinks drop) "
                         "(0: each charger in a closed loop, as fast as the gateway answers; then the variants "
                         "run at different rates and the relay's own cost per call changes with the rate)")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin the gateway to its own CPU (default: gateway on the last CPU, the load, "
                         "echo CSMS, Mosquitto and InfluxDB on the others): less noise between rounds")
    ap.add_argument("--mode", choices=("interleaved", "concurrent", "fresh"), default="concurrent",
                    help="concurrent (default): all variants loaded at the same time (keep it to two variants: "
                         "more overload the load generator's CPU); interleaved: one gateway per variant for the whole run, loaded one after "
                         "another in short windows, round after round, so each round's variants see the machine "
                         "within seconds of each other; fresh: a new gateway for every variant and round")
    ap.add_argument("--broker-inflight", type=int, default=None,
                    help="Mosquitto's max_inflight_messages, which it also announces to MQTT 5 clients as its "
                         "Receive Maximum: the QoS 1 messages the gateway may have unacknowledged (default: the "
                         "compose stack's docker/mosquitto.conf, 1000; 20 is a stock Mosquitto's)")
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
    from tests.telemetry.services import Influx, Mosquitto, shipped_broker_settings

    with tempfile.TemporaryDirectory(prefix="bench-telemetry-") as tmp:
        root = Path(tmp)
        csms_port = free_port()
        csms = subprocess.Popen([sys.executable, "-m", "bench.echo_csms", "--listen", f"127.0.0.1:{csms_port}"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        broker_conf = (shipped_broker_settings() if args.broker_inflight is None
                       else (f"max_inflight_messages {args.broker_inflight}",))
        print(f"broker: Mosquitto with {'; '.join(broker_conf) or 'its defaults'}"
              f"{' (as docker/mosquitto.conf)' if args.broker_inflight is None else ''}", flush=True)
        broker = Mosquitto(root / "mosquitto", extra=broker_conf).start()
        influx = Influx(root / "influxdb").start()
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
            names = args.variants.split(",")
            for name in names:  # `off-b`, `on-b`: a second gateway set up as `off`, `on` (A against A)
                if name.endswith("-b") and name[:-2] in variants:
                    variants[name] = variants[name[:-2]]
            for name in names:
                influx.create_db(_db(name))

            def start(names_: list[str], tag: str) -> dict[str, tuple[subprocess.Popen[bytes], int]]:
                started: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
                for name in names_:
                    workdir = root / f"{name}-{tag}"
                    workdir.mkdir()
                    started[name] = start_gateway(workdir, csms_port, variants[name].replace('"bench"', f'"{_db(name)}"'),
                                                  gateway_cpus, site=f"bench-{name}", wait_idle=False)
                for gw, _ in started.values():
                    idle(gw.pid)
                return started

            def window(gateways: dict[str, tuple[subprocess.Popen[bytes], int]], group: list[str], rnd: int) -> None:
                before = {name: points(influx, _db(name)) for name in group}
                counts0 = {name: sink_counts(gateways[name][0].api_port) for name in group}  # type: ignore[attr-defined]
                profs = {name: profiles / f"telemetry-{name}-{rnd + 1}.txt" for name in group} if args.pyspy else None
                results = asyncio.run(load([(name, gateways[name][1], gateways[name][0].pid) for name in group],
                                           args.chargers, args.warmup, args.seconds, args.rate, profs,
                                           day=1 + rnd % 28))  # a new day each round: new points in InfluxDB
                for name, r in results.items():
                    if "[influx]" in variants[name]:  # the sink kept up: every sample of the window landed
                        want = before[name] + r["calls"] * len(SAMPLES)
                        deadline = time.monotonic() + 30
                        while points(influx, _db(name)) < want and time.monotonic() < deadline:
                            time.sleep(0.2)
                        r["influx_kept_up"] = float(points(influx, _db(name)) >= want)
                    # every sink kept up: nothing dropped in the window (a sink that drops does less work)
                    counts1 = sink_counts(gateways[name][0].api_port)  # type: ignore[attr-defined]
                    for sink, c in counts1.items():
                        r[f"{sink}_dropped"] = c.get("dropped", 0.0) - counts0[name].get(sink, {}).get("dropped", 0.0)
                        r[f"{sink}_delivered"] = c.get("delivered", 0.0) - counts0[name].get(sink, {}).get("delivered", 0.0)
                    drops = {k[:-8]: int(v) for k, v in r.items() if k.endswith("_dropped") and v}
                    runs.setdefault(name, []).append(r)
                    print(f"round {rnd + 1} {name:7} {r['calls_per_s']:7.0f} calls/s  "
                          f"{r['cpu_us_per_call']:6.0f} us CPU per call (user {r['user_us_per_call']:.0f}, "
                          f"system {r['sys_us_per_call']:.0f}; threads other than the loop's {r['other_threads_us_per_call']:.0f})"
                          + (f"  DROPPED {drops}: this sink did not keep up" if drops else ""), flush=True)

            gateways: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
            try:
                if args.mode == "fresh":  # a new gateway for every variant and round
                    for rnd in range(args.repeat):
                        for name in names:
                            gateways = start([name], str(rnd))
                            try:
                                window(gateways, [name], rnd)
                            finally:
                                for gw, _ in gateways.values():
                                    stop(gw)
                                gateways = {}
                else:  # one gateway per variant for the whole run, all pinned to the same CPU
                    gateways = start(names, "run")
                    for rnd in range(args.repeat):
                        if args.mode == "concurrent":
                            window(gateways, names, rnd)
                        else:  # interleaved: one variant at a time, the others idle, round after round
                            for name in names:
                                window(gateways, [name], rnd)
            finally:
                for gw, _ in gateways.values():
                    stop(gw)
        finally:
            influx.stop()
            broker.stop()
            stop(csms)

    import statistics

    results = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    base = "off" if "off" in results else names[0]  # the reference: off, else the first variant named
    off, on = results[base], results.get("on") or results[list(results)[-1]]
    overhead = on["cpu_us_per_call"] / off["cpu_us_per_call"] - 1
    print(f"{'variant':8} {'calls/s':>9} {'gateway CPU':>12} {'CPU per call':>13}")
    for name, r in results.items():
        print(f"{name:8} {r['calls_per_s']:9.0f} {r['cpu_util'] * 100:11.0f}% {r['cpu_us_per_call']:10.0f} us")
    ratios = {}
    for name, r in results.items():
        if name != base:
            # each round's variant against the same round's off (measured in the same minute, or in
            # the same seconds with --mode concurrent), then the median of those
            per_round = [v["cpu_us_per_call"] / o["cpu_us_per_call"] - 1 for v, o in zip(runs[name], runs[base])]
            ratios[name] = {"of_medians": r["cpu_us_per_call"] / off["cpu_us_per_call"] - 1,
                            "rounds": per_round, "median_of_rounds": statistics.median(per_round)}
            print(f"{name}: {ratios[name]['of_medians']:+.0%} CPU per relayed MeterValues against {base} (medians); "
                  f"per round {', '.join(f'{x:+.0%}' for x in per_round)}, median {ratios[name]['median_of_rounds']:+.0%} "
                  f"(target for on: <= +25 %)")
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "telemetry.json").write_text(json.dumps({"args": vars(args), "runs": runs, "medians": results,
                                                    "overhead": overhead, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
