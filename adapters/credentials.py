"""Charger credentials the CSMS (or the operator) changed through the gateway.

When a charger accepts a new 1.6 `AuthorizationKey` (ChangeConfiguration) or 2.x
`SecurityCtrlr.BasicAuthPassword` (SetVariables), it will log in with the new one from then on (1.6:
after a reboot if it answered RebootRequired). The gateway terminates the charger's Basic
authentication, so it must follow, or the charger is locked out at its next connection:

- downstream, the new password (stored hashed, PBKDF2) is accepted from then on; the one valid
  before stays valid until the charger has logged in with the new one once (a charger that answered
  RebootRequired, or reconnects before applying it, still uses the old one);
- upstream, when the change came from the CSMS, the CSMS now expects the new credentials for that
  charger, so the gateway presents them instead of `[chargers.ID].upstream_password`.

Kept in `data_dir/credentials.json` (mode 0600; it holds upstream credentials in clear, like the
configuration file). Never logged. Entries win over the configuration until removed from the file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

from gateway.config import Settings
from gateway.ports import Exchange
from gateway.protocol.frames import OcppVersion
from gateway.security import hash_password, is_hex_key

log = logging.getLogger("gateway.credentials")
_ACCEPTED = ("Accepted", "RebootRequired")
CONFIGURED = "configured"  # "previous" marker: the password from the configuration is still valid


def new_secret(exchange: Exchange) -> str | None:
    """The new charger password an accepted exchange set, if it set one."""
    if exchange.response is None or exchange.answered_by != "charger" or exchange.origin == "charger":
        return None
    req, resp = exchange.request, exchange.response
    if exchange.version is OcppVersion.V16:
        if exchange.action == "ChangeConfiguration" and req.get("key") == "AuthorizationKey" \
                and isinstance(req.get("value"), str) and resp.get("status") in _ACCEPTED:
            return str(req["value"])
        return None
    if exchange.action != "SetVariables":
        return None
    found = None
    for item in req.get("setVariableData") or []:
        if (item.get("component") or {}).get("name") == "SecurityCtrlr" \
                and (item.get("variable") or {}).get("name") == "BasicAuthPassword" \
                and item.get("attributeType", "Actual") == "Actual" and isinstance(item.get("attributeValue"), str):
            found = str(item["attributeValue"])
    if found is None:
        return None
    for result in resp.get("setVariableResult") or []:
        if (result.get("component") or {}).get("name") == "SecurityCtrlr" \
                and (result.get("variable") or {}).get("name") == "BasicAuthPassword":
            return found if result.get("attributeStatus") in _ACCEPTED else None
    return None


def new_security_profile(exchange: Exchange) -> int | None:
    """The security profile an accepted exchange told the charger to use from now on, if any."""
    if exchange.response is None or exchange.answered_by != "charger" or exchange.origin == "charger":
        return None
    req, resp = exchange.request, exchange.response
    value: Any = None
    if exchange.version is OcppVersion.V16:
        if exchange.action == "ChangeConfiguration" and req.get("key") == "SecurityProfile" \
                and resp.get("status") in _ACCEPTED:
            value = req.get("value")
    elif exchange.action == "SetVariables":
        for item in req.get("setVariableData") or []:
            if (item.get("component") or {}).get("name") == "SecurityCtrlr" \
                    and (item.get("variable") or {}).get("name") == "SecurityProfile":
                value = item.get("attributeValue")
        results = [r for r in resp.get("setVariableResult") or []
                   if (r.get("variable") or {}).get("name") == "SecurityProfile"]
        if not results or results[0].get("attributeStatus") not in _ACCEPTED:
            value = None
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


class CredentialBook:
    """A hub observer; the WebSocket server asks it which passwords are valid, the upstream connector
    which password to present."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = Path(settings.data_dir) / "credentials.json"
        self.entries: dict[str, dict[str, Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                self.entries = {k: v for k, v in data.items() if isinstance(v, dict)}
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s): using the configured passwords only", self.path, type(exc).__name__)

    # -- questions ----------------------------------------------------------------------------------

    def passwords(self, charger_id: str) -> list[str]:
        """The stored forms valid for this charger now, newest first."""
        charger = self.settings.charger(charger_id)
        configured = charger.password.get_secret_value() if charger else ""
        entry = self.entries.get(charger_id)
        if not entry or not entry.get("password"):
            return [configured] if configured else []
        out = [str(entry["password"])]
        previous = entry.get("previous")
        if previous == CONFIGURED:
            if configured:
                out.append(configured)
        elif isinstance(previous, str) and previous:
            out.append(previous)
        return out

    def upstream_password(self, charger_id: str, configured: str | None) -> str | None:
        entry = self.entries.get(charger_id)
        return str(entry["upstream"]) if entry and entry.get("upstream") else configured

    def logged_in(self, charger_id: str, stored: str) -> None:
        """A successful login with `stored`: once the new password is used, the old one is dropped."""
        entry = self.entries.get(charger_id)
        if entry and entry.get("previous") and entry.get("password") == stored:
            entry["previous"] = None
            log.info("charger %s logged in with its new password; the previous one is no longer accepted", charger_id,
                     extra={"charger_id": charger_id})
            self._spawn(self._save())

    # -- observer -----------------------------------------------------------------------------------

    def exchange(self, session: Any, exchange: Exchange) -> None:
        profile = new_security_profile(exchange)
        if profile is not None and profile != self.settings.security_profile(exchange.charger_id):
            # the charger will reconnect with that profile; the gateway's port does not change with it
            log.error("charger %s accepted security profile %d from the %s, but the gateway serves it with profile %d: "
                      "it will probably not get back in until [websocket]/[chargers.%s].security_profile is changed",
                      exchange.charger_id, profile, exchange.origin, self.settings.security_profile(exchange.charger_id),
                      exchange.charger_id, extra={"charger_id": exchange.charger_id})
        secret = new_secret(exchange)
        if secret is not None:
            self._spawn(self._rotate(exchange.charger_id, exchange.version, secret, exchange.origin == "csms"))

    def session_event(self, session: Any, event: str) -> None:
        pass

    async def _rotate(self, charger_id: str, version: OcppVersion, secret: str, from_csms: bool) -> None:
        raw = bytes.fromhex(secret) if version is OcppVersion.V16 and is_hex_key(secret) else secret.encode("utf-8")
        stored = await asyncio.to_thread(hash_password, raw)
        async with self._lock:
            entry = self.entries.setdefault(charger_id, {})
            old = entry.get("password")
            # the password valid until now stays valid until the charger has used the new one
            entry["previous"] = old if old else (entry.get("previous") or CONFIGURED)
            entry["password"] = stored
            if from_csms:
                entry["upstream"] = secret
            await self._save_locked()
        log.warning("charger %s accepted a new %s%s; the gateway now accepts it%s", charger_id,
                    "AuthorizationKey" if version is OcppVersion.V16 else "BasicAuthPassword",
                    " from the CSMS" if from_csms else "",
                    " and presents it to the CSMS" if from_csms else "", extra={"charger_id": charger_id})

    async def _save(self) -> None:
        async with self._lock:
            await self._save_locked()

    async def _save_locked(self) -> None:
        data = json.dumps(self.entries, indent=1, sort_keys=True)
        await asyncio.to_thread(_write_private, self.path, data)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("could not record a changed charger password: %s", type(task.exception()).__name__)

    async def drain(self) -> None:
        """Wait for pending writes (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
