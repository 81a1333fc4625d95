"""systemd's notification protocol (sd_notify), written here: one datagram per message on the unix
socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).

- `READY=1` once every listener serves (the unit is `Type=notify`: systemd starts what comes after
  the gateway, and `systemctl start` returns, only then); `STOPPING=1` when it begins to stop.
- `WATCHDOG=1` every half of `$WATCHDOG_USEC` (set by `WatchdogSec=` in the unit), sent by a task
  on the gateway's event loop and only while the charger listener serves and the store is open: a
  loop that hangs (or a gateway that lost its charger port or store) stops pinging, and systemd
  kills and restarts it after WatchdogSec.

Without `$NOTIFY_SOCKET` (not under systemd, or `Type=exec`) nothing is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Callable

log = logging.getLogger("gateway.systemd")


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *lines: str) -> bool:
        """Send one message (`KEY=value` lines); False when there is nobody to tell or it failed."""
        if not self.address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            log.warning("systemd: cannot notify %s (%s)", self.address.lstrip("\0"), exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def start_watchdog(self, healthy: Callable[[], bool]) -> None:
        if self.watchdog_interval is not None and self.enabled:
            self._task = asyncio.create_task(self._watchdog(self.watchdog_interval, healthy), name="systemd:watchdog")

    async def _watchdog(self, interval: float, healthy: Callable[[], bool]) -> None:
        unhealthy_logged = False
        while True:
            if healthy():
                self.notify("WATCHDOG=1")
                unhealthy_logged = False
            elif not unhealthy_logged:
                log.error("systemd watchdog: not pinging: the charger listener does not serve or the store is closed")
                unhealthy_logged = True
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.notify("STOPPING=1")
        if self._sock is not None:
            self._sock.close()
            self._sock = None
