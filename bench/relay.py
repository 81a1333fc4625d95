"""Relay benchmark: the gateway against a bare raw-frame relay, N simulated chargers each.

    python -m bench.relay                 # N = 1, 100, 1000 (~4-5 minutes on 2 cores)
    python -m bench.relay --quick         # N = 1, 100, short windows (~1 minute)
    python -m bench.relay --sizes 1000 --closed-secs 8

Processes (all started here, stopped here by PID, all on 127.0.0.1):
  echo CSMS      python -m bench.echo_csms         (one for the whole run)
  bare relay     python -m bench.bare_relay        (fresh process per N)
  gateway        python -m gateway run -c FILE     (fresh process per N, fresh data_dir)
  load           python -m bench.load              (one per relay and N; measures the relay by PID)

For every N the load runs three times: directly against the echo CSMS ("direct", the
floor for latency), through the bare relay, and through the gateway. See bench/README.md.
Results: a table on stdout and bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import REPO, child_setup, free_port, http_get_status, raise_nofile, tcp_accepts

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"

NICE = [0]  # --nice: scheduling priority of every process the bench starts

TARGETS = {
    "cpu_ratio_max": 1.5,          # gateway CPU per relayed call / bare
    "p99_added_ms_max": 2.0,       # at 1000 chargers x 1 msg/s
    "p99_added_at_n": 1000,
    "rss_per_charger_kib_max": 48.0,
    "start_to_listening_s_max": 1.0,
}


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

    def wait_ready(self, host: str, port: int, timeout: float) -> dict[str, Any]:
        """Poll until /healthz answers 200. Times are from Popen."""
        t_tcp = None
        deadline = self.t_popen + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            if t_tcp is None and tcp_accepts(host, port, 0.2):
                t_tcp = time.perf_counter() - self.t_popen
            if t_tcp is not None:
                status = http_get_status(host, port, "/healthz", 1.0)
                if status == 200:
                    return {"tcp_accept_s": t_tcp, "healthz_200_s": time.perf_counter() - self.t_popen}
            time.sleep(0.005)
        self.stop()
        raise RuntimeError(f"{self.name} not healthy within {timeout}s (tcp accept: {t_tcp}):\n{self.tail()}")

    def wait_idle(self, timeout: float, window: float = 0.5, max_util: float = 0.05) -> float | None:
        """Wait until the process (and its children) use < max_util of a core over `window`:
        background warm-up after the port opens (e.g. compiling schemas) must not be charged
        to the relayed calls. Returns seconds from Popen to idle, or None on timeout."""
        import psutil

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


def gateway_toml(listen_port: int, csms_port: int, data_dir: Path, extra: str, ws_extra: list[str]) -> str:
    return (
        'site_id = "bench"\n'
        f'data_dir = "{data_dir.as_posix()}"\n'
        "\n[websocket]\n"
        f'listen = "127.0.0.1:{listen_port}"\n'
        'path = "/ocpp"\n'
        + "".join(line + "\n" for line in ws_extra)
        + "\n[upstream]\n"
        f'url = "ws://127.0.0.1:{csms_port}/ocpp"\n'
        "\n[logging]\n"
        'level = "WARNING"\n'
        + (("\n" + extra.strip() + "\n") if extra.strip() else "")
    )


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


def load_budget(args: argparse.Namespace, n: int) -> float:
    closed = len(args.closed_actions) * (args.warmup + args.closed_secs + 2.0)
    connect = 10.0 + n * 0.05
    return 10.0 + 2 * settle_for(args, n) + 2 * args.keepalive + connect + closed + args.open_secs + 1.0 / args.rate + 15.0


def settle_for(args: argparse.Namespace, n: int) -> float:
    return args.settle + (1.0 if n >= 500 else 0.0)


def run_load(args: argparse.Namespace, name: str, url: str, n: int, pid: int, echo_pid: int,
             cpus: list[int] | None, logs: Path) -> dict[str, Any]:
    budget = load_budget(args, n)
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
        "--rate", str(args.rate), "--max-secs", str(budget), "--seed", str(n),
        "--keepalive", str(args.keepalive),
    ]
    if args.pyspy and name in args.pyspy:
        prof = RESULTS / "profiles"
        prof.mkdir(parents=True, exist_ok=True)
        argv += ["--pyspy", str(prof), "--pyspy-tag", f"{name}-"]
    err_path = logs / f"load-{name}-N{n}.log"
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
    return a / b


def compare(n: int, bare: dict[str, Any] | None, gw: dict[str, Any] | None) -> dict[str, Any]:
    bare = bare or {}
    gw = gw or {}
    c: dict[str, Any] = {
        "cpu_ratio_hb": ratio(gw.get("cpu_us_per_call_hb"), bare.get("cpu_us_per_call_hb")),
        "cpu_ratio_mv": ratio(gw.get("cpu_us_per_call_mv"), bare.get("cpu_us_per_call_mv")),
        "cpu_ratio_open": ratio(gw.get("cpu_us_per_call_open"), bare.get("cpu_us_per_call_open")),
        "throughput_ratio_hb": ratio(gw.get("throughput_hb"), bare.get("throughput_hb")),
        "throughput_ratio_mv": ratio(gw.get("throughput_mv"), bare.get("throughput_mv")),
        "rss_per_charger_ratio": ratio(gw.get("rss_per_charger_kib"), bare.get("rss_per_charger_kib")),
        "rss_2nd_half_ratio": ratio(gw.get("rss_per_charger_2nd_half_kib"), bare.get("rss_per_charger_2nd_half_kib")),
        "gateway_p99_added_ms": gw.get("added_p99_ms"),
        "p99_added_minus_bare_ms": (gw["added_p99_ms"] - bare["added_p99_ms"])
        if gw.get("added_p99_ms") is not None and bare.get("added_p99_ms") is not None else None,
    }
    t = TARGETS
    checks: dict[str, bool | None] = {}
    checks["cpu_per_call_le_1.5x_bare"] = None if c["cpu_ratio_hb"] is None else c["cpu_ratio_hb"] <= t["cpu_ratio_max"]
    if n == t["p99_added_at_n"]:
        v = c["gateway_p99_added_ms"]
        checks["p99_added_le_2ms_at_1000"] = None if v is None else v <= t["p99_added_ms_max"]
    rss = gw.get("rss_per_charger_kib")
    checks["rss_per_charger_le_48KiB"] = None if (rss is None or n < 100) else rss <= t["rss_per_charger_kib_max"]
    st = gw.get("start_to_listening_s")
    checks["start_to_listening_lt_1s"] = None if st is None else st < t["start_to_listening_s_max"]
    c["targets_met"] = checks
    return c


# ----------------------------------------------------------------------------- table


def fmt(v: Any, spec: str = ".1f", suffix: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:{spec}}{suffix}"


def verdict(ok: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: ""}[ok]


def print_table(n: int, res: dict[str, Any], gw_label: str) -> None:
    d, b, g = res["summary"].get("direct") or {}, res["summary"].get("bare") or {}, res["summary"].get("gateway") or {}
    c = res["compare"]
    chk = c["targets_met"]
    rows: list[tuple[str, str, str, str, str, str]] = []

    def row(label: str, key: str, spec: str = ".1f", ratio_key: str | None = None,
            target: str = "", ok: bool | None = None, direct: bool = True) -> None:
        rows.append((label, fmt(d.get(key), spec) if direct else "", fmt(b.get(key), spec), fmt(g.get(key), spec),
                     (fmt(c.get(ratio_key), ".2f", "x") if ratio_key else ""),
                     (target + (" " + verdict(ok) if verdict(ok) else "")).strip()))

    row("chargers connected", "connected", "d")
    row("connect all, s", "connect_secs", ".2f")
    row("start to listening, s", "start_to_listening_s", ".3f", None, "< 1 s",
        chk.get("start_to_listening_lt_1s"), direct=False)
    row("  start to idle (warm-up done), s", "start_to_idle_s", ".2f", direct=False)
    row("RSS idle with N chargers, MiB", "rss_idle_mib", ".1f")
    row("RSS per charger, KiB" + (" (noisy)" if n < 100 else ""), "rss_per_charger_kib", ".1f",
        "rss_per_charger_ratio", "<= 48 KiB", chk.get("rss_per_charger_le_48KiB"))
    row("  RSS per charger, 2nd half only, KiB", "rss_per_charger_2nd_half_kib", ".1f", "rss_2nd_half_ratio")
    row("CPU/call closed Heartbeat, us", "cpu_us_per_call_hb", ".1f", "cpu_ratio_hb", "<= 1.5x bare",
        chk.get("cpu_per_call_le_1.5x_bare"))
    row("CPU/call closed MeterValues, us", "cpu_us_per_call_mv", ".1f", "cpu_ratio_mv")
    row("CPU/call open 1 msg/s, us", "cpu_us_per_call_open", ".1f", "cpu_ratio_open")
    row("throughput closed Heartbeat, rt/s", "throughput_hb", ".0f", "throughput_ratio_hb")
    row("throughput closed MeterValues, rt/s", "throughput_mv", ".0f", "throughput_ratio_mv")
    row("  measured process CPU util (HB)", "relay_util_hb", ".0%")
    row("  echo CSMS CPU util (HB)", "echo_util_hb", ".0%", direct=False)
    row("  load generator CPU util (HB)", "load_util_hb", ".0%")
    row("  other processes' CPU (HB), cores", "foreign_util_hb", ".2f")
    row("RTT p50 open 1 msg/s, ms", "rtt_p50_ms", ".3f")
    row("RTT p99 open 1 msg/s, ms", "rtt_p99_ms", ".3f")
    row("added p50 vs direct, ms", "added_p50_ms", ".3f", direct=False)
    at_n = n == TARGETS["p99_added_at_n"]
    row("added p99 vs direct, ms", "added_p99_ms", ".3f", None,
        "<= 2 ms" + ("" if at_n else " (target at N=1000)"), chk.get("p99_added_le_2ms_at_1000"), direct=False)
    row("open-loop samples", "open_samples", "d")
    row("  other processes' CPU (open), cores", "foreign_util_open", ".2f")
    row("errors / timeouts / unexpected closes", "errors", "d")

    heads = ("", "direct", "bare", gw_label, f"{gw_label[:2]}/bare", "target")
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(6)]
    print(f"\n=== N = {n} chargers " + "=" * 60)
    line = lambda r: "  ".join(r[i].ljust(widths[i]) if i in (0, 5) else r[i].rjust(widths[i]) for i in range(6))  # noqa: E731
    print(line(heads))
    print("-" * (sum(widths) + 10))
    for r in rows:
        print(line(r))
    busy = [(k, v) for k in ("direct", "bare", "gateway") for ph in ("hb", "mv", "open")
            if (v := (res["summary"].get(k) or {}).get(f"foreign_util_{ph}")) is not None and v > 0.15]
    if busy:
        print("WARNING: other processes used CPU during some windows (figures less reliable): "
              + ", ".join(f"{k} {v:.2f} cores" for k, v in busy))
    to = [(k, (res["summary"].get(k) or {}).get("open_timeouts")) for k in ("direct", "bare", "gateway")]
    if any(v for _, v in to):
        print("open-loop timeouts: " + ", ".join(f"{k}={v}" for k, v in to))
    for k in ("bare", "gateway"):
        if res.get("errors", {}).get(k):
            print(f"{k}: ERROR {res['errors'][k].splitlines()[0]}")


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=None, help="comma-separated charger counts (default 1,100,1000)")
    ap.add_argument("--quick", action="store_true", help="N=1,100 and short windows (~1 minute)")
    ap.add_argument("--closed-secs", type=float, default=None, help="closed-loop measured window per action")
    ap.add_argument("--warmup", type=float, default=None, help="closed-loop warm-up before the window")
    ap.add_argument("--open-secs", type=float, default=None, help="open-loop duration (1 msg/s/charger)")
    ap.add_argument("--rate", type=float, default=1.0, help="open-loop calls per second per charger")
    ap.add_argument("--settle", type=float, default=None, help="idle seconds before RSS samples")
    ap.add_argument("--batch", type=int, default=50, help="concurrent connects when connecting N chargers")
    ap.add_argument("--gateway-impl", choices=["gateway", "bare"], default="gateway",
                    help="'bare' puts a second bare relay in the gateway slot (to test the bench itself)")
    ap.add_argument("--gateway-rate-limit", action="store_true",
                    help="keep the gateway's per-charger frame rate limit ([websocket] max_messages_per_second, "
                         "20/s by default); without this flag the bench sets it to 0, since a closed loop "
                         "would otherwise measure the throttle rather than the relay")
    ap.add_argument("--gateway-extra-toml", default="", help="TOML text appended to the gateway config")
    ap.add_argument("--skip", default="", help="comma-separated subset of direct,bare,gateway to skip")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin the relay to its own CPU (default: relay on the last CPU, rest on CPU 0)")
    ap.add_argument("--startup-timeout", type=float, default=30.0)
    ap.add_argument("--idle-timeout", type=float, default=20.0,
                    help="after /healthz, wait up to this long for the relay to go idle before loading it")
    ap.add_argument("--quiet-wait", type=float, default=None,
                    help="before each load run wait up to this long for other CPU load to stop "
                         "(default 10 s, --quick 3 s, at most twice that in total; 0 = do not wait)")
    ap.add_argument("--keepalive", type=float, default=20.0,
                    help="the relays' ping interval: measured phases avoid the synchronized ping bursts "
                         "of N connections opened together (0 = measure across them)")
    ap.add_argument("--pyspy", default="",
                    help="comma-separated subset of bare,gateway to profile with py-spy during each closed-loop "
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
    args.quiet_budget = 2 * args.quiet_wait
    NICE[0] = args.nice
    args.sizes_list = [int(x) for x in sizes.split(",") if x.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    args.pyspy = {s.strip() for s in args.pyspy.split(",") if s.strip()}
    if args.pyspy and not shutil.which("py-spy"):
        ap.error("--pyspy needs py-spy on PATH (pip install py-spy)")

    soft, hard = raise_nofile()
    need = 2 * max(args.sizes_list) + 200
    if soft < need:
        log(f"WARNING: RLIMIT_NOFILE is {soft} (hard {hard}); {need} needed for N={max(args.sizes_list)}")
    ncpu = os.cpu_count() or 1
    relay_cpus = [ncpu - 1] if (args.pin and ncpu >= 2 and hasattr(os, "sched_setaffinity")) else None
    other_cpus = list(range(ncpu - 1)) if relay_cpus else None
    if other_cpus:
        os.sched_setaffinity(0, set(other_cpus))

    RESULTS.mkdir(parents=True, exist_ok=True)
    logs = RESULTS / "logs"
    logs.mkdir(exist_ok=True)
    gw_label = "gateway" if args.gateway_impl == "gateway" else "bare#2"

    meta = {
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": ncpu,
        "pinning": {"relay_cpus": relay_cpus, "load_echo_cpus": other_cpus},
        "nofile": [soft, hard],
        "sizes": args.sizes_list,
        "closed_secs": args.closed_secs, "warmup": args.warmup, "open_secs": args.open_secs,
        "rate": args.rate, "batch": args.batch, "closed_actions": args.closed_actions,
        "gateway_impl": args.gateway_impl, "quick": args.quick, "nice": args.nice, "gateway_rate_limit": args.gateway_rate_limit, "pyspy": sorted(args.pyspy),
    }
    try:
        import websockets
        meta["websockets"] = websockets.__version__
    except ImportError:
        pass
    out: dict[str, Any] = {"meta": meta, "targets": TARGETS, "startup": {"bare": [], "gateway": []}, "results": {}}
    t_run = time.perf_counter()

    csms_port = free_port()
    echo = Child("echo_csms", [sys.executable, "-m", "bench.echo_csms", "--listen", f"127.0.0.1:{csms_port}"],
                 logs / "echo_csms.log", other_cpus)
    tmp = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    try:
        echo.wait_ready("127.0.0.1", csms_port, args.startup_timeout)
        log(f"echo CSMS pid {echo.pid} on :{csms_port}; pinning relay={relay_cpus} others={other_cpus}")
        for n in args.sizes_list:
            res: dict[str, Any] = {"raw": {}, "summary": {}, "errors": {}}
            direct = None
            if "direct" not in skip:
                log(f"N={n}: direct (no relay)")
                try:
                    direct = run_load(args, "direct", f"ws://127.0.0.1:{csms_port}/ocpp", n, echo.pid, 0,
                                      other_cpus, logs)
                except RuntimeError as exc:
                    res["errors"]["direct"] = str(exc)
                    log(f"direct failed: {exc}")
                res["raw"]["direct"] = direct
            for kind in ("bare", "gateway"):
                if kind in skip:
                    continue
                port = free_port()
                impl = "bare" if kind == "bare" else args.gateway_impl
                if impl == "bare":
                    argv = [sys.executable, "-m", "bench.bare_relay", "--listen", f"127.0.0.1:{port}",
                            "--upstream", f"ws://127.0.0.1:{csms_port}/ocpp"]
                else:
                    ddir = tmp / f"gw-N{n}"
                    (ddir / "data").mkdir(parents=True, exist_ok=True)
                    cfg = ddir / "gateway.toml"
                    ws_extra = [] if args.gateway_rate_limit else ["max_messages_per_second = 0"]
                    cfg.write_text(gateway_toml(port, csms_port, ddir / "data", args.gateway_extra_toml, ws_extra))
                    argv = [sys.executable, "-m", "gateway", "run", "-c", str(cfg)]
                log(f"N={n}: {kind} ({impl})")
                child = Child(kind, argv, logs / f"{kind}-N{n}.log", relay_cpus)
                r: dict[str, Any] | None = None
                try:
                    startup = child.wait_ready("127.0.0.1", port, args.startup_timeout)
                    out["startup"][kind].append({"n": n, **startup})
                    startup["idle_s"] = child.wait_idle(args.idle_timeout)
                    log(f"  {kind} pid {child.pid} listening after {startup['healthz_200_s']:.3f}s, "
                        f"idle after {fmt(startup['idle_s'], '.2f')}s")
                    r = run_load(args, kind, f"ws://127.0.0.1:{port}/ocpp", n, child.pid, echo.pid, other_cpus, logs)
                    r["startup"] = startup
                except RuntimeError as exc:
                    res["errors"][kind] = str(exc)
                    log(f"{kind} failed: {exc}")
                finally:
                    rc = child.stop()
                    if r is not None:
                        r["exit_code"] = rc
                res["raw"][kind] = r
            for kind in ("direct", "bare", "gateway"):
                res["summary"][kind] = summarize(res["raw"].get(kind), direct)
            res["compare"] = compare(n, res["summary"].get("bare"), res["summary"].get("gateway"))
            out["results"][str(n)] = res
            print_table(n, res, gw_label)
            sys.stdout.flush()
    finally:
        echo.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    st = [s["healthz_200_s"] for s in out["startup"]["gateway"]]
    out["start_to_listening_gateway_s"] = {"min": min(st), "max": max(st), "all": st} if st else None
    stb = [s["healthz_200_s"] for s in out["startup"]["bare"]]
    out["start_to_listening_bare_s"] = {"min": min(stb), "max": max(stb), "all": stb} if stb else None
    out["meta"]["wall_secs"] = time.perf_counter() - t_run
    print()
    if st:
        ok = max(st) < TARGETS["start_to_listening_s_max"]
        print(f"start to listening ({gw_label}): min {min(st):.3f}s max {max(st):.3f}s over {len(st)} starts "
              f"(target < 1 s: {'PASS' if ok else 'FAIL'}); bare relay: "
              + (f"min {min(stb):.3f}s max {max(stb):.3f}s" if stb else "-"))
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
