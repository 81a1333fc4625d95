"""Logging: readable text on a terminal, one JSON object per line for containers.

The charger id rides on every line that concerns a charger (`extra={"charger_id": ...}` or a
LoggerAdapter); formatters print it when present.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone

import orjson


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        cid = getattr(record, "charger_id", None)
        where = f" [{cid}]" if cid else ""
        line = f"{ts} {record.levelname:<7} {record.name}{where}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        cid = getattr(record, "charger_id", None)
        if cid:
            out["charger_id"] = cid
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def setup(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # the libraries' own chatter stays at INFO or above unless debugging the gateway
    for name in ("websockets", "asyncio"):
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLevelName(level)))
