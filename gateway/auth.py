"""Local authorization: what the gateway answers for an id tag when it answers itself.

Order of decision (first match wins):
1. the charger's local list, as the gateway learned it by watching the CSMS's SendLocalList
   (and the charger accepting it);
2. the authorization cache, learned from the CSMS's answers to Authorize, StartTransaction and
   TransactionEvent (site-wide: a tag the CSMS accepted at one charger is known at all of them);
   entries expire at the CSMS's expiryDate / cacheExpiryDateTime, else after `[auth].cache_lifetime`;
3. `[auth].local_list` from the configuration (always Accepted);
4. `[auth].unknown_id_tags` ("reject" | "accept").
An entry that is not Accepted (Blocked, Expired, Invalid, ...) answers with that status; an entry
past its expiry answers Expired (OCPP 1.6 §3.5.4: ids expired by time are still rejected).

Kept in memory for the relay path, persisted in the store so it survives restarts.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from gateway.config import Settings
from gateway.protocol.frames import OcppVersion

log = logging.getLogger("gateway.auth")

ACCEPTED = "Accepted"
_Entry = tuple[str, datetime | None]


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def token_of(version: OcppVersion, payload: dict[str, Any]) -> str | None:
    """The id tag a charger request carries (1.6 idTag; 2.x idToken.idToken), if any."""
    if version is OcppVersion.V16:
        tag = payload.get("idTag")
        return tag if isinstance(tag, str) else None
    token = payload.get("idToken")
    if isinstance(token, dict) and isinstance(token.get("idToken"), str):
        return str(token["idToken"])
    return None


def info_of(version: OcppVersion, response: dict[str, Any]) -> dict[str, Any] | None:
    info = response.get("idTagInfo" if version is OcppVersion.V16 else "idTokenInfo")
    return info if isinstance(info, dict) and isinstance(info.get("status"), str) else None


class LocalAuthorizer:
    def __init__(self, settings: Settings, store: Any) -> None:
        self.settings = settings
        self.store = store
        self.cache: dict[str, _Entry] = {}
        self.lists: dict[str, dict[str, _Entry]] = {}

    async def load(self) -> None:
        cache, lists = await self.store.auth_load()
        self.cache = {tag: (status, _parse_time(exp)) for tag, status, exp in cache}
        for charger_id, tag, status, exp in lists:
            self.lists.setdefault(charger_id, {})[tag] = (status, _parse_time(exp))

    def decide(self, charger_id: str, id_tag: str, now: datetime | None = None) -> str:
        """The status to answer for this tag at this charger (1.6 spelling; see `for_version`)."""
        now = now or datetime.now(timezone.utc)
        for source in (self.lists.get(charger_id, {}), self.cache):
            entry = source.get(id_tag)
            if entry is not None:
                status, expires = entry
                if status == ACCEPTED and expires is not None and expires <= now:
                    return "Expired"
                return status
        if id_tag in self.settings.auth.local_list:
            return ACCEPTED
        return ACCEPTED if self.settings.auth.unknown_id_tags == "accept" else "Unknown"

    @staticmethod
    def for_version(status: str, version: OcppVersion) -> str:
        """1.6 has no Unknown (and none of the 2.x-only statuses): those read Invalid there."""
        if version is OcppVersion.V16 and status not in ("Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"):
            return "Invalid"
        return status

    async def learn(self, version: OcppVersion, id_tag: str, info: dict[str, Any], now: datetime | None = None) -> None:
        """Cache the CSMS's verdict on a tag."""
        now = now or datetime.now(timezone.utc)
        status = str(info["status"])
        expires = _parse_time(info.get("expiryDate" if version is OcppVersion.V16 else "cacheExpiryDateTime"))
        if expires is None and self.settings.auth.cache_lifetime:
            expires = now + timedelta(seconds=self.settings.auth.cache_lifetime)
        if self.cache.get(id_tag) == (status, expires):
            return
        self.cache[id_tag] = (status, expires)
        await self.store.auth_cache_put(id_tag, status, _iso(expires))

    async def clear_cache(self) -> None:
        self.cache.clear()
        await self.store.auth_cache_clear()

    async def apply_local_list(self, charger_id: str, version: OcppVersion, request: dict[str, Any]) -> None:
        """A SendLocalList the charger accepted: keep the gateway's copy in step."""
        full = request.get("updateType") == "Full"
        if version is OcppVersion.V16:
            list_version = request.get("listVersion")
            items = [(e.get("idTag"), e.get("idTagInfo")) for e in request.get("localAuthorizationList") or []]
            expiry_key = "expiryDate"
        else:
            list_version = request.get("versionNumber")
            items = [((e.get("idToken") or {}).get("idToken"), e.get("idTokenInfo"))
                     for e in request.get("localAuthorizationList") or []]
            expiry_key = "cacheExpiryDateTime"
        entries: list[tuple[str, str | None, str | None]] = []
        current = {} if full else dict(self.lists.get(charger_id, {}))
        for tag, info in items:
            if not isinstance(tag, str):
                continue
            if isinstance(info, dict) and isinstance(info.get("status"), str):
                expires = _parse_time(info.get(expiry_key))
                current[tag] = (info["status"], expires)
                entries.append((tag, info["status"], _iso(expires)))
            else:  # a differential update without info removes the entry
                current.pop(tag, None)
                entries.append((tag, None, None))
        self.lists[charger_id] = current
        await self.store.local_list_update(charger_id, full, list_version if isinstance(list_version, int) else None,
                                           entries)
        log.info("local list of %s updated (%s, %d entries)", charger_id, "full" if full else "differential", len(items))
