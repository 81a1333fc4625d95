"""Load generator: N simulated OCPP 1.6 chargers against one relay (or the CSMS directly).

    python -m bench.load --url ws://127.0.0.1:PORT/ocpp --n 100 --pid RELAY_PID [--echo-pid PID] ...

Runs as its own process so its CPU is not charged to the relay under test. It samples
the relay's CPU time and RSS itself (psutil, by PID) at the phase boundaries, and prints
one JSON object on stdout when done. Phases, in order:

  prime    one charger connects, boots, sends 3 Heartbeats, disconnects (warms lazy
           imports/caches in the relay so they are not charged to the chargers)
  rss0     relay RSS with no charger connected
  connect  N chargers connect in batches of --batch (bounded concurrency) and each
           sends BootNotification and waits for its answer
  rss1     relay RSS with N chargers connected and idle (after --settle seconds)
  closed   closed loop per action (Heartbeat, MeterValues): every charger sends its next
           CALL as soon as the CALLRESULT of the previous one arrives; warm-up, then a
           measured window: round trips completed and relay CPU time in the window
  open     open loop: every charger sends 1 Heartbeat per 1/--rate seconds at a random
           phase offset, for --warmup (not recorded) and then --open-secs; RTT of every
           recorded call (still one at a time: if an answer is late the next call waits
           for it and is counted as `late`)

Every loop that sends is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import sys
import time
from typing import Any

import orjson
import psutil
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench._common import FIXED_TIME, loop_name, percentiles, raise_nofile, run_async

perf_ns = time.perf_counter_ns

BOOT_PAYLOAD = '{"chargePointVendor":"Bench","chargePointModel":"SimCharger"}'
MV_PAYLOAD = (
    '{"connectorId":1,"meterValue":[{"timestamp":"' + FIXED_TIME + '","sampledValue":'
    '[{"value":"123.4","measurand":"Energy.Active.Import.Register","unit":"Wh"}]}]}'
)
PAYLOADS = {"Heartbeat": "{}", "MeterValues": MV_PAYLOAD, "BootNotification": BOOT_PAYLOAD}
MAX_CLOSED_CALLS = 5_000_000  # hard cap on calls per closed-loop phase, whatever the window


class Stats:
    __slots__ = ("done", "errors", "rtts", "record", "server_calls", "late", "timeouts", "closed")

    def __init__(self) -> None:
        self.done = 0
        self.errors = 0
        self.rtts: list[int] = []
        self.record = False
        self.server_calls = 0
        self.late = 0
        self.timeouts = 0
        self.closed = 0


class Charger:
    """One charger websocket. A reader task receives everything; calls go one at a time."""

    __slots__ = ("ws", "idx", "seq", "pending", "sent_at", "fut", "mode", "action", "stop_at", "stats",
                 "reader", "budget")

    def __init__(self, ws: Any, idx: int, stats: Stats) -> None:
        self.ws = ws
        self.idx = idx
        self.seq = 0
        self.pending: str | None = None
        self.sent_at = 0
        self.fut: asyncio.Future[int] | None = None
        self.mode = ""  # "closed": the reader sends the next call itself
        self.action = "Heartbeat"
        self.stop_at = 0.0
        self.budget = 0
        self.stats = stats
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def send_call(self, action: str) -> None:
        self.seq += 1
        mid = f"{self.idx}.{self.seq}"
        self.pending = mid
        frame = f'[2,"{mid}","{action}",{PAYLOADS[action]}]'
        self.sent_at = perf_ns()
        await self.ws.send(frame)

    async def call(self, action: str, timeout: float) -> int:
        """Send one CALL and wait for its answer; returns the RTT in ns."""
        fut = asyncio.get_running_loop().create_future()
        self.fut = fut
        await self.send_call(action)
        return await asyncio.wait_for(fut, timeout)

    async def _read(self) -> None:
        ws = self.ws
        stats = self.stats
        loads = orjson.loads
        try:
            while True:
                raw = await ws.recv(decode=False)
                now = perf_ns()
                try:
                    msg = loads(raw)
                    kind = msg[0]
                except (orjson.JSONDecodeError, IndexError, TypeError, KeyError):
                    stats.errors += 1
                    continue
                if kind == 2:  # a CALL from the relay/CSMS: answer NotImplemented (always valid)
                    stats.server_calls += 1
                    await ws.send(orjson.dumps([4, msg[1], "NotImplemented", "", {}]), text=True)
                    continue
                if msg[1] != self.pending:
                    stats.errors += 1
                    continue
                self.pending = None
                if kind != 3:
                    stats.errors += 1
                rtt = now - self.sent_at
                if self.mode == "closed":
                    stats.done += 1
                    if stats.record:
                        stats.rtts.append(rtt)
                    self.budget -= 1
                    if self.budget > 0 and time.monotonic() < self.stop_at:
                        await self.send_call(self.action)
                    continue
                fut = self.fut
                if fut is not None and not fut.done():
                    fut.set_result(rtt)
        except ConnectionClosed:
            stats.closed += 1
        except Exception as exc:  # noqa: BLE001 - report, never hang
            stats.errors += 1
            print(f"reader {self.idx}: {exc!r}", file=sys.stderr)
        finally:
            fut = self.fut
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError("closed"))


class Relay:
    """CPU/RSS of the measured process (and any children it spawned)."""

    def __init__(self, pid: int | None) -> None:
        self.proc = psutil.Process(pid) if pid else None

    def _procs(self) -> list[psutil.Process]:
        if not self.proc:
            return []
        try:
            return [self.proc, *self.proc.children(recursive=True)]
        except psutil.Error:
            return [self.proc]

    def cpu(self) -> float:
        total = 0.0
        for p in self._procs():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def cpu_ns(self) -> int | None:
        """Scheduler run time in ns (/proc/PID/task/*/schedstat, all threads, children too):
        a cross-check with nanosecond resolution for psutil's 10 ms clock ticks."""
        total = 0
        try:
            for p in self._procs():
                base = f"/proc/{p.pid}/task"
                for tid in os.listdir(base):
                    with open(f"{base}/{tid}/schedstat", "rb") as f:
                        total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return total

    def rss(self) -> int:
        total = 0
        for p in self._procs():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total


def system_busy() -> float:
    """CPU seconds all CPUs of the machine spent busy (not idle/iowait) since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def start_pyspy(args: argparse.Namespace, action: str) -> tuple[Any, str] | None:
    """py-spy record of the measured process over one closed-loop window (--pyspy DIR).
    Only the thread holding the GIL is sampled (idle waits drop out).
    Sampling stops the process briefly per sample: figures of a profiled window are perturbed."""
    if not args.pyspy or not args.pid:
        return None
    import subprocess

    path = os.path.join(args.pyspy, f"{args.pyspy_tag}N{args.n}-closed_{action}.txt")
    proc = subprocess.Popen(
        ["py-spy", "record", "-p", str(args.pid), "-d", str(max(1, int(args.closed_secs))), "-r", "250",
         "--gil", "--format", "raw", "-o", path],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    return proc, path


async def finish_pyspy(spy: tuple[Any, str]) -> dict[str, Any]:
    proc, path = spy
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    if proc.poll() is None:
        proc.kill()  # our own child, by its handle
        proc.wait()
    err = proc.stderr.read().decode(errors="replace")[-500:] if proc.stderr else ""
    return {"file": path, "returncode": proc.returncode, "stderr": err}


async def open_charger(url: str, idx: int, stats: Stats, cid: str, timeout: float) -> Charger:
    ws = await connect(
        f"{url}/{cid}", subprotocols=["ocpp1.6"], compression=None, proxy=None,
        open_timeout=timeout, close_timeout=2, max_queue=64,
    )
    ch = Charger(ws, idx, stats)
    await ch.call("BootNotification", timeout)
    return ch


async def close_all(chargers: list[Charger], batch: int) -> None:
    async def close(ch: Charger) -> None:
        ch.reader.cancel()  # our own close is not an unexpected close
        try:
            await ch.ws.close()
        except Exception:  # noqa: BLE001
            pass

    for i in range(0, len(chargers), batch):
        await asyncio.gather(*(close(ch) for ch in chargers[i:i + batch]))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    relay = Relay(args.pid)
    echo = Relay(args.echo_pid)
    stats = Stats()
    out: dict[str, Any] = {"n": args.n, "url": args.url, "loop": loop_name(), "phases": {}}
    prefix = args.id_prefix
    deadline = time.monotonic() + args.max_secs

    def left() -> float:
        return max(0.1, deadline - time.monotonic())

    # -- prime ---------------------------------------------------------------------------
    if args.prime:
        ch = await open_charger(args.url, 0, stats, f"{prefix}PRIME", args.connect_timeout)
        for _ in range(3):
            await ch.call("Heartbeat", args.call_timeout)
        await close_all([ch], 1)
        await asyncio.sleep(0.3)
    gc.collect()
    await asyncio.sleep(args.settle / 2)
    out["rss_before"] = relay.rss()

    # -- connect -------------------------------------------------------------------------
    chargers: list[Charger] = []
    failures: list[str] = []
    half: tuple[int, int] | None = None
    first_open: float | None = None
    t0 = time.perf_counter()
    for start in range(0, args.n, args.batch):
        idxs = range(start + 1, min(args.n, start + args.batch) + 1)
        res = await asyncio.gather(
            *(open_charger(args.url, i, stats, f"{prefix}{i:05d}", args.connect_timeout) for i in idxs),
            return_exceptions=True,
        )
        for r in res:
            if isinstance(r, Charger):
                chargers.append(r)
                if first_open is None:
                    first_open = time.monotonic()
            else:
                failures.append(repr(r))
        if time.monotonic() > deadline:
            failures.append("deadline reached while connecting")
            break
        if args.n >= 100 and half is None and len(chargers) >= args.n // 2:
            # RSS at half way: the slope over the second half excludes one-off costs
            # (allocator arenas, lazily created objects) that (RSS_N - RSS_0)/N spreads over N
            t_pause = time.perf_counter()
            await asyncio.sleep(args.settle / 2)
            half = (len(chargers), relay.rss())
            t0 += time.perf_counter() - t_pause
    out["connect_secs"] = time.perf_counter() - t0
    last_open = time.monotonic()
    out["keepalive_waits"] = []

    async def avoid_keepalive(duration: float, phase: str) -> None:
        """websockets pings every connection `ping_interval` (20 s) after it opened, with no
        jitter: N connections opened within a few seconds ping in one burst every 20 s (in
        the relay, the echo CSMS and the load alike). A measured phase must not straddle a
        burst by accident; shift it past the burst (see --keepalive; 0 = do not)."""
        if args.keepalive <= 0 or first_open is None or len(chargers) < args.keepalive_min_n:
            return
        waited = 0.0
        for _ in range(20):  # bounded
            now = time.monotonic()
            k = max(1, int((now - last_open) // args.keepalive))
            clash = None
            for kk in (k, k + 1, k + 2):
                lo = first_open + kk * args.keepalive - 0.3
                hi = last_open + kk * args.keepalive + 0.7
                if now < hi and now + duration > lo:
                    clash = hi
                    break
            if clash is None or waited > args.keepalive:
                break
            await asyncio.sleep(clash - now)
            waited += clash - now
        if waited:
            out["keepalive_waits"].append([phase, round(waited, 2)])
    out["connected"] = len(chargers)
    out["connect_failures"] = len(failures)
    out["connect_failure_samples"] = sorted(set(failures))[:5]
    if args.await_server_calls > 0 and chargers:
        # the relay's one-off work per charger that connected (the gateway reads each charger's
        # variables [variables].read_delay s after it came): done before RSS and CPU are measured,
        # so that no measured window holds a share of it by the accident of its timing
        t_wait = time.monotonic()
        until = t_wait + min(args.await_server_calls, left())
        while stats.server_calls < len(chargers) and time.monotonic() < until:
            await asyncio.sleep(0.1)
        out["server_calls_awaited"] = {"calls": stats.server_calls, "waited_s": round(time.monotonic() - t_wait, 2)}
    await asyncio.sleep(args.settle)
    out["rss_idle"] = relay.rss()
    n_ok = len(chargers)
    out["rss_per_charger"] = (out["rss_idle"] - out["rss_before"]) / n_ok if n_ok else None
    out["rss_half"] = half
    out["rss_per_charger_2nd_half"] = ((out["rss_idle"] - half[1]) / (n_ok - half[0])
                                       if half and n_ok > half[0] else None)

    if not chargers:
        return out

    # -- closed loop ---------------------------------------------------------------------
    for action in args.closed_actions:
        if args.closed_secs <= 0:
            break
        await avoid_keepalive(args.warmup + args.closed_secs + 0.5, f"closed_{action}")
        stats.rtts = []
        stats.record = False
        errors0 = stats.errors
        stop_at = time.monotonic() + args.warmup + args.closed_secs
        budget = max(1, MAX_CLOSED_CALLS // len(chargers))
        for ch in chargers:
            ch.mode = "closed"
            ch.action = action
            ch.stop_at = stop_at
            ch.budget = budget
        for ch in chargers:
            if ch.pending is None:
                try:
                    await ch.send_call(action)
                except ConnectionClosed:
                    pass
        await asyncio.sleep(args.warmup)
        spy = start_pyspy(args, action)
        b0, c0, n0, e0, s0, d0, w0 = system_busy(), relay.cpu(), relay.cpu_ns(), echo.cpu(), self_cpu(), stats.done, time.perf_counter()
        stats.record = True
        await asyncio.sleep(args.closed_secs)
        b1, c1, n1, e1, s1, d1, w1 = system_busy(), relay.cpu(), relay.cpu_ns(), echo.cpu(), self_cpu(), stats.done, time.perf_counter()
        stats.record = False
        if spy is not None:
            out.setdefault("profiles", []).append(await finish_pyspy(spy))
        # drain: the chargers stop by themselves at stop_at; wait for answers in flight
        drain_until = time.monotonic() + min(args.call_timeout, left())
        while any(ch.pending is not None for ch in chargers) and time.monotonic() < drain_until:
            await asyncio.sleep(0.05)
        stuck = sum(1 for ch in chargers if ch.pending is not None)
        for ch in chargers:
            ch.mode = ""
        wall = w1 - w0
        done = d1 - d0
        out["phases"][f"closed_{action}"] = {
            "window_secs": wall,
            "round_trips": done,
            "throughput": done / wall if wall > 0 else None,
            "relay_cpu_secs": c1 - c0,
            "relay_cpu_us_per_call": (c1 - c0) * 1e6 / done if done else None,
            "relay_sched_us_per_call": (n1 - n0) / 1e3 / done if (done and n0 is not None and n1 is not None) else None,
            "relay_cpu_util": (c1 - c0) / wall if wall > 0 else None,
            "echo_cpu_util": (e1 - e0) / wall if (wall > 0 and args.echo_pid) else None,
            "load_cpu_util": (s1 - s0) / wall if wall > 0 else None,
            # busy CPU of the whole machine not spent by relay, echo CSMS or load: other work
            # competing for the 2 cores (e.g. a test suite) makes the window less trustworthy
            "foreign_cpu_util": ((b1 - b0) - (c1 - c0) - ((e1 - e0) if args.echo_pid else 0.0) - (s1 - s0)) / wall
            if wall > 0 else None,
            "rtt_ms": {k: (v / 1e6 if isinstance(v, (int, float)) and k != "n" else v)
                       for k, v in percentiles(stats.rtts).items()},
            "errors": stats.errors - errors0,
            "stuck_after_drain": stuck,
        }
        stats.rtts = []
        if stuck:
            # a charger whose answer never came cannot send again (one call at a time)
            chargers = [ch for ch in chargers if ch.pending is None]
        await asyncio.sleep(0.3)

    # -- open loop -----------------------------------------------------------------------
    if args.open_secs > 0 and chargers:
        # the first `warmup` seconds are sent and not recorded, as in the closed loop: the load
        # generator starting its N senders at once is not the relay's latency (that first second
        # held the tail of every column alike, the direct one included)
        warm = args.warmup
        await avoid_keepalive(warm + args.open_secs + 1.0 / args.rate + 0.5, "open_Heartbeat")
        period = 1.0 / args.rate
        count = max(1, int(round((warm + args.open_secs) * args.rate)))
        rng = random.Random(args.seed)
        rtts: list[int] = []
        errors0 = stats.errors
        late = 0
        timeouts = 0
        lost = 0
        t_start = time.monotonic() + 0.2
        rec_from = t_start + warm

        async def sender(ch: Charger, offset: float) -> None:
            nonlocal late, timeouts, lost
            for k in range(count):
                due = t_start + offset + k * period
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -0.001:
                    late += 1
                try:
                    rtt = await ch.call("Heartbeat", args.call_timeout)
                    if due >= rec_from:
                        rtts.append(rtt)
                        sec = int(due - rec_from)
                        if 0 <= sec < len(per_second):
                            per_second[sec].append(rtt)
                except asyncio.TimeoutError:
                    timeouts += 1
                    return
                except (ConnectionError, ConnectionClosed):
                    lost += 1
                    return

        per_second: list[list[int]] = [[] for _ in range(int(args.open_secs) + 2)]
        offsets = [rng.random() * period for _ in chargers]
        await asyncio.sleep(max(0.0, t_start - time.monotonic()))
        senders = asyncio.ensure_future(asyncio.wait_for(
            asyncio.gather(*(sender(ch, off) for ch, off in zip(chargers, offsets))),
            timeout=min(left(), warm + args.open_secs + period + args.call_timeout + 5),
        ))
        await asyncio.sleep(max(0.0, rec_from - time.monotonic()))
        b0, c0, n0, e0, s0, w0 = system_busy(), relay.cpu(), relay.cpu_ns(), echo.cpu(), self_cpu(), time.perf_counter()
        await senders
        b1, c1, n1, e1, s1, w1 = system_busy(), relay.cpu(), relay.cpu_ns(), echo.cpu(), self_cpu(), time.perf_counter()
        wall = w1 - w0
        done = len(rtts)
        out["phases"]["open_Heartbeat"] = {
            "rate_per_charger": args.rate,
            "window_secs": wall,
            "round_trips": done,
            "offered_per_sec": len(chargers) * args.rate,
            "relay_cpu_us_per_call": (c1 - c0) * 1e6 / done if done else None,
            "relay_sched_us_per_call": (n1 - n0) / 1e3 / done if (done and n0 is not None and n1 is not None) else None,
            "relay_cpu_util": (c1 - c0) / wall if wall > 0 else None,
            "echo_cpu_util": (e1 - e0) / wall if (wall > 0 and args.echo_pid) else None,
            "load_cpu_util": (s1 - s0) / wall if wall > 0 else None,
            # busy CPU of the whole machine not spent by relay, echo CSMS or load: other work
            # competing for the 2 cores (e.g. a test suite) makes the window less trustworthy
            "foreign_cpu_util": ((b1 - b0) - (c1 - c0) - ((e1 - e0) if args.echo_pid else 0.0) - (s1 - s0)) / wall
            if wall > 0 else None,
            "rtt_ms": {k: (v / 1e6 if isinstance(v, (int, float)) and k != "n" else v)
                       for k, v in percentiles(rtts).items()},
            # p99 and max per 1 s of schedule: shows whether the tail is spread or one burst
            # (e.g. all keepalive pings of connections opened in the same second)
            "per_second_p99_max_ms": [
                [round(percentiles(b)["p99"] / 1e6, 3), round(max(b) / 1e6, 3)] for b in per_second if b
            ],
            "late_sends": late,
            "timeouts": timeouts,
            "lost": lost,
            "errors": stats.errors - errors0,
        }

    out["rss_after_load"] = relay.rss()
    out["server_calls_answered"] = stats.server_calls
    out["errors_total"] = stats.errors
    out["unexpected_closes"] = stats.closed
    await close_all(chargers, args.batch)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="base URL, charger id is appended: ws://host:port/ocpp")
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--pid", type=int, default=0, help="PID of the process to measure")
    ap.add_argument("--echo-pid", type=int, default=0, help="PID of the echo CSMS (utilisation only)")
    ap.add_argument("--batch", type=int, default=50, help="concurrent connects")
    ap.add_argument("--settle", type=float, default=1.0, help="idle seconds before an RSS sample")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--closed-secs", type=float, default=4.0)
    ap.add_argument("--closed-actions", default="Heartbeat,MeterValues")
    ap.add_argument("--open-secs", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=1.0, help="open loop calls/s per charger")
    ap.add_argument("--connect-timeout", type=float, default=15.0)
    ap.add_argument("--call-timeout", type=float, default=10.0)
    ap.add_argument("--max-secs", type=float, default=240.0, help="hard time limit for the whole run")
    ap.add_argument("--await-server-calls", type=float, default=0.0,
                    help="after connecting, wait up to this many seconds until the relay has called every "
                         "charger once (the gateway's variables read), then settle and measure (0 = do not)")
    ap.add_argument("--id-prefix", default="CP")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keepalive", type=float, default=20.0,
                    help="ping interval of the relays (websockets default 20 s): measured phases are shifted "
                         "so that they do not straddle the synchronized ping bursts; 0 = do not shift")
    ap.add_argument("--keepalive-min-n", type=int, default=200,
                    help="only shift phases when at least this many chargers are connected (a few pings are noise)")
    ap.add_argument("--pyspy", default="", help="directory: py-spy record the measured process per closed window")
    ap.add_argument("--pyspy-tag", default="", help="file name prefix for --pyspy")
    ap.add_argument("--no-prime", dest="prime", action="store_false")
    args = ap.parse_args()
    args.closed_actions = [a for a in args.closed_actions.split(",") if a]
    for a in args.closed_actions:
        if a not in PAYLOADS:
            ap.error(f"unknown action {a}")
    raise_nofile()

    async def go() -> dict[str, Any]:
        return await asyncio.wait_for(run(args), timeout=args.max_secs + 30)

    result = run_async(go)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
