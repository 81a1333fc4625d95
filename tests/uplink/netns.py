"""Field conditions for the uplink tests, made by the test and removed after it, also on failure.

- `Netns`: a network namespace with one end of a veth pair; the other end stays in the test's
  namespace. A server listens inside the namespace (`listen()` makes the socket there, with
  setns(2) on a thread of its own), the gateway dials it over the pair. `silence()` sets the
  namespace's end down: packets are dropped without FIN or RST, as when a cellular router loses
  its carrier. `thin(rate)` puts a token-bucket filter (tc tbf) on both ends: a thin link.
- `Tmpfs`: a small tmpfs mounted for `data_dir`, and a filler file that takes its free space.

Names are unique per test run (process id and a counter), addresses come from 10.213.0.0/16.
Both need root and `ip`/`tc`/`mount`; `skip_reason()` says why a test cannot run here.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

CLONE_NEWNET = 0x40000000
_serial = itertools.count(1)


def skip_reason(*tools: str) -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, tc, tmpfs mounts)"
    for tool in tools:
        if shutil.which(tool) is None:
            return f"needs the {tool!r} command"
    return None


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


class Netns:
    def __init__(self) -> None:
        n = next(_serial)
        pid = os.getpid()
        tag = f"{pid % 100000}x{n}"
        self.name = f"gwtest-{pid}-{n}"
        self.outer = f"gwo{tag}"[:15]  # veth end in the test's namespace
        self.inner = f"gwi{tag}"[:15]  # veth end inside the namespace
        block = (pid * 7 + n) % 16000  # a /30 of 10.213.0.0/16 for this pair
        base = 4 * block
        self.outer_ip = f"10.213.{base // 256}.{base % 256 + 1}"
        self.inner_ip = f"10.213.{base // 256}.{base % 256 + 2}"
        self.created = False

    def create(self) -> "Netns":
        _run("ip", "netns", "add", self.name)
        self.created = True
        _run("ip", "link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        _run("ip", "link", "set", self.inner, "netns", self.name)
        _run("ip", "addr", "add", f"{self.outer_ip}/30", "dev", self.outer)
        _run("ip", "link", "set", self.outer, "up")
        self.exec("ip", "addr", "add", f"{self.inner_ip}/30", "dev", self.inner)
        self.exec("ip", "link", "set", self.inner, "up")
        self.exec("ip", "link", "set", "lo", "up")
        return self

    def exec(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run("ip", "netns", "exec", self.name, *cmd, check=check)

    def listen(self, port: int = 0) -> socket.socket:
        """A listening TCP socket on the namespace's address (non-blocking, for asyncio)."""
        out: dict[str, object] = {}

        def inside() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/var/run/netns/{self.name}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:  # this thread only; it ends right after
                    err = ctypes.get_errno()
                    out["error"] = OSError(err, f"setns {self.name}: {os.strerror(err)}")
                    return
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((self.inner_ip, port))
                s.listen(128)
                s.setblocking(False)
                out["socket"] = s
            except OSError as exc:
                out["error"] = exc
            finally:
                os.close(fd)

        thread = threading.Thread(target=inside, name=f"setns-{self.name}")
        thread.start()
        thread.join()
        if "error" in out:
            raise out["error"]  # type: ignore[misc]
        return out["socket"]  # type: ignore[return-value]

    def silence(self) -> None:
        """The namespace's end goes down: from now on nothing passes, and nobody is told."""
        self.exec("ip", "link", "set", self.inner, "down")

    def restore(self) -> None:
        self.exec("ip", "link", "set", self.inner, "up")

    def thin(self, rate: str = "32kbit", burst: str = "2kb", latency: str = "2s") -> None:
        """A token-bucket filter on both ends (no netem on this kernel)."""
        _run("tc", "qdisc", "replace", "dev", self.outer, "root", "tbf", "rate", rate, "burst", burst,
             "latency", latency)
        self.exec("tc", "qdisc", "replace", "dev", self.inner, "root", "tbf", "rate", rate, "burst", burst,
                  "latency", latency)

    def unthin(self) -> None:
        _run("tc", "qdisc", "del", "dev", self.outer, "root", check=False)
        self.exec("tc", "qdisc", "del", "dev", self.inner, "root", check=False)

    def destroy(self) -> None:
        _run("ip", "link", "del", self.outer, check=False)  # takes its peer along
        if self.created:
            _run("ip", "netns", "del", self.name, check=False)
            self.created = False


class Tmpfs:
    """A tmpfs of `size` mounted on `path` (created); `fill()` leaves about `leave` bytes free."""

    def __init__(self, path: Path, size: str = "4m") -> None:
        self.path = path
        self.size = size
        self.mounted = False
        self.filler = path / "filler.bin"

    def mount(self) -> "Tmpfs":
        self.path.mkdir(parents=True, exist_ok=True)
        _run("mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs", str(self.path))
        self.mounted = True
        return self

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Write the filler until only `leave` bytes are free (or the file system is full)."""
        chunk = b"\0" * 65536
        with open(self.filler, "ab") as f:
            while True:
                room = self.free() - leave
                if room <= 0:
                    break
                try:
                    f.write(chunk[: min(len(chunk), room)])
                    f.flush()
                except OSError:
                    break

    def make_room(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.mounted:
            if _run("umount", str(self.path), check=False).returncode != 0:
                _run("umount", "-l", str(self.path), check=False)
            self.mounted = False
