"""Relay benchmark: the gateway against the limit, the bare reference and the peer, N chargers each.

    python -m bench.relay                 # N = 1, 100, 1000, every column, once (~10 minutes on 2 cores)
    python -m bench.relay --quick         # N = 1, 100, short windows
    python -m bench.relay --sizes 100,1000 --repeat 3           # medians of 3 runs, ratios per run
    python -m bench.relay --only limit,gateway --gateway-variants ws=@a.toml picows=@b.toml

Columns (all against one echo CSMS, the same load and the same CPU pinning, in one run):
  direct     the load against the echo CSMS itself (the latency floor)
  limit      python -m bench.picows_relay       raw-frame relay on picows (the least a Python relay does)
  bare       python -m bench.bare_relay         raw-frame relay on websockets (the earlier reference)
  peer       python -m bench.peer_broker        ocpp-broker 0.4 in relay mode (its own venv)
  gateway    python -m gateway run -c FILE      one column per --gateway-variants entry
Every relay is a fresh process per N and run, proven to forward (a probe CALL only the echo
CSMS can answer) before the load (python -m bench.load, its own process) measures it by PID.
See bench/README.md. Results: tables on stdout and bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import statistics
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from bench import peer_broker
from bench._common import REPO, child_setup, free_port, http_get_status, percentiles, raise_nofile, tcp_accepts

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"

NICE = [0]  # --nice: scheduling priority of every process the bench starts

# issue 15's targets for the gateway (ratios from the same run; medians over --repeat runs)
TARGETS = {
    "cpu_ratio_limit_max": 2.5,    # gateway CPU per relayed call / the limit (picows bare), closed loop
    "cpu_ratio_peer_max": 0.6,     # gateway CPU per relayed call / the peer (ocpp-broker)
    "cpu_ratio_min_n": 100,        # the CPU targets are judged from N = 100 on
    "p99_added_ms_max": 1.0,       # open loop, at 1000 chargers x 1 msg/s
    "p99_added_at_n": 1000,
    "rss_per_charger_kib_max": 40.0,
    "start_to_listening_s_max": 1.0,
}

RELAYS = ("limit", "bare", "peer")  # reference relays, in the order they run (then the gateway columns)
COLUMNS = ("direct", *RELAYS, "gateway")


def safe(name: str) -> str:
    """A column name as part of a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- processes


class Child:
    """A process started by the bench; stopped by its own PID only."""

    def __init__(self, name: str, argv: list[str], log_path: Path, cpus: list[int] | None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "wb")
        self.t_popen = time.perf_counter()
        self.proc = subprocess.Popen(
            argv, cwd=str(REPO), stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=child_setup(cpus, NICE[0]), env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        out.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, host: str, port: int, timeout: float, path: str = "/healthz") -> dict[str, Any]:
        """Poll until `path` answers 200. Times are from Popen."""
        t_tcp = None
        deadline = self.t_popen + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            if t_tcp is None and tcp_accepts(host, port, 0.2):
                t_tcp = time.perf_counter() - self.t_popen
            if t_tcp is not None:
                status = http_get_status(host, port, path, 1.0)
                if status == 200:
                    return {"tcp_accept_s": t_tcp, "healthz_200_s": time.perf_counter() - self.t_popen}
            time.sleep(0.005)
        self.stop()
        raise RuntimeError(f"{self.name} not healthy within {timeout}s (tcp accept: {t_tcp}):\n{self.tail()}")

    def wait_idle(self, timeout: float, window: float = 0.5, max_util: float = 0.05) -> float | None:
        """Wait until the process (and its children) use < max_util of a core over `window`:
        background warm-up after the port opens (e.g. compiling schemas) must not be charged
        to the relayed calls. Returns seconds from Popen to idle, or None on timeout."""
        import psutil  # type: ignore[import-untyped]  # no type stubs in the venv

        proc = psutil.Process(self.pid)

        def cpu() -> float:
            total = 0.0
            for p in [proc, *proc.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
            return total

        deadline = time.perf_counter() + timeout
        last = cpu()
        while time.perf_counter() < deadline:
            time.sleep(window)
            now = cpu()
            if now - last < max_util * window:
                return time.perf_counter() - self.t_popen
            last = now
        return None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        return self.proc.returncode


def gateway_config(listen_port: int, csms_port: int, data_dir: Path, n: int, rate_limit: bool,
                   extras: list[str], cache_dir: Path | None = None) -> dict[str, Any]:
    """The gateway's config for one run: the bench's settings, then each TOML text of `extras`
    merged in (tables merge key by key, so `[websocket]` in an extra adds to the bench's).
    `cache_dir`: the compiled schema validators, shared by the run's gateways (see warm_cache)."""
    ws: dict[str, Any] = {"listen": f"127.0.0.1:{listen_port}", "path": "/ocpp"}
    if not rate_limit:
        ws["max_messages_per_second"] = 0
    if n + 100 > 1000:  # the default cap on connections of ids without [chargers.ID] (+ handshakes)
        ws["max_connections"] = n + 100
    cfg: dict[str, Any] = {
        "site_id": "bench",
        "data_dir": data_dir.as_posix(),
        "websocket": ws,
        "upstream": {"url": f"ws://127.0.0.1:{csms_port}/ocpp"},
        "logging": {"level": "WARNING"},
    }
    if cache_dir is not None:
        cfg["cache_dir"] = cache_dir.as_posix()
    for text in extras:
        merge(cfg, tomllib.loads(text))
    return cfg


def warm_cache(cache_dir: Path) -> None:
    """Compile the schema validators into `cache_dir` once, before any gateway column runs: every
    gateway of the run then loads them as a production gateway does at each start after its
    first. Without this each run's gateway compiled ~270 schemas right before the chargers
    connected, and the memory that work freed was reused by the connections: RSS per charger
    read 5 KiB lower than a restarted gateway's."""
    code = ("import sys; from pathlib import Path; from gateway.protocol.schemas import SchemaRegistry; "
            "r = SchemaRegistry(cache_dir=Path(sys.argv[1])); r.warm_up()")
    subprocess.run([sys.executable, "-c", code, str(cache_dir)], cwd=str(REPO), check=True, timeout=300)


def merge(into: dict[str, Any], more: dict[str, Any]) -> None:
    for k, v in more.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v


def toml_text(cfg: dict[str, Any], prefix: str = "") -> str:
    """TOML for a config of scalars, lists of scalars and tables (what gateway configs use)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (dt.datetime, dt.date, dt.time)):
            return v.isoformat()
        if isinstance(v, list) and not any(isinstance(x, dict) for x in v):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise ValueError(f"cannot write {v!r} in a gateway config (arrays of tables are not supported here)")

    def key(k: str) -> str:
        return k if k and all(c.isalnum() or c in "-_" for c in k) else json.dumps(k)

    lines = [f"{key(k)} = {value(v)}" for k, v in cfg.items() if not isinstance(v, dict)]
    text = "\n".join(lines) + ("\n" if lines else "")
    for k, v in cfg.items():
        if isinstance(v, dict):
            name = prefix + key(k)
            text += f"\n[{name}]\n" + toml_text(v, name + ".")
    return text


def variant_toml(spec: str) -> str:
    """TOML text of a variant: inline (e.g. `websocket.transport = "picows"`), or `@FILE`."""
    return Path(spec[1:]).read_text() if spec.startswith("@") else spec


def probe(url: str, marker: str, timeout: float = 10.0, tries: int = 3) -> dict[str, Any]:
    """Prove that the relay at `url` forwards: a DataTransfer whose answer only the echo CSMS can
    give (the run's secret marker with a fresh nonce). A CALL the relay sends the probe charger
    itself is answered NotImplemented. A few tries (a relay may still be opening its link)."""
    from websockets.sync.client import connect
    from websockets.typing import Subprotocol

    last = ""
    for attempt in range(tries):
        nonce = secrets.token_hex(8)
        mid = f"probe.{nonce}"
        want = f"{marker}:{nonce}"
        t0 = time.perf_counter()
        try:
            with connect(f"{url}/PROBE{attempt}", subprotocols=[Subprotocol("ocpp1.6")], compression=None,
                         proxy=None, open_timeout=timeout, close_timeout=2) as ws:
                ws.send(json.dumps([2, mid, "DataTransfer", {"vendorId": "bench", "messageId": "probe", "data": nonce}]))
                deadline = time.monotonic() + timeout
                while True:
                    msg = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
                    if msg[0] == 2:
                        ws.send(json.dumps([4, msg[1], "NotImplemented", "", {}]))
                        continue
                    if msg[1] != mid:
                        continue
                    data = msg[2].get("data") if msg[0] == 3 and isinstance(msg[2], dict) else None
                    if data == want:
                        return {"ok": True, "rtt_ms": (time.perf_counter() - t0) * 1e3, "tries": attempt + 1}
                    last = f"answered {json.dumps(msg)[:200]} (not from the echo CSMS)"
                    break
        except Exception as exc:  # noqa: BLE001 - any failure is a failed try
            last = repr(exc)
        time.sleep(0.5)
    raise RuntimeError(f"forwarding probe failed at {url}: {last}")


# ----------------------------------------------------------------------------- load runs


def wait_quiet(max_wait: float, max_busy: float = 0.2, window: float = 1.0) -> dict[str, Any]:
    """Wait (bounded) until the machine is quiet: less than `max_busy` cores busy over
    `window` seconds while the bench's own processes are idle. Other work on the same
    cores (a test suite, a build) would distort every wall-clock figure."""
    import psutil

    def busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    t0 = time.perf_counter()
    last_busy = None
    while True:
        b0 = busy()
        time.sleep(window)
        last_busy = (busy() - b0) / window
        if last_busy < max_busy:
            return {"quiet": True, "waited_s": time.perf_counter() - t0, "busy_cores": last_busy}
        if time.perf_counter() - t0 > max_wait:
            log(f"  machine still busy ({last_busy:.2f} cores used by others) after {max_wait:.0f}s; measuring anyway")
            return {"quiet": False, "waited_s": time.perf_counter() - t0, "busy_cores": last_busy}


GATEWAY_READS_WAIT = 40.0  # s: the gateway's read_delay (10 s) and the reads of N = 5000 chargers


def wake_probe(cpu_a: int, cpu_b: int, rounds: int = 2000) -> dict[str, float]:
    """What the machine alone adds to an open-loop round trip: a 1-byte ping-pong over a socket
    pair between a process on `cpu_a` and one on `cpu_b`, 1 per ms (as the open loop at N = 1000
    offers them); on a VM an idle core's wake-up can take a millisecond. Its p99 bounds from below
    what any relay on `cpu_b` adds (each relayed call crosses between the cores four times)."""
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the child: echoes on cpu_b until told to stop
        try:
            os.sched_setaffinity(0, {cpu_b})
            while True:
                d = b.recv(16)
                if not d or d == b"q":
                    break
                b.send(d)
        finally:
            os._exit(0)
    rtts: list[int] = []
    try:
        prev = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpu_a})
        try:
            a.settimeout(5)
            for _ in range(rounds):
                t = time.perf_counter_ns()
                a.send(b"x")
                a.recv(16)
                rtts.append(time.perf_counter_ns() - t)
                time.sleep(0.001)
        finally:
            os.sched_setaffinity(0, prev)
    finally:
        with contextlib.suppress(OSError):
            a.send(b"q")
        os.waitpid(pid, 0)
        a.close()
        b.close()
    pct = percentiles(rtts, (50, 99, 99.9))
    return {"p50_ms": (pct["p50"] or 0) / 1e6, "p99_ms": (pct["p99"] or 0) / 1e6, "p999_ms": (pct["p99.9"] or 0) / 1e6}


def load_budget(args: argparse.Namespace, n: int) -> float:
    closed = len(args.closed_actions) * (args.warmup + args.closed_secs + 2.0)
    connect = 10.0 + n * 0.05
    return 10.0 + 2 * settle_for(args, n) + 2 * args.keepalive + connect + closed + args.warmup + args.open_secs + 1.0 / rate_for(args, n) + 15.0


def rate_for(args: argparse.Namespace, n: int) -> float:
    """Open-loop calls per second per charger: --rate, lowered so that N chargers offer at most
    --open-calls-max calls per second in all (N = 5000 at 1000/s: 0.2 msg/s per charger)."""
    return min(args.rate, args.open_calls_max / max(1, n))


def settle_for(args: argparse.Namespace, n: int) -> float:
    return args.settle + (1.0 if n >= 500 else 0.0)


def run_load(args: argparse.Namespace, name: str, url: str, n: int, pid: int, echo_pid: int,
             cpus: list[int] | None, logs: Path, tag: str = "") -> dict[str, Any]:
    # a gateway reads every charger's variables once, [variables].read_delay (10 s) after it
    # came: the load waits for those reads before it measures (bench/README.md, "What runs")
    reads = GATEWAY_READS_WAIT if (name == "gateway" or name.startswith("gw:")) else 0.0
    budget = load_budget(args, n) + reads
    # bounded per run and over the whole bench (2x --quiet-wait in total)
    allowance = min(args.quiet_wait, args.quiet_budget)
    quiet = wait_quiet(allowance) if allowance > 0 else None
    if quiet:
        args.quiet_budget = max(0.0, args.quiet_budget - max(0.0, quiet["waited_s"] - 1.0))
    argv = [
        sys.executable, "-m", "bench.load", "--url", url, "--n", str(n), "--pid", str(pid),
        "--echo-pid", str(echo_pid), "--batch", str(args.batch), "--settle", str(settle_for(args, n)),
        "--warmup", str(args.warmup), "--closed-secs", str(args.closed_secs),
        "--closed-actions", ",".join(args.closed_actions), "--open-secs", str(args.open_secs),
        "--rate", str(rate_for(args, n)), "--max-secs", str(budget), "--seed", str(n),
        "--keepalive", str(args.keepalive), "--await-server-calls", str(reads),
    ]
    if args.pyspy and (name in args.pyspy or (name.startswith("gw:") and "gateway" in args.pyspy)):
        prof = RESULTS / "profiles"
        prof.mkdir(parents=True, exist_ok=True)
        argv += ["--pyspy", str(prof), "--pyspy-tag", f"{safe(name)}{tag}-"]
    err_path = logs / f"load-{safe(name)}-N{n}{tag}.log"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, cwd=str(REPO), stdout=subprocess.PIPE, stderr=err,
                                preexec_fn=child_setup(cpus, NICE[0]))
        try:
            out, _ = proc.communicate(timeout=budget + 45)
        except subprocess.TimeoutExpired as exc:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
            raise RuntimeError(f"load {name} N={n} exceeded {budget + 45:.0f}s; see {err_path.name}") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"load {name} N={n} failed ({proc.returncode}):\n{err_path.read_text()[-3000:]}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    result["machine_before"] = quiet
    return result


# ----------------------------------------------------------------------------- summary


def _get(d: dict[str, Any] | None, *path: str) -> Any:
    cur: Any = d
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def summarize(r: dict[str, Any] | None, direct: dict[str, Any] | None) -> dict[str, Any] | None:
    if not r or "error" in r:
        return None
    s: dict[str, Any] = {
        "connected": r.get("connected"),
        "connect_failures": r.get("connect_failures"),
        "connect_secs": r.get("connect_secs"),
        "reads_waited_s": (r.get("server_calls_awaited") or {}).get("waited_s"),
        "rss_per_charger_kib": (r["rss_per_charger"] / 1024) if r.get("rss_per_charger") is not None else None,
        "rss_per_charger_2nd_half_kib": (r["rss_per_charger_2nd_half"] / 1024)
        if r.get("rss_per_charger_2nd_half") is not None else None,
        "rss_before_mib": r.get("rss_before", 0) / 2**20,
        "rss_idle_mib": r.get("rss_idle", 0) / 2**20,
        "rss_after_load_mib": r.get("rss_after_load", 0) / 2**20,
        "start_to_listening_s": _get(r, "startup", "healthz_200_s"),
        "start_to_idle_s": _get(r, "startup", "idle_s"),
    }
    for ph, key in (("closed_Heartbeat", "hb"), ("closed_MeterValues", "mv")):
        s[f"cpu_us_per_call_{key}"] = _get(r, "phases", ph, "relay_cpu_us_per_call")
        s[f"throughput_{key}"] = _get(r, "phases", ph, "throughput")
        s[f"relay_util_{key}"] = _get(r, "phases", ph, "relay_cpu_util")
        s[f"echo_util_{key}"] = _get(r, "phases", ph, "echo_cpu_util")
        s[f"load_util_{key}"] = _get(r, "phases", ph, "load_cpu_util")
        s[f"foreign_util_{key}"] = _get(r, "phases", ph, "foreign_cpu_util")
    op = _get(r, "phases", "open_Heartbeat") or {}
    # at 1 msg/s the relay uses little CPU: psutil's 10 ms ticks are too coarse, prefer the
    # nanosecond scheduler figure when the platform has it
    s["foreign_util_open"] = op.get("foreign_cpu_util")
    s["cpu_us_per_call_open"] = op.get("relay_sched_us_per_call") or op.get("relay_cpu_us_per_call")
    s["open_rate"] = op.get("rate_per_charger")
    for p in ("p50", "p99"):
        raw = _get(op, "rtt_ms", p)
        s[f"rtt_{p}_ms"] = raw
        base = _get(direct, "phases", "open_Heartbeat", "rtt_ms", p)
        s[f"added_{p}_ms"] = (raw - base) if (raw is not None and base is not None) else None
    s["open_samples"] = _get(op, "rtt_ms", "n")
    s["open_timeouts"] = op.get("timeouts")
    s["open_late_sends"] = op.get("late_sends")
    s["errors"] = r.get("errors_total")
    s["unexpected_closes"] = r.get("unexpected_closes")
    s["server_calls_answered"] = r.get("server_calls_answered")
    return s


def ratio(a: Any, b: Any) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return float(a) / float(b)


# figures compared between a gateway column and each reference: (summary key, ratio name)
RATIO_FIGURES = (
    ("cpu_us_per_call_hb", "cpu_hb"),
    ("cpu_us_per_call_mv", "cpu_mv"),
    ("cpu_us_per_call_open", "cpu_open"),
    ("throughput_hb", "throughput_hb"),
    ("throughput_mv", "throughput_mv"),
    ("rss_per_charger_kib", "rss"),
    ("rss_per_charger_2nd_half_kib", "rss_2nd_half"),
)


def compare(summary: dict[str, dict[str, Any] | None], gw_col: str) -> dict[str, Any]:
    """Ratios of one gateway column to each reference relay, within one run."""
    gw = summary.get(gw_col) or {}
    c: dict[str, Any] = {}
    for ref in RELAYS:
        base = summary.get(ref) or {}
        for key, name in RATIO_FIGURES:
            c[f"{name}_vs_{ref}"] = ratio(gw.get(key), base.get(key))
    c["p99_added_ms"] = gw.get("added_p99_ms")
    c["rss_per_charger_kib"] = gw.get("rss_per_charger_kib")
    c["start_to_listening_s"] = gw.get("start_to_listening_s")
    return c


def targets_met(n: int, c: dict[str, Any]) -> dict[str, bool | None]:
    t = TARGETS
    checks: dict[str, bool | None] = {}
    judged = n >= t["cpu_ratio_min_n"]
    for fig in ("hb", "mv"):
        v = c.get(f"cpu_{fig}_vs_limit")
        checks[f"cpu_{fig}_le_{t['cpu_ratio_limit_max']}x_limit"] = None if (v is None or not judged) \
            else v <= t["cpu_ratio_limit_max"]
        v = c.get(f"cpu_{fig}_vs_peer")
        checks[f"cpu_{fig}_le_{t['cpu_ratio_peer_max']}x_peer"] = None if (v is None or not judged) \
            else v <= t["cpu_ratio_peer_max"]
    v = c.get("p99_added_ms")
    checks["p99_added_le_1ms_at_1000"] = None if (v is None or n != t["p99_added_at_n"]) else v <= t["p99_added_ms_max"]
    v = c.get("rss_per_charger_kib")
    checks["rss_per_charger_le_40KiB"] = None if (v is None or n < 100) else v <= t["rss_per_charger_kib_max"]
    v = c.get("start_to_listening_s")
    checks["start_to_listening_lt_1s"] = None if v is None else v < t["start_to_listening_s_max"]
    return checks


def median_of(values: list[Any]) -> Any:
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.median(nums) if nums else None


def aggregate(n: int, runs: list[dict[str, Any]], columns: list[str], gw_cols: list[str]) -> dict[str, Any]:
    """Medians over the runs: each column's figures, and each ratio as the median of the ratios
    computed within each run (with the per-run values kept beside it)."""
    summary: dict[str, dict[str, Any] | None] = {}
    for col in columns:
        per_run = [run["summary"].get(col) for run in runs]
        present = [s for s in per_run if s]
        if not present:
            summary[col] = None
            continue
        keys = {k for s in present for k in s}
        med = {k: median_of([s.get(k) for s in present]) for k in keys}
        med["runs_measured"] = len(present)
        summary[col] = med
    comp: dict[str, dict[str, Any]] = {}
    for g in gw_cols:
        per_run = [run["compare"].get(g) or {} for run in runs]
        keys = {k for c in per_run for k in c}
        cg: dict[str, Any] = {}
        for k in sorted(keys):
            vals = [c.get(k) for c in per_run]
            cg[k] = median_of(vals)
            cg[k + "_runs"] = vals
        cg["targets_met"] = targets_met(n, cg)
        comp[g] = cg
    return {"summary": summary, "compare": comp}


# ----------------------------------------------------------------------------- tables


def fmt(v: Any, spec: str = ".1f", suffix: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:{spec}}{suffix}"


def verdict(ok: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: ""}[ok]


def print_rows(heads: tuple[str, ...], rows: list[tuple[str, ...]], left: tuple[int, ...] = (0,)) -> None:
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(r[i].ljust(widths[i]) if i in left else r[i].rjust(widths[i])
                         for i in range(len(heads))).rstrip()

    print(line(heads))
    print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    for r in rows:
        print(line(r))


def print_table(n: int, agg: dict[str, Any], columns: list[str], gw_cols: list[str], repeat: int,
                rate: float) -> None:
    summ = agg["summary"]
    cols = [c for c in columns if summ.get(c) is not None or c != "direct"]
    rows: list[tuple[str, ...]] = []

    def row(label: str, key: str, spec: str = ".1f", direct: bool = True) -> None:
        cells = [(fmt((summ.get(c) or {}).get(key), spec) if (direct or c != "direct") else "") for c in cols]
        if any(x not in ("", "-") for x in cells):  # e.g. no MeterValues rows with --quick
            rows.append((label, *cells))

    row("chargers connected", "connected", "d" if repeat == 1 else ".0f")
    row("connect all, s", "connect_secs", ".2f")
    row("  variables reads awaited, s", "reads_waited_s", ".1f", direct=False)
    row("start to listening, s", "start_to_listening_s", ".3f", direct=False)
    row("  start to idle (warm-up done), s", "start_to_idle_s", ".2f", direct=False)
    row("RSS idle with N chargers, MiB", "rss_idle_mib", ".1f")
    row("RSS per charger, KiB" + (" (noisy)" if n < 100 else ""), "rss_per_charger_kib", ".1f")
    row("  RSS per charger, 2nd half only, KiB", "rss_per_charger_2nd_half_kib", ".1f")
    row("CPU/call closed Heartbeat, us", "cpu_us_per_call_hb", ".1f")
    row("CPU/call closed MeterValues, us", "cpu_us_per_call_mv", ".1f")
    row(f"CPU/call open {rate:.3g} msg/s, us", "cpu_us_per_call_open", ".1f")
    row("throughput closed Heartbeat, rt/s", "throughput_hb", ".0f")
    row("throughput closed MeterValues, rt/s", "throughput_mv", ".0f")
    row("  measured process CPU util (HB)", "relay_util_hb", ".0%")
    row("  echo CSMS CPU util (HB)", "echo_util_hb", ".0%", direct=False)
    row("  load generator CPU util (HB)", "load_util_hb", ".0%")
    row("  other processes' CPU (HB), cores", "foreign_util_hb", ".2f")
    row(f"RTT p50 open {rate:.3g} msg/s, ms", "rtt_p50_ms", ".3f")
    row(f"RTT p99 open {rate:.3g} msg/s, ms", "rtt_p99_ms", ".3f")
    row("added p50 vs direct, ms", "added_p50_ms", ".3f", direct=False)
    row("added p99 vs direct, ms", "added_p99_ms", ".3f", direct=False)
    row("open-loop samples", "open_samples", "d" if repeat == 1 else ".0f")
    row("  other processes' CPU (open), cores", "foreign_util_open", ".2f")
    row("errors / timeouts / unexpected closes", "errors", "d" if repeat == 1 else ".0f")
    how = "one run" if repeat == 1 else f"median of {repeat} runs"
    print(f"\n=== N = {n} chargers ({how}; open loop {rate:.3g} msg/s per charger) " + "=" * 30)
    print_rows(("", *cols), rows)

    t = TARGETS
    for g in gw_cols:
        c = agg["compare"].get(g) or {}
        chk = c.get("targets_met", {})

        def rr(name: str, ref: str, c: dict[str, Any] = c) -> str:
            v = c.get(f"{name}_vs_{ref}")
            if v is None:
                return "-"
            runs = [x for x in c.get(f"{name}_vs_{ref}_runs", []) if x is not None]
            return f"{v:.2f}x" + (" (" + " ".join(f"{x:.2f}" for x in runs) + ")" if len(runs) > 1 else "")

        hrows: list[tuple[str, ...]] = []
        for label, name, fig in (("CPU/call closed Heartbeat", "cpu_hb", "hb"),
                                 ("CPU/call closed MeterValues", "cpu_mv", "mv"),
                                 (f"CPU/call open {rate:.3g} msg/s", "cpu_open", None),
                                 ("throughput closed Heartbeat", "throughput_hb", None),
                                 ("RSS per charger", "rss", None)):
            target = ""
            if fig is not None:
                a = chk.get(f"cpu_{fig}_le_{t['cpu_ratio_limit_max']}x_limit")
                b = chk.get(f"cpu_{fig}_le_{t['cpu_ratio_peer_max']}x_peer")
                target = (f"<= {t['cpu_ratio_limit_max']}x limit {verdict(a)}".strip() + ", "
                          + f"<= {t['cpu_ratio_peer_max']}x peer {verdict(b)}".strip())
                if n < t["cpu_ratio_min_n"]:
                    target += f" (judged from N={t['cpu_ratio_min_n']})"
            cells = (rr(name, "limit"), rr(name, "peer"), rr(name, "bare"))
            if any(x != "-" for x in cells):
                hrows.append((label, *cells, target))
        print(f"\n{g} against the references (ratios within each run"
              + ("; median, the runs in brackets)" if repeat > 1 else ")"))
        print_rows(("", "vs limit", "vs peer", "vs bare", "target"), hrows, left=(0, 4))
        p99 = c.get("p99_added_ms")
        lp99 = (summ.get("limit") or {}).get("added_p99_ms")
        limit_p99 = f"; the limit adds {lp99:.3f} ms on this machine" if lp99 is not None else ""
        rss = c.get("rss_per_charger_kib")
        print(f"{g}: p99 added latency {fmt(p99, '.3f')} ms (target <= {t['p99_added_ms_max']:g} ms at "
              f"N={t['p99_added_at_n']} x 1 msg/s: {verdict(chk.get('p99_added_le_1ms_at_1000')) or 'not judged here'}"
              f"{limit_p99}); "
              f"RSS per charger {fmt(rss)} KiB (target <= {t['rss_per_charger_kib_max']:g} KiB: "
              f"{verdict(chk.get('rss_per_charger_le_40KiB')) or 'not judged at N < 100'}); "
              f"start to listening {fmt(c.get('start_to_listening_s'), '.3f')} s "
              f"(< 1 s: {verdict(chk.get('start_to_listening_lt_1s'))})")


def print_slopes(results: dict[str, Any], columns: list[str]) -> None:
    """How cost grows with N: one line per N for each headline figure."""
    sizes = [k for k, v in results.items() if "aggregate" in v]
    if len(sizes) < 2:
        return
    cols = [c for c in columns if c != "direct"]
    for label, key, spec in (("CPU per relayed call, closed Heartbeat, us", "cpu_us_per_call_hb", ".1f"),
                             ("CPU per relayed call, closed MeterValues, us", "cpu_us_per_call_mv", ".1f"),
                             ("RSS per charger, KiB", "rss_per_charger_kib", ".1f"),
                             ("added p99 latency, open loop, ms", "added_p99_ms", ".3f")):
        rows = [(f"N={k}", *[fmt((results[k]["aggregate"]["summary"].get(c) or {}).get(key), spec) for c in cols])
                for k in sizes]
        print(f"\n{label}")
        print_rows(("", *cols), rows)


# ----------------------------------------------------------------------------- main


def cannot_run(n: int, relay_count: int) -> str | None:
    """Why this machine cannot run N chargers (None if it can): file descriptors and ports."""
    soft, hard = raise_nofile()
    need = 2 * n + 200  # a relay holds both legs of every charger
    if soft < need:
        return (f"N={n} needs {need} open files in the relay; this machine allows {soft} "
                f"(RLIMIT_NOFILE hard limit {hard}; raise it, e.g. `ulimit -Hn`, as root)")
    try:
        lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return None
    if 2 * n + 1000 > hi - lo + 1:
        return (f"N={n} needs about {2 * n} local ports at once (charger and upstream legs); "
                f"net.ipv4.ip_local_port_range offers {hi - lo + 1}")
    return None


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--sizes", default=None, help="comma-separated charger counts (default 1,100,1000), e.g. 1,100,1000,5000")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per N; every figure is the median over the runs and every ratio the median of "
                         "the ratios computed within each run (each run starts every column afresh)")
    ap.add_argument("--only", default="",
                    help="comma-separated columns to run, of direct,limit,bare,peer,gateway (default: all); "
                         "without direct there is no added latency")
    ap.add_argument("--skip", default="", help="comma-separated columns not to run (after --only)")
    ap.add_argument("--quick", action="store_true", help="N=1,100 and short windows")
    ap.add_argument("--closed-secs", type=float, default=None, help="closed-loop measured window per action")
    ap.add_argument("--warmup", type=float, default=None, help="closed-loop warm-up before the window")
    ap.add_argument("--open-secs", type=float, default=None, help="open-loop duration")
    ap.add_argument("--rate", type=float, default=1.0, help="open-loop calls per second per charger")
    ap.add_argument("--open-calls-max", type=float, default=1000.0,
                    help="open loop: at most this many calls per second from all chargers together; the rate "
                         "per charger is lowered to fit (N=5000: 0.2 msg/s)")
    ap.add_argument("--settle", type=float, default=None, help="idle seconds before RSS samples")
    ap.add_argument("--batch", type=int, default=50, help="concurrent connects when connecting N chargers")
    ap.add_argument("--gateway-impl", choices=["gateway", "bare"], default="gateway",
                    help="'bare' puts a second bare relay in the gateway slot (to test the bench itself)")
    ap.add_argument("--gateway-rate-limit", action="store_true",
                    help="keep the gateway's per-charger frame rate limit ([websocket] max_messages_per_second, "
                         "20/s by default); without this flag the bench sets it to 0, since a closed loop "
                         "would otherwise measure the throttle rather than the relay")
    ap.add_argument("--gateway-extra-toml", default="",
                    help="TOML merged into every gateway config (tables merge key by key), or @FILE")
    ap.add_argument("--gateway-variants", nargs="+", default=[], metavar="NAME=TOML",
                    help="one gateway column per NAME, its config the bench's plus TOML (inline, e.g. "
                         "'picows=websocket.transport = \"picows\"', or @FILE), merged after --gateway-extra-toml")
    ap.add_argument("--peer-loop", choices=["asyncio", "uvloop"], default="asyncio",
                    help="the peer's event loop (ocpp-broker-server runs uvicorn with asyncio; uvloop only if "
                         "installed in the peer venv)")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin the relay to its own CPU (default: relay on the last CPU, rest on CPU 0)")
    ap.add_argument("--startup-timeout", type=float, default=30.0)
    ap.add_argument("--idle-timeout", type=float, default=20.0,
                    help="after the health check, wait up to this long for the relay to go idle before loading it")
    ap.add_argument("--quiet-wait", type=float, default=None,
                    help="before each load run wait up to this long for other CPU load to stop "
                         "(default 10 s, --quick 3 s, at most twice that in total; 0 = do not wait)")
    ap.add_argument("--keepalive", type=float, default=20.0,
                    help="the relays' ping interval: measured phases avoid the synchronized ping bursts "
                         "of N connections opened together (0 = measure across them)")
    ap.add_argument("--pyspy", default="",
                    help="comma-separated columns to profile with py-spy during each closed-loop "
                         "window (collapsed stacks in bench/results/profiles/; perturbs those figures)")
    ap.add_argument("--nice", type=int, default=0,
                    help="scheduling priority for all bench processes, e.g. -5 (needs root) when the machine "
                         "cannot be kept quiet; it slows whatever else runs, so it is off by default")
    ap.add_argument("--out", default=str(RESULTS / "latest.json"))
    args = ap.parse_args()

    if args.quick:
        sizes = args.sizes or "1,100"
        defaults = {"closed_secs": 1.5, "warmup": 0.5, "open_secs": 4.0, "settle": 0.5, "quiet_wait": 3.0}
        args.closed_actions = ["Heartbeat"]
    else:
        sizes = args.sizes or "1,100,1000"
        defaults = {"closed_secs": 4.0, "warmup": 1.0, "open_secs": 10.0, "settle": 1.0, "quiet_wait": 10.0}
        args.closed_actions = ["Heartbeat", "MeterValues"]
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    args.quiet_budget = 2 * args.quiet_wait * args.repeat
    NICE[0] = args.nice
    args.sizes_list = [int(x) for x in sizes.split(",") if x.strip()]

    only = [s.strip() for s in args.only.split(",") if s.strip()] or list(COLUMNS)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    for s in [*only, *skip]:
        if s not in COLUMNS:
            ap.error(f"unknown column {s!r}; columns are {','.join(COLUMNS)}")
    chosen = [c for c in COLUMNS if c in only and c not in skip]
    extra_all = [variant_toml(args.gateway_extra_toml)] if args.gateway_extra_toml.strip() else []
    variants: list[tuple[str, list[str]]] = []
    for spec in args.gateway_variants:
        name, sep, text = spec.partition("=")
        if not sep or not name.strip():
            ap.error(f"--gateway-variants takes NAME=TOML, got {spec!r}")
        try:
            tomllib.loads(variant_toml(text))
        except (tomllib.TOMLDecodeError, OSError) as exc:
            ap.error(f"--gateway-variants {name}: {exc}")
        variants.append((name.strip(), [*extra_all, variant_toml(text)]))
    gw_label = "gateway" if args.gateway_impl == "gateway" else "bare#2"
    if not variants:
        variants = [(gw_label, extra_all)]
    elif args.gateway_impl != "gateway":
        ap.error("--gateway-variants needs --gateway-impl gateway")
    else:
        variants = [(f"gw:{name}", extra) for name, extra in variants]
    gw_cols = [name for name, _ in variants] if "gateway" in chosen else []
    columns = [c for c in chosen if c != "gateway"] + gw_cols
    if len(set(columns)) != len(columns):
        ap.error("gateway variant names must differ from each other")
    args.pyspy = {s.strip() for s in args.pyspy.split(",") if s.strip()}
    if args.pyspy and not shutil.which("py-spy"):
        ap.error("--pyspy needs py-spy on PATH (pip install py-spy)")

    soft, hard = raise_nofile()
    ncpu = os.cpu_count() or 1
    relay_cpus = [ncpu - 1] if (args.pin and ncpu >= 2 and hasattr(os, "sched_setaffinity")) else None
    other_cpus = list(range(ncpu - 1)) if relay_cpus else None
    if other_cpus:
        os.sched_setaffinity(0, set(other_cpus))

    RESULTS.mkdir(parents=True, exist_ok=True)
    logs = RESULTS / "logs"
    logs.mkdir(exist_ok=True)

    meta: dict[str, Any] = {
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": ncpu,
        "pinning": {"relay_cpus": relay_cpus, "load_echo_cpus": other_cpus},
        "nofile": [soft, hard],
        "sizes": args.sizes_list,
        "repeat": args.repeat,
        "columns": columns,
        "gateway_variants": {name: extra for name, extra in variants} if "gateway" in chosen else {},
        "closed_secs": args.closed_secs, "warmup": args.warmup, "open_secs": args.open_secs,
        "rate": args.rate, "open_calls_max": args.open_calls_max, "batch": args.batch,
        "closed_actions": args.closed_actions, "gateway_impl": args.gateway_impl, "quick": args.quick,
        "nice": args.nice, "gateway_rate_limit": args.gateway_rate_limit, "pyspy": sorted(args.pyspy),
        "peer_loop": args.peer_loop,
    }
    for mod in ("websockets", "picows", "uvloop"):
        try:
            meta[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            pass
    if "peer" in columns:
        try:
            meta["peer_venv"] = peer_broker.ensure_venv(log=log)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            log(f"peer column dropped: {exc}")
            meta["peer_venv_error"] = str(exc)
            columns.remove("peer")
    out: dict[str, Any] = {"meta": meta, "targets": TARGETS, "startup": {c: [] for c in columns if c != "direct"},
                           "results": {}}
    t_run = time.perf_counter()

    marker = secrets.token_hex(12)
    csms_port = free_port()
    echo = Child("echo_csms", [sys.executable, "-m", "bench.echo_csms", "--listen", f"127.0.0.1:{csms_port}",
                               "--marker", marker], logs / "echo_csms.log", other_cpus)
    tmp = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    upstream = f"ws://127.0.0.1:{csms_port}/ocpp"
    extras = dict(variants)

    def start(col: str, port: int, n: int, rep: int) -> tuple[Child, str]:
        """Start the relay of a column; returns it and its health path."""
        if col == "limit":
            argv = [sys.executable, "-m", "bench.picows_relay", "--listen", f"127.0.0.1:{port}", "--upstream", upstream]
        elif col == "bare" or (col in gw_cols and args.gateway_impl == "bare"):
            argv = [sys.executable, "-m", "bench.bare_relay", "--listen", f"127.0.0.1:{port}", "--upstream", upstream]
        elif col == "peer":
            argv = [str(peer_broker.venv_python()), "-m", "bench.peer_broker", "--listen", f"127.0.0.1:{port}",
                    "--upstream", upstream, "--dir", str(tmp / f"peer-N{n}-r{rep}"), "--loop", args.peer_loop]
            return Child(col, argv, logs / f"peer-N{n}-r{rep}.log", relay_cpus), "/health"
        else:
            ddir = tmp / f"{safe(col)}-N{n}-r{rep}"
            (ddir / "data").mkdir(parents=True, exist_ok=True)
            cfg = ddir / "gateway.toml"
            cfg.write_text(toml_text(gateway_config(port, csms_port, ddir / "data", n, args.gateway_rate_limit,
                                                    extras[col], tmp / "validators")))
            argv = [sys.executable, "-m", "gateway", "run", "-c", str(cfg)]
        return Child(col, argv, logs / f"{safe(col)}-N{n}-r{rep}.log", relay_cpus), "/healthz"

    try:
        if relay_cpus and other_cpus:
            meta["wake_probe"] = wake_probe(other_cpus[0], relay_cpus[0])
            w = meta["wake_probe"]
            log(f"machine: a ping-pong between the load's core and the relay's takes p50 {w['p50_ms']:.3f} ms, "
                f"p99 {w['p99_ms']:.3f} ms, p99.9 {w['p999_ms']:.3f} ms (each open-loop call crosses cores 4 times)")
        if gw_cols and args.gateway_impl == "gateway":
            warm_cache(tmp / "validators")
        echo.wait_ready("127.0.0.1", csms_port, args.startup_timeout)
        log(f"echo CSMS pid {echo.pid} on :{csms_port}; pinning relay={relay_cpus} others={other_cpus}; "
            f"columns {', '.join(columns)}")
        for n in args.sizes_list:
            why = cannot_run(n, len(columns))
            if why:
                log(f"SKIPPED N={n}: {why}")
                print(f"\n=== N = {n} chargers: SKIPPED, {why}")
                out["results"][str(n)] = {"skipped": why}
                continue
            runs: list[dict[str, Any]] = []
            for rep in range(1, args.repeat + 1):
                tag = f"-r{rep}" if args.repeat > 1 else ""
                run: dict[str, Any] = {"raw": {}, "summary": {}, "errors": {}, "probe": {}}
                direct = None
                if "direct" in columns:
                    log(f"N={n} run {rep}/{args.repeat}: direct (no relay)")
                    try:
                        direct = run_load(args, "direct", upstream, n, echo.pid, 0, other_cpus, logs, tag)
                    except RuntimeError as exc:
                        run["errors"]["direct"] = str(exc)
                        log(f"direct failed: {exc}")
                    run["raw"]["direct"] = direct
                for col in columns:
                    if col == "direct":
                        continue
                    port = free_port()
                    child, health = start(col, port, n, rep)
                    log(f"N={n} run {rep}/{args.repeat}: {col}")
                    r: dict[str, Any] | None = None
                    try:
                        startup = child.wait_ready("127.0.0.1", port, args.startup_timeout, health)
                        out["startup"][col].append({"n": n, "run": rep, **startup})
                        startup["idle_s"] = child.wait_idle(args.idle_timeout)
                        url = f"ws://127.0.0.1:{port}/ocpp"
                        run["probe"][col] = probe(url, marker)
                        log(f"  {col} pid {child.pid} listening after {startup['healthz_200_s']:.3f}s, "
                            f"idle after {fmt(startup['idle_s'], '.2f')}s, forwards (probe "
                            f"{run['probe'][col]['rtt_ms']:.1f} ms)")
                        child.wait_idle(args.idle_timeout)
                        r = run_load(args, col, url, n, child.pid, echo.pid, other_cpus, logs, tag)
                        r["startup"] = startup
                    except RuntimeError as exc:
                        run["errors"][col] = str(exc)
                        log(f"{col} failed: {exc}")
                    finally:
                        rc = child.stop()
                        if r is not None:
                            r["exit_code"] = rc
                    run["raw"][col] = r
                for col in columns:
                    run["summary"][col] = summarize(run["raw"].get(col), direct)
                run["compare"] = {g: compare(run["summary"], g) for g in gw_cols}
                runs.append(run)
                if args.repeat > 1:
                    parts = []
                    for g in gw_cols:
                        c = run["compare"][g]
                        parts.append(f"{g}: CPU HB {fmt(c.get('cpu_hb_vs_limit'), '.2f', 'x')} limit, "
                                     f"{fmt(c.get('cpu_hb_vs_peer'), '.2f', 'x')} peer")
                    log(f"N={n} run {rep}: " + "; ".join(parts))
            agg = aggregate(n, runs, columns, gw_cols)
            out["results"][str(n)] = {"open_rate": rate_for(args, n), "runs": runs, "aggregate": agg}
            print_table(n, agg, columns, gw_cols, args.repeat, rate_for(args, n))
            for run in runs:
                for k, e in run["errors"].items():
                    print(f"{k}: ERROR {e.splitlines()[0] if e else ''}")
            to = [(k, (agg["summary"].get(k) or {}).get("open_timeouts")) for k in columns]
            if any(v for _, v in to):
                print("open-loop timeouts (median): " + ", ".join(f"{k}={v}" for k, v in to))
            busy = sorted({k for run in runs for k in columns for ph in ("hb", "mv", "open")
                           if ((run["summary"].get(k) or {}).get(f"foreign_util_{ph}") or 0) > 0.15})
            if busy:
                print("WARNING: other processes used CPU during some windows of: " + ", ".join(busy)
                      + " (figures less reliable; see foreign_util_* in the JSON)")
            sys.stdout.flush()
    finally:
        echo.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print_slopes(out["results"], columns)
    out["meta"]["wall_secs"] = time.perf_counter() - t_run
    print()
    for col in columns:
        if col == "direct":
            continue
        st = [s["healthz_200_s"] for s in out["startup"].get(col, [])]
        if st:
            out.setdefault("start_to_listening_s", {})[col] = {"min": min(st), "max": max(st), "all": st}
            print(f"start to listening {col}: min {min(st):.3f}s max {max(st):.3f}s over {len(st)} starts")
    outp = Path(args.out)
    outp.parent.mkdir(parents=True, exist_ok=True)
    outp.write_text(json.dumps(out, indent=2) + "\n")
    try:
        shown = outp.resolve().relative_to(REPO)
    except ValueError:
        shown = outp
    print(f"wrote {shown} in {out['meta']['wall_secs']:.0f}s")


if __name__ == "__main__":
    main()
