"""A soak run: the gateway under simulated chargers for a chosen time, MQTT and InfluxDB on, the CSMS
going away and coming back, and what the gateway holds measured over time.

    python -m bench.soak --minutes 30 --chargers 200            # the figures in bench/README.md
    python -m bench.soak --minutes 3 --chargers 20 --csms-up 50 --csms-down 20    # a quick look

Processes (all on 127.0.0.1, all stopped by PID at the end): Mosquitto and InfluxDB 1.x started as
the tests start them (tests/telemetry/services.py; the broker set up like docker/mosquitto.conf), a
CSMS built on the `ocpp` package (bench/soak_csms.py), the gateway (MQTT QoS 1, InfluxDB v1, relay
to the CSMS, buffer mode) and `ocpp-gateway simulate` with N chargers of the listed versions
(assigned in turn) that boot, charge (transactions of `--session` seconds on average, meter values
every 1/`--rate` s, temperature and humidity) and stay connected for the whole run.

The CSMS is up for `--csms-up` seconds, then stopped for `--csms-down` seconds, and so on: while it
is away the gateway answers the chargers and keeps their transaction messages in its outbox; when
it is back the outboxes are replayed.

Every `--sample` seconds it records, for the gateway process: resident memory (RSS), open file
descriptors and threads (psutil), asyncio tasks (`ocppgw_event_loop_tasks`), the outbox depth (sum
of `ocppgw_outbox_depth`), the sinks' backlog and spool (`ocppgw_sink_backlog`,
`ocppgw_sink_spool_depth`), chargers connected and upstream links online. At the end: the samples,
and for each series its growth per hour, fitted (least squares) over the samples after
`--warmup` minutes (10), and compared between the ends of the CSMS's up phases (the moments its outboxes
have drained), so the saw-tooth of the outages does not read as growth. `--out FILE` writes
everything as JSON. Linux only; needs psutil, mosquitto and influxd.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from bench._common import REPO, child_setup, free_port, http_get_status, tcp_accepts

TOKEN = "soak-api-token-not-a-secret-0123456789"
SERIES = ("rss_mb", "fds", "threads", "tasks", "outbox", "mqtt_backlog", "influx_backlog", "mqtt_spool",
          "influx_spool", "chargers", "online")


def _stop(proc: subprocess.Popen[Any] | None, timeout: float = 15) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _metrics(api_port: int) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"http://127.0.0.1:{api_port}/metrics",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    return str(opener.open(request, timeout=10).read().decode())


def _sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for m in re.finditer(rf"^{name}(?:\{{([^}}]*)\}})? (\S+)$", text, re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def sample(gw: psutil.Process, api_port: int, t0: float, csms_up: bool) -> dict[str, float]:
    text = _metrics(api_port)
    with gw.oneshot():
        rss, fds, threads = gw.memory_info().rss, gw.num_fds(), gw.num_threads()
        cpu = sum(gw.cpu_times()[:2])
    return {
        "t_min": round((time.monotonic() - t0) / 60, 2),
        "csms_up": 1.0 if csms_up else 0.0,
        "rss_mb": round(rss / 2**20, 2),
        "fds": fds,
        "threads": threads,
        "tasks": _sum(text, "ocppgw_event_loop_tasks"),
        "outbox": _sum(text, "ocppgw_outbox_depth"),
        "mqtt_backlog": _sum(text, "ocppgw_sink_backlog", sink="mqtt"),
        "influx_backlog": _sum(text, "ocppgw_sink_backlog", sink="influx"),
        "mqtt_spool": _sum(text, "ocppgw_sink_spool_depth", sink="mqtt"),
        "influx_spool": _sum(text, "ocppgw_sink_spool_depth", sink="influx"),
        "chargers": _sum(text, "ocppgw_chargers_connected"),
        "online": _sum(text, "ocppgw_upstream_links", state="online"),
        "cpu_s": round(cpu, 1),
        "sink_dropped": _sum(text, "ocppgw_sink_dropped_total"),
        "dead_letters": _sum(text, "ocppgw_outbox_dead_letters"),
    }


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (minutes, value), per hour."""
    if len(points) < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return None if den == 0 else 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den


def report(samples: list[dict[str, float]], ends: list[dict[str, float]], warmup: float) -> dict[str, Any]:
    steady = [s for s in samples if s["t_min"] >= warmup]
    out: dict[str, Any] = {}
    for name in SERIES:
        values = [s[name] for s in steady]
        if not values:
            continue
        out[name] = {
            "first": values[0], "last": values[-1], "min": min(values), "max": max(values),
            "growth_per_hour_fit": slope_per_hour([(s["t_min"], s[name]) for s in steady]),
            "at_up_phase_ends": [e[name] for e in ends if e["t_min"] >= warmup],
            "growth_per_hour_up_phase_ends": slope_per_hour([(e["t_min"], e[name]) for e in ends if e["t_min"] >= warmup]),
        }
    return out


def _warnings(log: Path) -> dict[str, int]:
    """WARNING and ERROR lines of the gateway's log, counted by message with ids and numbers blanked."""
    counts: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = re.search(r"\s(WARNING|ERROR)\s+(\S+)(?: \[[^]]*\])?: (.*)$", line)
        if m:
            text = re.sub(r"SIM\d+", "SIMn", f"{m.group(1)} {m.group(2)}: {m.group(3)}")
            text = re.sub(r"\d+(\.\d+)?", "N", text)[:160]
            counts[text] = counts.get(text, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _start_gateway(work: Path, csms_port: int, mqtt_url: str, influx_url: str) -> tuple[subprocess.Popen[bytes], int, int]:
    port, api = free_port(), free_port()
    conf = work / "gateway.toml"
    conf.write_text(f"""site_id = "soak"
data_dir = "{work / 'data'}"
[websocket]
listen = "127.0.0.1:{port}"
[upstream]
url = "ws://127.0.0.1:{csms_port}/ocpp"
reconnect_max = 30.0
[api]
listen = "127.0.0.1:{api}"
token = "{TOKEN}"
[mqtt]
url = "{mqtt_url}"
ha_discovery = true
[influx]
url = "{influx_url}"
api = "v1"
database = "soak"
[logging]
level = "WARNING"
""")
    log = open(work / "gateway.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(conf)], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, preexec_fn=child_setup(None))
    log.close()
    deadline = time.monotonic() + 30
    while http_get_status("127.0.0.1", port, "/healthz") != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(f"gateway did not start: {(work / 'gateway.log').read_text()[-2000:]}")
        time.sleep(0.1)
    return proc, port, api


def _start_csms(work: Path, port: int) -> subprocess.Popen[bytes]:
    log = open(work / "csms.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "bench.soak_csms", "--listen", f"127.0.0.1:{port}"], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, preexec_fn=child_setup(None))
    log.close()
    deadline = time.monotonic() + 20
    while not tcp_accepts("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(f"CSMS did not start: {(work / 'csms.log').read_text()[-2000:]}")
        time.sleep(0.1)
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the run (default 30)")
    ap.add_argument("--chargers", type=int, default=200, help="simulated chargers (default 200)")
    ap.add_argument("--versions", default="1.6,2.0.1", help="their OCPP versions, assigned in turn (default 1.6,2.0.1)")
    ap.add_argument("--rate", type=float, default=0.1, help="meter values per second per charging charger (default 0.1)")
    ap.add_argument("--session", type=float, default=300.0, help="mean transaction length, s (default 300)")
    ap.add_argument("--csms-up", type=float, default=240.0, help="s the CSMS stays up (default 240)")
    ap.add_argument("--csms-down", type=float, default=60.0, help="s it stays away (default 60)")
    ap.add_argument("--sample", type=float, default=30.0, help="s between samples (default 30)")
    ap.add_argument("--warmup", type=float, default=10.0, help="minutes left out of the growth figures (default 10: "
                    "the first outage and replay allocate buffers once)")
    ap.add_argument("--out", help="write samples and results as JSON to this file")
    ap.add_argument("--keep", action="store_true", help="keep the working directory (logs, data) after the run")
    args = ap.parse_args()

    from tests.telemetry.services import Influx, Mosquitto, shipped_broker_settings

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    procs: list[subprocess.Popen[Any]] = []
    broker = influx = None
    csms: subprocess.Popen[bytes] | None = None
    sim: subprocess.Popen[bytes] | None = None
    gw_proc: subprocess.Popen[bytes] | None = None
    try:
        broker = Mosquitto(work / "mosquitto", shipped_broker_settings()).start()
        influx = Influx(work / "influx").start()
        influx.create_db("soak")
        csms_port = free_port()
        csms = _start_csms(work, csms_port)
        gw_proc, ws_port, api_port = _start_gateway(work, csms_port, broker.url, influx.url)
        procs.append(gw_proc)
        gw = psutil.Process(gw_proc.pid)
        duration = args.minutes * 60
        sim_out = open(work / "simulate.json", "wb")
        sim_err = open(work / "simulate.log", "wb")
        sim = subprocess.Popen([sys.executable, "-m", "gateway", "simulate", "--url", f"ws://127.0.0.1:{ws_port}/ocpp",
                                "--chargers", str(args.chargers), "--versions", args.versions, "--duration",
                                str(duration), "--rate", str(args.rate), "--session", str(args.session),
                                "--id-tag", "CSMSGOOD", "--connect-rate", "20", "--json"],
                               cwd=REPO, stdout=sim_out, stderr=sim_err, preexec_fn=child_setup(None))
        sim_out.close()
        sim_err.close()
        print(f"soak: {args.chargers} chargers ({args.versions}), {args.minutes:g} min, rate {args.rate}/s, "
              f"CSMS up {args.csms_up:g} s / down {args.csms_down:g} s; gateway pid {gw_proc.pid}; work {work}",
              flush=True)
        t0 = time.monotonic()
        samples: list[dict[str, float]] = []
        ends: list[dict[str, float]] = []  # the last sample of each up phase
        up = True
        phase_end = t0 + args.csms_up
        next_sample = t0
        header = " ".join(f"{n:>8}" for n in ("t_min", "csms", *SERIES))
        print(header, flush=True)
        while time.monotonic() - t0 < duration and sim.poll() is None:
            now = time.monotonic()
            if now >= phase_end:
                if up:
                    ends.append(sample(gw, api_port, t0, True))
                    _stop(csms)
                    csms = None
                    phase_end = now + args.csms_down
                else:
                    csms = _start_csms(work, csms_port)
                    phase_end = now + args.csms_up
                up = not up
            if now >= next_sample:
                s = sample(gw, api_port, t0, up)
                samples.append(s)
                print(f"{s['t_min']:>8} {'up' if up else 'down':>8} "
                      + " ".join(f"{s[n]:>8g}" for n in SERIES), flush=True)
                next_sample += args.sample
            time.sleep(max(0.05, min(next_sample, phase_end) - time.monotonic()))
        if up:  # the run ended in an up phase: its last moment counts as one of their ends
            ends.append(sample(gw, api_port, t0, up))
        try:
            sim.wait(120)  # it ends its transactions and prints its summary
        except subprocess.TimeoutExpired:
            pass
        summary = json.loads((work / "simulate.json").read_text() or "{}")
        cpu_min = (samples[-1]["cpu_s"] - samples[0]["cpu_s"]) / max(1e-9, samples[-1]["t_min"] - samples[0]["t_min"])
        results = {"args": vars(args), "results": report(samples, ends, args.warmup), "samples": samples,
                   "up_phase_ends": ends, "simulator": summary, "gateway_cpu_s_per_min": round(cpu_min, 2),
                   "gateway_warnings": _warnings(work / "gateway.log")}
        print("\ngrowth per hour (after the warm-up): fitted over all samples | between the ends of the CSMS's up phases")
        for name, r in results["results"].items():
            fit, ends_fit = r["growth_per_hour_fit"], r["growth_per_hour_up_phase_ends"]
            print(f"  {name:<15} first {r['first']:>9g} last {r['last']:>9g} min {r['min']:>9g} max {r['max']:>9g}   "
                  f"{'-' if fit is None else f'{fit:+.2f}':>10} | {'-' if ends_fit is None else f'{ends_fit:+.2f}':>10}"
                  f"   at up-phase ends: {r['at_up_phase_ends']}")
        print(f"gateway CPU: {results['gateway_cpu_s_per_min']} s per minute; warnings and errors logged, by kind:")
        for text, n in results["gateway_warnings"].items():
            print(f"  {n:>6}  {text}")
        if summary:
            errors = {a: r["errors"] for a, r in summary.get("sent", {}).items() if r["errors"]}
            print(f"simulator: {summary.get('booted')}/{summary.get('chargers')} booted, "
                  f"{summary.get('connected_at_end')} connected at the end, {summary.get('connects')} connections, "
                  f"{summary.get('transactions_started')} transactions, {sum(r['sent'] for r in summary.get('sent', {}).values())} "
                  f"messages sent, errors {errors or 'none'} {summary.get('error_codes') or ''}")
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1))
            print(f"wrote {args.out}")
    finally:
        _stop(sim)
        for p in procs:
            _stop(p)
        _stop(csms)
        for service in (broker, influx):
            if service is not None:
                service.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
