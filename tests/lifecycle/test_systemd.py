"""sd_notify as the systemd unit (Type=notify, WatchdogSec) uses it: READY=1 once the ports serve,
WATCHDOG=1 every WATCHDOG_USEC/2 from the event loop, STOPPING=1 on the way down; a loop that hangs
sends no ping. The receiving end is a real unix datagram socket, as systemd's is."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import tempfile
import threading
import time
import urllib.request
from typing import Callable, Iterator

import pytest

from adapters.systemd import Notifier
from tests.harness import REPO, GatewayProcess


class NotifySocket:
    """What systemd listens on: every datagram, with the monotonic time it arrived."""

    def __init__(self, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"ocppgw-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            self.dir = tempfile.mkdtemp(prefix="ogw-notify-")  # short: sun_path holds 108 bytes
            self.env = os.path.join(self.dir, "notify.sock")
            self.sock.bind(self.env)
        self.sock.settimeout(0.2)
        self.got: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.got.append((time.monotonic(), data.decode()))

    def messages(self, key: str) -> list[float]:
        return [t for t, text in list(self.got) if key in text.splitlines()]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        if not self.env.startswith("@"):
            os.unlink(self.env)
            os.rmdir(self.dir)


@pytest.fixture(params=[False, True], ids=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest) -> Iterator[NotifySocket]:
    sock = NotifySocket(abstract=request.param)
    yield sock
    sock.close()


def _wait(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.02)


def test_ready_watchdog_stopping(notify_socket: NotifySocket, gateways: Callable[..., GatewayProcess]) -> None:
    gw = gateways()
    gw.start(env={"NOTIFY_SOCKET": notify_socket.env, "WATCHDOG_USEC": "400000"})  # a ping every 0.2 s
    assert gw.proc is not None

    _wait(lambda: notify_socket.messages("READY=1"), 5, "READY=1")
    ready = next(text for _, text in notify_socket.got if "READY=1" in text)
    assert f"MAINPID={gw.proc.pid}" in ready and "STATUS=serving chargers on " in ready
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.ws_port}/healthz", timeout=2) as r:
        assert r.status == 200  # READY came when the port served
    _wait(lambda: len(notify_socket.messages("WATCHDOG=1")) >= 5, 5, "five watchdog pings")
    # a stopped process (as a hung one) sends nothing; it pings again once it runs
    gw.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(0.3)
        stopped_at = time.monotonic()
        time.sleep(1.0)
        assert [t for t in notify_socket.messages("WATCHDOG=1") if t > stopped_at] == []
    finally:
        gw.proc.send_signal(signal.SIGCONT)
    resumed = time.monotonic()
    _wait(lambda: [t for t in notify_socket.messages("WATCHDOG=1") if t > resumed], 5, "pings again")

    assert gw.stop() == 0
    assert notify_socket.messages("STOPPING=1")


def test_no_watchdog_for_another_pid(notify_socket: NotifySocket, gateways: Callable[..., GatewayProcess]) -> None:
    """WATCHDOG_PID names the process systemd watches; a gateway started by it (another pid) keeps quiet."""
    gw = gateways()
    gw.start(env={"NOTIFY_SOCKET": notify_socket.env, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    _wait(lambda: notify_socket.messages("READY=1"), 5, "READY=1")
    time.sleep(0.5)

    assert notify_socket.messages("WATCHDOG=1") == []


async def test_a_hung_loop_sends_no_ping(notify_socket: NotifySocket) -> None:
    """The pings come from a task on the event loop: while something blocks the loop, none goes out."""
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.env, "WATCHDOG_USEC": "100000"})
    notifier.start_watchdog(lambda: True)
    try:
        await asyncio.sleep(0.3)
        assert len(notify_socket.messages("WATCHDOG=1")) >= 3
        hung_at = time.monotonic()
        time.sleep(0.6)  # noqa: ASYNC251 - the loop hangs on purpose (a blocking call in a coroutine)
        hung_until = time.monotonic()
        await asyncio.sleep(0.3)
    finally:
        await notifier.stop()

    pings = notify_socket.messages("WATCHDOG=1")
    assert [t for t in pings if hung_at + 0.06 < t < hung_until] == []  # the reader thread ran on: it would have seen one
    assert [t for t in pings if t > hung_until]  # and pings came again once the loop ran


async def test_an_unhealthy_gateway_sends_no_ping(notify_socket: NotifySocket) -> None:
    healthy = True
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.env, "WATCHDOG_USEC": "100000"})
    notifier.start_watchdog(lambda: healthy)
    try:
        await asyncio.sleep(0.2)
        healthy = False
        await asyncio.sleep(0.06)
        since = time.monotonic()
        await asyncio.sleep(0.4)
    finally:
        await notifier.stop()

    assert [t for t in notify_socket.messages("WATCHDOG=1") if t > since] == []


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})

    assert not notifier.enabled and notifier.notify("READY=1") is False


def test_the_unit_is_type_notify_and_does_not_restart_on_2_to_5() -> None:
    """(tests/api/test_deploy.py runs systemd-analyze verify on it.)"""
    unit = (REPO / "config" / "ocpp-gateway.service").read_text()

    assert "Type=notify" in unit and "WatchdogSec=" in unit and "NotifyAccess=main" in unit
    assert "\nRestartPreventExitStatus=2 3 4 5\n" in unit
    assert "environment wins" in unit  # the comment on OCPPGW_DATA_DIR says what really happens
