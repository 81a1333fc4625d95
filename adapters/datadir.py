"""What `data_dir` holds besides the store: the instance lock and the install id.

- `gateway.lock`: one gateway per data_dir. The first thing a start does is take an exclusive
  `flock` on this file and write its pid into it; a second gateway (or `ocpp-gateway store recover`)
  finds it taken, reads the pid and stops with one line (AlreadyRunning, exit 3) before it touches
  anything: no port, no store, no MQTT connection. The kernel drops the lock when the process ends,
  however it ends (SIGKILL included), so a stale file never blocks a start; the file is not
  deleted (deleting a lock file races with the next start that opens it).
- `install-id`: a random id drawn on the first start, once the store exists. It makes names that
  must differ between two gateways of one site (the MQTT client id) differ, and its presence tells
  the store check that this data_dir has run a gateway before (a missing store is then damage, not
  a first start).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
from pathlib import Path
from types import TracebackType

from gateway.errors import AlreadyRunning, ConfigError

log = logging.getLogger("gateway")

LOCK_FILE = "gateway.lock"
INSTALL_ID_FILE = "install-id"


class InstanceLock:
    """The exclusive lock of one data_dir (a context manager; `acquire` raises AlreadyRunning)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(f"data_dir: cannot use {self.data_dir} ({exc.strerror or exc})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise AlreadyRunning(f"another gateway ({who}) is running with data_dir {self.data_dir}; stop it first, "
                                 "or give this one its own data_dir") from exc
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:  # a full disk: the lock holds all the same; only the pid is not told
            log.warning("cannot write the pid into %s (%s)", self.path, exc.strerror or exc)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no pid left behind for the next reader to name
            os.close(fd)  # drops the lock

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def install_id_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / INSTALL_ID_FILE


def read_install_id(data_dir: str | Path) -> str | None:
    try:
        text = install_id_path(data_dir).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if text.isalnum() else None


def install_id(data_dir: str | Path) -> str:
    """This data_dir's install id, drawn (and written durably) on first use."""
    existing = read_install_id(data_dir)
    if existing:
        return existing
    new = secrets.token_hex(4)
    path = install_id_path(data_dir)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="ascii") as f:
            f.write(new + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk must not stop the start: this run uses an id of its own
        log.warning("cannot keep the install id in %s (%s): the MQTT client id changes at the next start",
                    path, exc.strerror or exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
    return new


def mqtt_client_id(site_id: str, install: str) -> str:
    """The MQTT client id when `[mqtt].client_id` is empty: unique per install, readable per site.
    (Brokers must accept 23 characters; Mosquitto, EMQX, HiveMQ and others accept far more.)"""
    return f"ocpp-gateway-{site_id}-{install}"
