"""Small helpers shared by the bench processes (no third-party imports at module level)."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

REPO = Path(__file__).resolve().parent.parent

FIXED_TIME = "2026-01-01T00:00:00Z"


def raise_nofile() -> tuple[int, int]:
    """Raise the RLIMIT_NOFILE soft limit to the hard limit; return the new (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def child_setup(cpus: Sequence[int] | None, nice: int = 0) -> Callable[[], None]:
    """A preexec_fn for subprocess.Popen: raise the fd limit, optionally pin to CPUs and
    change the scheduling priority (negative `nice` needs privileges; ignored without)."""

    def setup() -> None:
        raise_nofile()
        if nice:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, nice)
            except OSError:
                pass
        if cpus and hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(0, set(cpus))
            except OSError:
                pass

    return setup


def run_async(main: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine function under uvloop when importable, plain asyncio otherwise."""
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


def loop_name() -> str:
    try:
        import uvloop  # noqa: F401  # type: ignore[import-not-found]
    except ImportError:
        return "asyncio"
    return "uvloop"


def parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get_status(host: str, port: int, path: str, timeout: float = 1.0) -> int | None:
    """Plain-socket HTTP/1.1 GET (no proxies, no urllib); the status code or None."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data and len(data) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def tcp_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def percentiles(values: Sequence[float], ps: Sequence[float] = (50, 90, 99, 99.9)) -> dict[str, float | None]:
    """Nearest-rank percentiles of `values` (any order), plus max and n."""
    out: dict[str, float | None] = {}
    data = sorted(values)
    n = len(data)
    for p in ps:
        key = "p" + (str(p).rstrip("0").rstrip(".") if isinstance(p, float) else str(p))
        if n == 0:
            out[key] = None
        else:
            rank = max(1, -(-int(p * n * 1000) // 100000))  # ceil(p/100*n) without float drift
            out[key] = data[min(rank, n) - 1]
    out["max"] = data[-1] if n else None
    out["mean"] = (sum(data) / n) if n else None
    out["n"] = n
    return out
