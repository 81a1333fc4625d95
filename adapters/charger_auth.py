"""Charger authentication for every charger-facing port: WebSocket, SOAP and the HTTP binding.

One `ChargerAuth` serves the whole gateway (built by the WebSocket server, handed to the SOAP and
HTTP-binding ports by `gateway/app.py`), so the rules and the guard against guessing are the same
everywhere:

- the security profile is the charger's own (`[chargers.ID].security_profile`), else the site's
  (`[websocket].security_profile`); 0 asks nothing; 1 and 2 ask HTTP Basic, user = charger id,
  password = `[chargers.ID].password` or the one the CSMS or the operator set since (the credential
  book, `adapters/credentials.py`); 3 asks a client certificate naming the id (only where TLS ends
  at the gateway: the WebSocket port; the SOAP and HTTP ports refuse it);
- every failure gets the same answer (the caller turns it into 401 with one body);
- **one failed-authentication limiter for all ports**: `max_auth_failures` per
  `auth_failure_window`, counted per source address (an IPv6 address by its /64, see
  `gateway.security.address_group`) *and* per charger id. With either bucket empty an attempt is
  refused (429, Retry-After) without checking it. The per-id bucket stops guessing one charger's
  password from many addresses; it does not lock the charger itself out: the address group the
  charger last logged in from is exempt from its id's bucket (not from its own address bucket);
- **the same decoy everywhere**: when any password is stored hashed, a failed check that did not
  run PBKDF2 itself (an unknown id, a charger without a password, a plain password) runs a decoy
  PBKDF2 as dear as the dearest configured hash, in a worker thread, so the time to refuse says
  nothing about which ids exist or how their passwords are stored.

Sans-socket: callers pass the address, the Authorization header and (WebSocket) the peer certificate.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gateway.config import Settings
from gateway.protocol.frames import OcppVersion
from gateway.security import DEFAULT_ITERATIONS, FailureLimiter, address_group, certificate_matches, \
    hash_password, is_hashed, parse_basic, password_matches

if TYPE_CHECKING:
    from adapters.credentials import CredentialBook

log = logging.getLogger("gateway.auth")

MAX_TRACKED = 10_000  # addresses / ids whose failures are remembered; the fullest buckets go first


class Directory(Protocol):
    """What authentication asks of the core (the hub): is an id configured, may it connect at all."""

    def is_known(self, charger_id: str) -> bool: ...

    def admits(self, charger_id: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class AuthRefusal:
    status: int  # 401, or 429 while the address or the id has no attempts left
    reason: str  # for the log only: the answer never says why
    headers: dict[str, str]

    @property
    def body(self) -> str:
        return "too many failed attempts" if self.status == 429 else "authentication failed"


class ChargerAuth:
    def __init__(self, settings: Settings, hub: Directory, credentials: CredentialBook | None = None) -> None:
        self.settings = settings
        self.hub = hub
        self.credentials = credentials
        ws = settings.websocket
        self.window = ws.auth_failure_window
        self.by_address = FailureLimiter(ws.max_auth_failures, ws.auth_failure_window, MAX_TRACKED)
        self.by_id = FailureLimiter(ws.max_auth_failures, ws.auth_failure_window, MAX_TRACKED)
        self._good: dict[str, str] = {}  # charger id -> address group of its last successful login
        self._blocked_logged: dict[str, float] = {}
        self._hashing = any(is_hashed(c.password.get_secret_value()) for c in settings.chargers.values())
        self._decoy_hash: str | None = None

    # -- the check ---------------------------------------------------------------------------------

    async def check(self, charger_id: str, address: str, authorization: str | None, *,
                    version: OcppVersion = OcppVersion.V16, peercert: dict[str, Any] | None = None,
                    tls_client_auth: bool = False, port: str = "websocket") -> AuthRefusal | None:
        """None when the charger may go on, else the refusal. `tls_client_auth`: this port ends TLS
        itself and can check a client certificate (`peercert`, profile 3)."""
        profile = self.settings.security_profile(charger_id)
        if profile == 0:
            return None
        group = address_group(address)
        now = asyncio.get_running_loop().time()
        wait = max(self.by_address.blocked(group, now),
                   0.0 if self._good.get(charger_id) == group else self.by_id.blocked(charger_id, now))
        if wait > 0:
            self._log_blocked(charger_id, group, port, now)
            return AuthRefusal(429, "too many failed attempts", {"Retry-After": str(max(1, round(wait + 0.5)))})
        reason, creds = await self._verify(charger_id, profile, authorization, version, peercert, tls_client_auth)
        if reason is None:
            if len(self._good) >= MAX_TRACKED and charger_id not in self._good:
                self._good.clear()
            self._good[charger_id] = group
            return None
        self.by_address.failed(group, now)
        self.by_id.failed(charger_id, now)
        site = self.settings.websocket.security_profile
        log.warning("authentication of %r from %s on the %s port failed (profile %d%s): %s", charger_id, address,
                    port, profile, "" if profile == site else " for this charger", reason,
                    extra={"charger_id": charger_id})
        headers = {} if profile == 3 else {"WWW-Authenticate": 'Basic realm="ocpp", charset="UTF-8"'}
        return AuthRefusal(401, reason, headers)

    async def _verify(self, charger_id: str, profile: int, authorization: str | None, version: OcppVersion,
                      peercert: dict[str, Any] | None, tls_client_auth: bool) -> tuple[str | None, Any]:
        """(None, creds) on success, else (why, creds)."""
        known = self.hub.is_known(charger_id)
        creds = parse_basic(authorization) if profile in (1, 2) else None
        if profile == 3:
            if not tls_client_auth:
                return "profile 3 needs a client certificate, and this port has no TLS of its own", None
            if not known and not self.hub.admits(charger_id):
                return "unknown charger", None
            if not peercert:
                return "no client certificate", None
            if not certificate_matches(peercert, charger_id):
                return "client certificate does not name this charger", None
            return None, None
        if creds is None:
            return "no Basic credentials", None
        if creds[0] != charger_id.encode("utf-8"):
            return "Basic user is not the charger id", creds
        valid = self._valid(charger_id) if known else []
        reason: str = "unknown charger" if not known else "no password configured for this charger" if not valid \
            else "wrong password"
        dear = False  # did this check run PBKDF2 in full?
        for stored in valid:
            if is_hashed(stored):
                self._hashing = True
                dear = True
                ok = await asyncio.to_thread(password_matches, stored, creds[1], version)  # off the event loop
            else:
                ok = password_matches(stored, creds[1], version)
            if ok:
                book = self._book()
                if book is not None:
                    book.logged_in(charger_id, stored)
                return None, creds
        if self._hashing and not dear:
            # as long as a real check would take: the time to refuse says nothing about the id
            await asyncio.to_thread(password_matches, self._decoy(), b"decoy", OcppVersion.V201)
        return reason, creds

    # -- helpers -----------------------------------------------------------------------------------

    def _book(self) -> CredentialBook | None:
        return self.credentials  # wired by gateway/app.py (through the WebSocket server)

    def _valid(self, charger_id: str) -> list[str]:
        book = self._book()
        if book is not None:
            return book.passwords(charger_id)
        charger = self.settings.charger(charger_id)
        stored = charger.password.get_secret_value() if charger else ""
        return [stored] if stored else []

    def _decoy(self) -> str:
        if self._decoy_hash is None:  # as costly as the dearest configured hash
            costs = [int(p.split("$")[1]) for c in self.settings.chargers.values()
                     if is_hashed(p := c.password.get_secret_value()) and p.split("$")[1].isdigit()]
            self._decoy_hash = hash_password(secrets.token_bytes(16), max(costs, default=DEFAULT_ITERATIONS))
        return self._decoy_hash

    def _log_blocked(self, charger_id: str, group: str, port: str, now: float) -> None:
        # once per address and window at WARNING: a flood of attempts must not flood the log
        quiet = self._blocked_logged.get(group, -1e9) > now - self.window
        log.log(logging.DEBUG if quiet else logging.WARNING, "refused %r from %s on the %s port: too many failed "
                "logins%s", charger_id, group, port, "" if quiet else " (further refusals are logged at DEBUG)")
        if not quiet:
            if len(self._blocked_logged) > MAX_TRACKED:
                self._blocked_logged.clear()
            self._blocked_logged[group] = now
