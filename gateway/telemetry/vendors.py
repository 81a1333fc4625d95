"""Vendor DataTransfer decoders: a small registry keyed by (vendorId, messageId).

A decoder turns a DataTransfer request of one vendor into records. Register one with

    @DECODERS.register("com.example", "Environment")
    def decode(charger_id, data, ts): -> list[Record]

`messageId` None registers for every messageId of that vendor. A decoder must be pure and may
raise on bad data: the normaliser drops the message (and logs it) rather than guess.

Built in: `gateway.environment` (messageId `Environment`): a documented JSON shape for chargers and
retrofit sensors that have temperature or humidity but no OCPP way to say so (1.6 has no humidity):

    {"vendorId": "gateway.environment", "messageId": "Environment",
     "data": "{\"timestamp\": \"2025-01-01T12:00:00Z\",
               \"readings\": [{\"name\": \"temperature\", \"value\": 68, \"unit\": \"Fahrenheit\"},
                              {\"name\": \"humidity\", \"value\": 41.5, \"unit\": \"RH\"}]}"}

`data` may be the JSON text (1.6, where data is a string) or the object itself (2.x, any type).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timezone
from typing import Any, Callable

from gateway.telemetry import units
from gateway.telemetry.records import EnvironmentReading, Record

Decoder = Callable[[str, Any, datetime], list[Record]]
_UTC = timezone.utc
log = logging.getLogger("gateway.telemetry")
# the earliest and latest instants a record can carry: a schema-valid time such as
# 0001-01-01T00:30:00+01:00 or 9999-12-31T23:30:00-01:00 is outside them in UTC and is clamped
MIN_TIME = datetime.min.replace(tzinfo=_UTC)
MAX_TIME = datetime.max.replace(tzinfo=_UTC)


def is_clamped(ts: datetime) -> bool:
    """True when `ts` is a clamp bound: the charger's time was outside what can be represented."""
    return ts == MIN_TIME or ts == MAX_TIME


class DecoderRegistry:
    def __init__(self) -> None:
        self._decoders: dict[tuple[str, str | None], Decoder] = {}

    def register(self, vendor_id: str, message_id: str | None = None) -> Callable[[Decoder], Decoder]:
        def add(fn: Decoder) -> Decoder:
            self._decoders[(vendor_id, message_id)] = fn
            return fn
        return add

    def find(self, vendor_id: str, message_id: str | None) -> Decoder | None:
        return self._decoders.get((vendor_id, message_id)) or self._decoders.get((vendor_id, None))

    def __contains__(self, key: tuple[str, str | None]) -> bool:
        return self.find(*key) is not None


DECODERS = DecoderRegistry()

_NAME = re.compile(r"[a-z0-9_]{1,64}")


def parse_time(text: Any, default: datetime) -> datetime:
    """The charger's timestamp (aware, UTC), or `default` when absent or unreadable; clamped to
    MIN_TIME/MAX_TIME when it is readable but outside them in UTC (never an exception).

    Python 3.11's `fromisoformat` reads the forms OCPP chargers send ("...Z", "+01:00", fractions of
    any length, no zone: UTC) in about a tenth of a microsecond; only a lower-case "z" needs help."""
    if type(text) is not str or not text:
        return default
    ts: datetime | None
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        try:
            ts = datetime.fromisoformat(text.replace("z", "+00:00")) if text[-1:] == "z" else None
        except ValueError:
            ts = None
    if ts is None:
        return default
    tz = ts.tzinfo
    if tz is _UTC:
        return ts
    if tz is None:
        return ts.replace(tzinfo=_UTC)  # OCPP times are UTC; a charger that omits the zone means UTC
    try:
        return ts.astimezone(_UTC)
    except OverflowError:  # before year 1 or after year 9999 in UTC: clamped (is_clamped) and said so
        log.warning("charger timestamp %r is outside years 1-9999 in UTC; recorded as %s", text[:40],
                    "the earliest time" if ts.year == 1 else "the latest time")
        return MIN_TIME if ts.year == 1 else MAX_TIME


@DECODERS.register("gateway.environment", "Environment")
def _environment(charger_id: str, data: Any, ts: datetime) -> list[Record]:
    if isinstance(data, str):
        data = json.loads(data)
    if not isinstance(data, dict) or not isinstance(data.get("readings"), list):
        raise ValueError("expected an object with a readings list")
    when = parse_time(data.get("timestamp"), ts)
    out: list[Record] = []
    for item in data["readings"]:
        name = str(item.get("name", "")).lower()
        if not _NAME.fullmatch(name):
            raise ValueError(f"bad reading name {name!r}")
        value = units.parse_number(item.get("value"))
        if value is None:
            raise ValueError(f"reading {name}: value is not a number")
        unit = item.get("unit")
        if "temperature" in name or units.is_temperature_unit(unit):
            value, unit = units.to_celsius(value, unit), units.CELSIUS
        elif "humidity" in name:
            unit = units.HUMIDITY
        out.append(EnvironmentReading(charger_id=charger_id, name=name, value=value, unit=str(unit or ""),
                                      ts=when, source="DataTransfer/gateway.environment"))
    return out
