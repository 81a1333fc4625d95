"""InfluxDB sink, per PRODUCT.md "InfluxDB": line protocol, batched, retried with backoff, spooled.

Two write paths, chosen by `[influx].api`:

- `v2`: influxdb-client's async write API (`POST /api/v2/write?org=&bucket=&precision=ns`,
  `Authorization: Token ...`, gzip): InfluxDB 2.x, 3.x and 1.8+ (which serve the v2 write endpoint).
- `v1`: `POST /write?db=&precision=ns` with HTTP Basic credentials, through aiohttp: InfluxDB 1.x.

A batch that the server refuses as malformed (400, 413, 422) is dropped and logged, because it would
be refused again forever; anything else (connection refused, timeout, 401/403, 404, 429, 5xx) keeps
the batch, spools what follows, and retries with jittered exponential backoff.

Types: a field always has one type in a measurement (InfluxDB refuses a float after an integer):
`value`, `energy_wh`, `meter_start`, `meter_stop` are always written as floats (`1.0`, never `1`),
`status`, `error_code`, `transaction_id`, `upstream`, `protocol` always strings, `offline`,
`connected` always booleans. Absent values are left out, never written as another type.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import math
import random
import time
from datetime import datetime, timezone
from typing import Any

import aiohttp

from adapters.spool import Spool
from adapters.telemetry_sink import SpooledSink
from gateway.config import ConfigError
from gateway.telemetry.records import (
    ChargerState, ConnectorStatus, ControlChange, EnvironmentReading, MeterReading, Record, TransactionEvent,
)

log = logging.getLogger("gateway.telemetry.influx")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_DROP_STATUSES = {400, 413, 422}


def _escape_key(text: str) -> str:
    """Measurement names, tag keys and tag values: escape backslash, comma, equals sign, space."""
    return (text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")
            .replace("\n", "\\n"))


def _field_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("non-finite field value")
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    raise TypeError(f"field values are float, bool or str, not {type(value).__name__}")


# InfluxDB stores signed 64-bit nanoseconds (1677-09-21 to 2262-04-11) and refuses a whole batch
# with a point outside: a charger's time beyond them (its clock, or a clamped one) is written at the bound
NS_MIN, NS_MAX = -9_223_372_036_854_775_806, 9_223_372_036_854_775_806


def ns(ts: datetime) -> int:
    delta = ts - _EPOCH
    out = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    return out if NS_MIN <= out <= NS_MAX else (NS_MIN if out < 0 else NS_MAX)


_last_stamp: tuple[datetime | None, str] = (None, "")


def _stamp(ts: datetime) -> str:
    """`ns(ts)` as text; the last instant's is kept (a MeterValues' meter and environment records
    share theirs)."""
    global _last_stamp
    last = _last_stamp
    if ts is last[0]:
        return last[1]
    text = str(ns(ts))
    _last_stamp = (ts, text)  # one assignment: a reader in another thread sees a whole pair
    return text


@functools.lru_cache(maxsize=8192)
def _series(measurement: str, tags: tuple[tuple[str, Any], ...]) -> str:
    """`measurement,tag=value,...` (sorted, escaped, empty tags left out): cached, because a site
    has few distinct series and every sample repeats one."""
    return _escape_key(measurement) + "".join(f",{_escape_key(k)}={_escape_key(str(v))}" for k, v in sorted(tags)
                                              if v is not None and str(v) != "")


def line(measurement: str, tags: dict[str, Any], fields: dict[str, Any], ts: datetime) -> str | None:
    """One line of line protocol; tags with empty values are left out (InfluxDB refuses them)."""
    field_text = ",".join(f"{_escape_key(k)}={_field_value(v)}" for k, v in fields.items() if v is not None)
    if not field_text:
        return None
    return f"{_series(measurement, tuple(tags.items()))} {field_text} {ns(ts)}"


def _f(v: float | None) -> float | None:
    return None if v is None else float(v)


@functools.lru_cache(maxsize=16384)
def _meter_series(site: str, charger: str, evse: int, connector: int | None, measurand: str, phase: str | None,
                  location: str | None, unit: str, context: str | None) -> str:
    return _series("meter_value", (("site", site), ("charger", charger), ("evse", evse), ("connector", connector),
                                   ("measurand", measurand), ("phase", phase), ("location", location),
                                   ("unit", unit), ("context", context)))


def _meter_lines(record: MeterReading, site: str) -> list[str]:
    """The hot path (a line per sample of every MeterValues): the series text comes from a cache
    keyed by the tag values, the timestamp is converted once per reading."""
    stamp = _stamp(record.ts)
    charger, evse, connector = record.charger_id, record.evse, record.connector
    out = []
    for measurand, value, unit, phase, location, context in record.samples:
        if value - value != 0.0:  # inf or nan (the normaliser lets none through; a decoder might)
            continue
        out.append(f"{_meter_series(site, charger, evse, connector, measurand, phase, location, unit, context)}"
                   f" value={float(value)!r} {stamp}")
    return out


@functools.lru_cache(maxsize=4096)
def _environment_series(site: str, charger: str, name: str, unit: str, source: str, component: str | None) -> str:
    # component (2.x device model): two components' "temperature" stay two series
    return _series("environment", (("site", site), ("charger", charger), ("name", name), ("unit", unit),
                                   ("source", source), ("component", component)))


def _environment_lines(record: EnvironmentReading, site: str) -> list[str]:
    value = float(record.value)
    if value - value != 0.0:  # inf or nan
        return []
    series = _environment_series(site, record.charger_id, record.name, record.unit, record.source, record.component)
    return [f"{series} value={value!r} {_stamp(record.ts)}"]


def encode(record: Record, site: str) -> list[str]:
    """The lines for one record (PRODUCT.md measurements, plus `charger_state`)."""
    kind = type(record)
    if kind is MeterReading:  # the hot path: every MeterValues of every charger
        return _meter_lines(record, site)  # type: ignore[arg-type]
    if kind is EnvironmentReading:  # with most 1.6 MeterValues (a temperature sample)
        return _environment_lines(record, site)  # type: ignore[arg-type]
    out: list[str | None] = []
    if isinstance(record, MeterReading):
        return _meter_lines(record, site)
    elif isinstance(record, ConnectorStatus):
        out.append(line("connector_status", {"site": site, "charger": record.charger_id, "evse": record.evse,
                                             "connector": record.connector},
                        {"status": record.status, "error_code": record.error_code or ""}, record.ts))
    elif isinstance(record, TransactionEvent):
        out.append(line("transaction", {"site": site, "charger": record.charger_id, "evse": record.evse,
                                        "event": record.event},
                        {"transaction_id": record.transaction_id, "energy_wh": _f(record.energy_wh),
                         "meter_start": _f(record.meter_start), "meter_stop": _f(record.meter_stop),
                         "offline": bool(record.offline), "ts_clamped": True if record.ts_clamped else None},
                        record.ts))
    elif isinstance(record, EnvironmentReading):
        return _environment_lines(record, site)
    elif isinstance(record, ChargerState):
        out.append(line("charger_state", {"site": site, "charger": record.charger_id},
                        {"connected": record.connected, "upstream": record.upstream, "protocol": record.protocol},
                        record.ts))
    elif isinstance(record, ControlChange):  # local control (gateway/control/engine.py)
        out.append(line("control", *control_point(record, site), record.ts))
    return [x for x in out if x is not None]


def control_point(change: ControlChange, site: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tags, fields) of a ControlChange in the InfluxDB measurement `control` (fields keep one type)."""
    tags = {"site": site, "charger": change.charger_id, "evse": change.evse, "state": change.state,
            "reason": change.reason or "none", "mechanism": change.mechanism}
    fields = {"limit_a": None if change.limit_a is None else float(change.limit_a), "status": change.status,
              "transaction_id": change.transaction_id or "",
              "temperature": None if change.temperature is None else float(change.temperature)}
    return tags, fields


class InfluxSink(SpooledSink[str]):
    name = "influx"

    def __init__(self, settings: Any, data_dir: str, site_id: str) -> None:
        from pathlib import Path

        cfg = settings
        super().__init__(Spool(Path(data_dir) / "telemetry-spool-influx.sqlite3", cfg.spool_max),
                         queue_size=cfg.queue_size, batch_size=cfg.batch_size, flush_interval=cfg.flush_interval)
        self.cfg = cfg
        self.site_id = site_id
        self.url = cfg.url.rstrip("/")
        self._attempt = 0
        self._retry_at = 0.0
        self._rng = random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._client: Any = None
        self._write_api: Any = None
        self.rejected = 0  # lines dropped because the server refused them as malformed

    async def __aenter__(self) -> "InfluxSink":
        timeout = self.cfg.timeout
        if self.cfg.ca_file:
            import ssl

            try:
                ssl.create_default_context(cafile=self.cfg.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"influx.ca_file: cannot load it ({getattr(exc, 'strerror', None) or exc})") from exc
        if self.cfg.api == "v2":
            from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

            kwargs: dict[str, Any] = {}
            if self.cfg.ca_file:
                kwargs["ssl_ca_cert"] = self.cfg.ca_file
            self._client = InfluxDBClientAsync(url=self.url, token=self.cfg.token.get_secret_value(), org=self.cfg.org,
                                               timeout=int(timeout * 1000), enable_gzip=True, **kwargs)
            self._write_api = self._client.write_api()
        else:
            import ssl

            connector = None
            if self.cfg.ca_file:
                connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=self.cfg.ca_file))
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout), connector=connector)
        await self.start_worker()
        log.info("InfluxDB: writing to %s (%s API)", self.url, self.cfg.api)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop_worker()
        if self._client is not None:
            await self._client.close()
        if self._session is not None:
            await self._session.close()

    # -- SpooledSink ------------------------------------------------------------------------------

    def encode(self, record: Record) -> list[str]:
        return encode(record, self.site_id)

    def pack(self, item: str) -> bytes:
        return item.encode("utf-8")

    def unpack(self, body: bytes) -> str:
        return body.decode("utf-8")

    def ready(self) -> bool:
        return time.monotonic() >= self._retry_at

    async def deliver(self, items: list[str]) -> bool:
        if not self.ready():
            return False
        body = "\n".join(items)
        try:
            status, reason = await (self._write_v2(body) if self.cfg.api == "v2" else self._write_v1(body))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            status, reason = 0, f"{type(exc).__name__}: {exc}"
        if 200 <= status < 300:
            if self._attempt:
                log.info("InfluxDB: writes accepted again")
            self._attempt = 0
            return True
        if status in _DROP_STATUSES:
            self.rejected += len(items)
            log.error("InfluxDB refused %d lines (HTTP %d: %s); dropped, they would be refused again",
                      len(items), status, reason[:300])
            return True
        self._attempt += 1
        ceiling = min(self.cfg.retry_max, self.cfg.retry_min * 2 ** (self._attempt - 1))
        delay = self._rng.uniform(ceiling / 2, ceiling)
        self._retry_at = time.monotonic() + delay
        log.warning("InfluxDB write failed (%s); spooling, retry in %.1f s",
                    f"HTTP {status}: {reason[:200]}" if status else reason, delay)
        return False

    async def _write_v1(self, body: str) -> tuple[int, str]:
        assert self._session is not None
        params = {"db": self.cfg.database, "precision": "ns"}
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.cfg.username:  # HTTP Basic (InfluxDB 1.x also takes u/p in the query string, which ends up in logs)
            creds = f"{self.cfg.username}:{self.cfg.password.get_secret_value()}".encode("utf-8")
            headers["Authorization"] = "Basic " + base64.b64encode(creds).decode("ascii")
        async with self._session.post(f"{self.url}/write", params=params, data=body.encode("utf-8"),
                                      headers=headers) as resp:
            return resp.status, await resp.text()

    async def _write_v2(self, body: str) -> tuple[int, str]:
        from influxdb_client.client.exceptions import InfluxDBError
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            await self._write_api.write(bucket=self.cfg.bucket, org=self.cfg.org, record=body,
                                        write_precision=WritePrecision.NS)
        except ApiException as exc:
            return int(exc.status or 0), str(exc.body or exc.reason)
        except InfluxDBError as exc:
            status = getattr(getattr(exc, "response", None), "status", 0) or 0
            return int(status), str(exc)
        return 204, ""
