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
    # the libraries' own chatter (a line per HTTP request and per closed socket in websockets)
    # stays at WARNING or above, INFO when the gateway is debugged; never DEBUG: websockets then
    # logs every handshake header, Authorization included. The gateway logs connections itself.
    for name in ("websockets", "asyncio", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.INFO if level == "DEBUG" else max(logging.WARNING,
                                                                                  logging.getLevelName(level)))


# -- frames at debug level, with id tags and secrets redacted -------------------------------------

REDACTED = "<redacted>"
# Keys whose string value identifies a person or is a credential, in any OCPP version: 1.6 idTag,
# parentIdTag; 2.x IdTokenType.idToken, groupIdToken, additionalIdToken; passwords and keys.
_SECRET_KEYS = frozenset({
    "idtag", "parentidtag", "idtoken", "groupidtoken", "additionalidtoken", "password", "authorizationkey",
    "basicauthpassword", "token", "privatekey", "secret",
})
# A configuration key or device-model variable whose name looks like one of these has its value
# redacted (1.6 ChangeConfiguration/GetConfiguration AuthorizationKey; 2.x SetVariables
# BasicAuthPassword, NetworkConnectionProfile passwords).
_SECRET_NAME_PARTS = ("password", "authorizationkey", "secret", "privatekey", "token")


def _secret_name(name: object) -> bool:
    return isinstance(name, str) and any(p in name.lower() for p in _SECRET_NAME_PARTS)


def redact(value: object, secret: bool = False) -> object:
    """A copy of an OCPP payload with id tags, passwords and keys replaced by `<redacted>`. A
    value under a secret-named key or variable is redacted however deep it sits (2.x NotifyReport
    keeps it in `variableAttribute[].value`)."""
    if isinstance(value, list):
        return [redact(v, secret) for v in value]
    if not isinstance(value, dict):
        return value
    named_secret = secret or _secret_name(value.get("key")) or (
        isinstance(value.get("variable"), dict) and _secret_name(value["variable"].get("name")))
    out: dict[str, object] = {}
    for k, v in value.items():
        if k.lower() in _SECRET_KEYS and isinstance(v, (str, int, float)):
            out[k] = REDACTED
        elif named_secret and k in ("value", "attributeValue", "actualValue") and v is not None:
            out[k] = REDACTED
        else:
            out[k] = redact(v, named_secret)
    return out


class FrameLog:
    """Session observer logging every finished CALL and its answer at DEBUG on `gateway.frames`,
    redacted, with the charger id bound. Registered only when that logger is enabled for DEBUG, so
    it costs nothing otherwise."""

    def __init__(self) -> None:
        self.log = logging.getLogger("gateway.frames")

    def enabled(self) -> bool:
        return self.log.isEnabledFor(logging.DEBUG)

    def exchange(self, session: object, ex: object) -> None:
        answer = orjson.dumps(redact(ex.response)).decode() if ex.response is not None else f"error {ex.error}"  # type: ignore[attr-defined]
        self.log.debug("%s %s %s from %s: %s -> %s (answered by %s)", ex.version.value, ex.action,  # type: ignore[attr-defined]
                       ex.message_id, ex.origin, orjson.dumps(redact(ex.request)).decode(), answer,  # type: ignore[attr-defined]
                       ex.answered_by or "nobody", extra={"charger_id": ex.charger_id})  # type: ignore[attr-defined]

    def session_event(self, session: object, event: str) -> None:
        pass
