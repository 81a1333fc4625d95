"""Payload validation against the OCA JSON schemas that the `ocpp` package ships.

Each (version, action, request/response) schema is compiled once with fastjsonschema into a plain
Python function (5-10 us per message instead of 80-165 us with jsonschema) and cached. Compiling all
~390 schemas takes about 2 s of CPU on a desktop core (several times that on a small ARM box), so
compilation happens on first use or in `warm_up()`, which the application runs in a worker thread
after it is listening, and what it compiled is kept on disk (`cache_dir`, by default data_dir/cache):
the next start loads the compiled code (tens of milliseconds) instead of generating it again. The
cache file is named by everything its content depends on (this format, Python, fastjsonschema and
the `ocpp` package's version), carries a digest of its content, and is rebuilt when damaged.

Beside each reference validator sits a compact accept test for the same schema
(gateway/protocol/quickcheck.py): a conforming payload is passed by it alone; any other runs the
reference, whose exception names the broken rule as before.

Also here: which actions each version knows and which side may initiate them, so that an unknown
action gets NotImplemented and a known one sent the wrong way gets NotSupported (J16 Table 7).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import marshal
import os
import sys
import threading
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from types import CodeType
from typing import Any, Callable

import fastjsonschema

from gateway.protocol.frames import ErrorCode, OcppVersion
from gateway.protocol.quickcheck import accept_source

log = logging.getLogger("gateway.schemas")

_PACKAGE_DIR = {OcppVersion.V16: "v16", OcppVersion.V201: "v201", OcppVersion.V21: "v21"}

# Actions a charging station initiates (the rest of each version's schemas are CSMS-initiated,
# except DataTransfer, which goes both ways).
_CHARGER_ACTIONS_16 = frozenset({
    "Authorize", "BootNotification", "DataTransfer", "DiagnosticsStatusNotification",
    "FirmwareStatusNotification", "Heartbeat", "MeterValues", "StartTransaction", "StatusNotification",
    "StopTransaction",
    # security extension (SEC16)
    "LogStatusNotification", "SecurityEventNotification", "SignCertificate", "SignedFirmwareStatusNotification",
})
_CHARGER_ACTIONS_201 = frozenset({
    "Authorize", "BootNotification", "ClearedChargingLimit", "DataTransfer", "FirmwareStatusNotification",
    "Get15118EVCertificate", "GetCertificateStatus", "Heartbeat", "LogStatusNotification", "MeterValues",
    "NotifyChargingLimit", "NotifyCustomerInformation", "NotifyDisplayMessages", "NotifyEVChargingNeeds",
    "NotifyEVChargingSchedule", "NotifyEvent", "NotifyMonitoringReport", "NotifyReport",
    "PublishFirmwareStatusNotification", "ReportChargingProfiles", "ReservationStatusUpdate",
    "SecurityEventNotification", "SignCertificate", "StatusNotification", "TransactionEvent",
})
_CHARGER_ACTIONS_21 = _CHARGER_ACTIONS_201 | frozenset({
    "BatterySwap", "ClosePeriodicEventStream", "GetCertificateChainStatus", "NotifyDERAlarm",
    "NotifyDERStartStop", "NotifyPeriodicEventStream", "NotifyPriorityCharging", "NotifySettlement",
    "OpenPeriodicEventStream", "PullDynamicScheduleUpdate", "ReportDERControl", "VatNumberValidation",
})
CHARGER_ACTIONS = {
    OcppVersion.V16: _CHARGER_ACTIONS_16,
    OcppVersion.V201: _CHARGER_ACTIONS_201,
    OcppVersion.V21: _CHARGER_ACTIONS_21,
}


def _schema_names(version: OcppVersion) -> list[str]:
    folder = resources.files("ocpp").joinpath(_PACKAGE_DIR[version], "schemas")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def _file_name(version: OcppVersion, action: str, response: bool) -> str:
    if version is OcppVersion.V16:
        return action + ("Response" if response else "")
    if action == "NotifyPeriodicEventStream":  # a SEND: its schema has no Request suffix and no response
        return action
    return action + ("Response" if response else "Request")


class _Catalogue:
    """The actions of one version, from the schema file names."""

    def __init__(self, version: OcppVersion) -> None:
        names = set(_schema_names(version))
        self.files = names
        actions = set()
        for name in names:
            if version is OcppVersion.V16:
                actions.add(name[: -len("Response")] if name.endswith("Response") else name)
            elif name.endswith("Request"):
                actions.add(name[: -len("Request")])
            elif not name.endswith("Response"):
                actions.add(name)
        self.actions = frozenset(actions)
        self.charger_actions = CHARGER_ACTIONS[version] & self.actions
        self.csms_actions = (self.actions - CHARGER_ACTIONS[version]) | ({"DataTransfer"} & self.actions)


@dataclass(frozen=True, slots=True)
class SchemaViolation:
    code: ErrorCode
    description: str


Invalid = fastjsonschema.JsonSchemaValueException  # what a compiled validator raises


# fastjsonschema's failed rule -> the OCPP-J error code that names that kind of violation.
_RULE_CODES = {
    "type": ErrorCode.TYPE_CONSTRAINT_VIOLATION,
    "required": ErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION,
    "minItems": ErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION,
    "maxItems": ErrorCode.OCCURRENCE_CONSTRAINT_VIOLATION,
    "additionalProperties": ErrorCode.FORMAT_VIOLATION,
    "enum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "const": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "maxLength": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "minLength": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "minimum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "maximum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "exclusiveMinimum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "exclusiveMaximum": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "multipleOf": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "pattern": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
    "format": ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
}


def violation(exc: Invalid) -> SchemaViolation:
    """The violation (with the OCPP-J error code that names its kind) a validator raised."""
    code = _RULE_CODES.get(exc.rule or "", ErrorCode.FORMAT_VIOLATION)
    return SchemaViolation(code=code, description=str(exc.message)[:200])


_CACHE_FORMAT = 2  # 2: each schema's code has the quick accept test beside the reference validator

# the validator of a schema with a quick test: the reference runs only when the quick test is not sure
_CHECK = """
def check(data, _accept=accept, _validate=validate):
    if not _accept(data):
        _validate(data)
"""
_CACHE_MAGIC = b"ocpp-gateway validators\n"


def _cache_name() -> str:
    """The cache file's name: a digest of everything the compiled code depends on."""
    try:
        ocpp_version = metadata.version("ocpp")
    except metadata.PackageNotFoundError:  # pragma: no cover - the ocpp package is a dependency
        ocpp_version = "?"
    key = f"{_CACHE_FORMAT}|{sys.version}|{fastjsonschema.VERSION}|{ocpp_version}|use_default=False"
    return f"validators-{hashlib.sha256(key.encode()).hexdigest()[:16]}.bin"


class SchemaRegistry:
    """Compiled validators for the versions in use, compiled once each and shared by all sessions.
    With `cache_dir`, the compiled code is loaded from there and what was compiled anew is kept
    there by `warm_up` (see the module docstring)."""

    def __init__(self, versions: list[OcppVersion] | None = None, cache_dir: Path | None = None) -> None:
        self._versions = list(versions or OcppVersion)
        self._catalogues = {v: _Catalogue(v) for v in self._versions}
        self._validators: dict[tuple[OcppVersion, str], Callable[[Any], Any] | None] = {}
        self._lock = threading.Lock()
        self._charger_calls: dict[OcppVersion, dict[str, Callable[[Any], Any]]] = {}
        self._cache_path = cache_dir / _cache_name() if cache_dir is not None else None
        self._cached: dict[str, CodeType] | None = None  # read from the cache file on first need
        self._codes: dict[str, CodeType] = {}  # the code of every validator made here (for the cache)
        self.compiled = 0  # validators generated by fastjsonschema in this process
        self.from_cache = 0  # ... and loaded from the cache file

    def catalogue(self, version: OcppVersion) -> _Catalogue:
        cat = self._catalogues.get(version)
        if cat is None:
            cat = self._catalogues[version] = _Catalogue(version)
        return cat

    def knows(self, version: OcppVersion, action: str) -> bool:
        return action in self.catalogue(version).actions

    def charger_may_send(self, version: OcppVersion, action: str) -> bool:
        return action in self.catalogue(version).charger_actions

    def csms_may_send(self, version: OcppVersion, action: str) -> bool:
        return action in self.catalogue(version).csms_actions

    def load(self, version: OcppVersion, action: str, response: bool) -> dict[str, Any] | None:
        name = _file_name(version, action, response)
        if name not in self.catalogue(version).files:
            return None
        path = resources.files("ocpp").joinpath(_PACKAGE_DIR[version], "schemas", name + ".json")
        schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        # The OCA 2.x schemas carry "$id" URNs that fastjsonschema would try to resolve as remote
        # references; every $ref inside is local ("#/definitions/..."), so the id is dropped.
        schema.pop("$id", None)
        return schema

    def validator(self, version: OcppVersion, action: str, response: bool) -> Callable[[Any], Any] | None:
        key = (version, _file_name(version, action, response))
        try:
            return self._validators[key]
        except KeyError:
            pass
        with self._lock:
            if key not in self._validators:
                self._validators[key] = (self._make(f"{version.value}/{key[1]}", version, action, response)
                                         if key[1] in self.catalogue(version).files else None)
            return self._validators[key]

    def _make(self, name: str, version: OcppVersion, action: str, response: bool) -> Callable[[Any], Any] | None:
        """The validator of schema `name`: its code from the cache, else generated (under the lock)."""
        code = self._cache().get(name)
        if code is not None:
            self.from_cache += 1
        else:
            schema = self.load(version, action, response)
            if schema is None:
                return None
            # use_default=False: validating must not write the schemas' defaults into the payload
            # (observers see what the charger sent; a 2.x unitOfMeasure without unit would turn
            # into "Wh", which is the default of energy measurands only)
            source = fastjsonschema.compile_to_code(schema, use_default=False)
            quick = accept_source(schema, "accept")
            if quick is not None:  # the quick yes first; the reference decides the rest (quickcheck.py)
                source += "\n" + quick + _CHECK
            code = compile(source, f"<schema {name}>", "exec")
            self.compiled += 1
        self._codes[name] = code
        namespace: dict[str, Any] = {}
        exec(code, namespace)  # noqa: S102 - fastjsonschema's generated validator (ours, or our cache's)
        check: Callable[[Any], Any] = namespace.get("check") or namespace["validate"]
        return check

    def _cache(self) -> dict[str, CodeType]:
        """The compiled code in the cache file ({} without one, or when it cannot be used)."""
        if self._cached is not None:
            return self._cached
        self._cached = {}
        if self._cache_path is None:
            return self._cached
        try:
            raw = self._cache_path.read_bytes()
        except FileNotFoundError:
            return self._cached
        except OSError as exc:
            log.info("schema cache %s not read (%s); compiling the schemas", self._cache_path, exc)
            return self._cached
        head, digest, body = raw[:len(_CACHE_MAGIC)], raw[len(_CACHE_MAGIC):len(_CACHE_MAGIC) + 32], raw[len(_CACHE_MAGIC) + 32:]
        codes: Any = None
        if head == _CACHE_MAGIC and hashlib.sha256(body).digest() == digest:
            try:
                codes = marshal.loads(body)
            except (EOFError, ValueError, TypeError):
                codes = None
        if not (isinstance(codes, dict) and all(isinstance(k, str) and isinstance(v, CodeType) for k, v in codes.items())):
            log.warning("schema cache %s is damaged; compiling the schemas and writing it anew", self._cache_path)
            return self._cached
        self._cached = codes
        return self._cached

    def save(self) -> bool:
        """Write the cache file when this process compiled what it lacked (atomically: a temporary
        file renamed over it; other versions' files in the folder are removed). False when there was
        nothing to write or it could not be written (logged; the validators work either way)."""
        if self._cache_path is None or not self.compiled:
            return False
        with self._lock:
            codes = {**self._cache(), **self._codes}
        body = marshal.dumps(codes)
        folder = self._cache_path.parent
        tmp = folder / f".{self._cache_path.name}.{os.getpid()}.tmp"
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(_CACHE_MAGIC + hashlib.sha256(body).digest() + body)
            os.replace(tmp, self._cache_path)
        except OSError as exc:
            log.warning("schema cache %s not written (%s); the next start compiles the schemas again",
                        self._cache_path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return False
        for old in folder.glob("validators-*.bin"):
            if old.name != self._cache_path.name:
                with contextlib.suppress(OSError):
                    old.unlink(missing_ok=True)
        return True

    def validate(self, version: OcppVersion, action: str, payload: Any, *, response: bool = False) -> SchemaViolation | None:
        """None when the payload conforms (or no schema exists), else the violation with its error code."""
        check = self.validator(version, action, response)
        if check is None:
            return None
        try:
            check(payload)
        except Invalid as exc:
            return violation(exc)
        return None

    def charger_calls(self, version: OcppVersion) -> dict[str, Callable[[Any], Any]]:
        """The request validators of the actions a charger may send in `version`, by action, for the
        relay's path (one look-up per CALL instead of the catalogue's two and the validator's key).
        Filled by `charger_call_validator` as actions are first seen; shared by all sessions. A
        validator raises `Invalid` (see `violation`)."""
        found = self._charger_calls.get(version)
        if found is None:
            found = self._charger_calls[version] = {}
        return found

    def charger_call_validator(self, version: OcppVersion, action: str) -> Callable[[Any], Any] | None:
        """The request validator of `action` when a charger may send it and it has a schema (kept
        in `charger_calls(version)`), else None."""
        if not self.charger_may_send(version, action):
            return None
        check = self.validator(version, action, False)
        if check is not None:
            self.charger_calls(version)[action] = check
        return check

    def warm_up(self, versions: list[OcppVersion] | None = None, stop: Callable[[], bool] = lambda: False) -> int:
        """Compile every schema of the given versions; returns how many validators that made. Run it
        off the event loop; `stop()` is asked between schemas so that shutdown need not wait for the
        rest. Requests first: they are validated on every charger CALL. What it compiled is written
        to the cache (when the registry has one), also when stopped part way."""
        made: set[int] = set()  # (a 2.1 SEND's request and response share one schema)
        for response in (False, True):
            for version in versions or self._versions:
                cat = self.catalogue(version)
                for action in sorted(cat.charger_actions if not response else cat.actions):
                    if stop():
                        self.save()
                        return len(made)
                    check = self.validator(version, action, response)
                    if check is not None:
                        made.add(id(check))
        self.save()
        return len(made)
