"""The traffic journal: one JSON line per OCPP-J frame, for diagnosis (`[logging].journal`).

A session observer: for each finished exchange it writes the CALL and its answer (CALLRESULT or
CALLERROR; nothing for a timeout or a 2.1 SEND) as two lines
`{"ts", "charger", "direction", "peer", "frame"}`:

- `direction` is seen from the charger: `in` = the charger sent it, `out` = it was sent to it;
- `peer` is the other end (`csms` for relayed traffic, `gateway` for the gateway's own answers
  and calls);
- `frame` is the OCPP-J array rebuilt from the parsed payload with id tags and secrets redacted
  (gateway.logs.redact); `ts` is when the CALL arrived (the request) or was answered.

Writing happens on a thread: the observer only puts the lines on a bounded queue (dropped lines
are counted and reported, the relay never waits). With `journal = ""` no journal exists at all.
The file is rotated to `<path>.1` when it exceeds `[logging].journal_max_mb`.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from gateway.logs import redact
from gateway.ports import Exchange

log = logging.getLogger("gateway.journal")

_STOP = object()


def _ts(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Journal:
    def __init__(self, path: str | Path, max_bytes: int = 100 * 1024 * 1024, max_queued: int = 10_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue(max_queued)
        self._file = open(self.path, "ab")  # noqa: SIM115 - owned by the writer thread until close()
        self._thread = threading.Thread(target=self._write, name="journal", daemon=True)
        self._thread.start()

    # -- SessionObserver ------------------------------------------------------------------------

    def exchange(self, session: Any, ex: Exchange) -> None:
        now = datetime.now(timezone.utc)
        by_charger = ex.origin == "charger"
        peer = "csms" if ex.origin == "csms" or ex.answered_by == "csms" else "gateway"
        self._put({"ts": _ts(ex.received_at), "charger": ex.charger_id, "direction": "in" if by_charger else "out",
                   "peer": peer, "frame": [2, ex.message_id, ex.action, redact(ex.request)]})
        if ex.response is not None:
            frame: list[Any] = [3, ex.message_id, redact(ex.response)]
        elif ex.error is not None and ex.error != "timeout" and ex.answered_by in ("charger", "csms"):
            frame = [4, ex.message_id, ex.error, "", {}]
        elif ex.error is not None and ex.error != "timeout":
            frame = [4, ex.message_id, ex.error, "answered by the gateway", {}]
        else:
            return
        self._put({"ts": _ts(now), "charger": ex.charger_id, "direction": "out" if by_charger else "in",
                   "peer": peer, "frame": frame})

    def session_event(self, session: Any, event: str) -> None:
        pass

    # -- writing --------------------------------------------------------------------------------

    def _put(self, record: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def _write(self) -> None:
        reported = 0
        while True:
            item = self._queue.get()
            batch = [item]
            while len(batch) < 500:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(x is _STOP for x in batch)
            data = b"".join(orjson.dumps(x) + b"\n" for x in batch if x is not _STOP)
            try:
                self._file.write(data)
                self._file.flush()
                if self._file.tell() > self.max_bytes:
                    self._file.close()
                    os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                    self._file = open(self.path, "ab")  # noqa: SIM115
            except OSError as exc:
                log.error("journal %s: %s", self.path, exc)
            if self.dropped != reported:
                log.warning("journal: %d lines dropped so far (writer behind)", self.dropped)
                reported = self.dropped
            if stop:
                return

    def close(self) -> None:
        """Write what is queued, then close the file."""
        self._queue.put(_STOP)
        self._thread.join(10)
        self._file.close()
