"""Charger authentication (OCPP security profiles 1-3): passwords, Basic credentials, certificate
identity, and the token buckets that rate-limit failed logins and chatty chargers.

Sans-I/O: no sockets, no clock reads (callers pass `now`), only hashlib/hmac/base64.

Passwords in `[chargers.ID].password` are either
- plain: the password itself. For OCPP 1.6 it is the `AuthorizationKey` as configured on the
  charger, i.e. hexadecimal (16-20 bytes as 32-40 hex digits); the charger puts the *decoded raw
  bytes* in the Basic header (J16 §6.2.2, SEC16 §7.2). A plain password that is not hex is compared
  as the text itself (firmwares that predate the security white paper). For 2.0.1/2.1 it is the
  `BasicAuthPassword` string (16-40 characters), sent as UTF-8;
- hashed (`ocpp-gateway hash-password`): `pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>` over the
  bytes the charger must send: the UTF-8 string, or for a 1.6 key made with `--hex`, the decoded bytes.

For 1.6 the gateway also accepts the key's hex digits themselves in the header, since many 1.6
firmwares send the configured hex text rather than the decoded bytes; both forms derive from the same
secret, so this widens nothing an attacker can use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass
from typing import Any

from gateway.protocol.frames import OcppVersion

HASH_SCHEME = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 200_000
_HASHED = re.compile(r"pbkdf2_sha256\$(\d{1,7})\$([A-Za-z0-9+/=]{4,88})\$([A-Za-z0-9+/=]{44})")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")


def is_hex_key(value: str) -> bool:
    """A 1.6 AuthorizationKey as configured: hexadecimal, 16-20 bytes (32-40 digits)."""
    return 32 <= len(value) <= 40 and bool(_HEX.fullmatch(value))


def hash_password(secret: bytes, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> str:
    """The stored form of `secret` (the exact bytes the charger sends as its password)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret, salt, iterations)
    return f"{HASH_SCHEME}${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def is_hashed(stored: str) -> bool:
    return stored.startswith(HASH_SCHEME + "$")


# Successful hash checks, remembered so that a charger (or an HTTP-binding device, which logs in with
# every request) pays for PBKDF2 once, not at every login. Keyed by an HMAC of the password under a
# key that lives only in this process; failures are never remembered; bounded.
_VERIFIED: dict[tuple[str, bytes], None] = {}
_VERIFIED_KEY = secrets.token_bytes(32)
_VERIFIED_MAX = 10_000


def _matches(stored: str, given: bytes) -> bool:
    """Constant-time comparison of what the charger sent with one stored password."""
    m = _HASHED.fullmatch(stored)
    if m:
        seen = (stored, hmac.new(_VERIFIED_KEY, given, "sha256").digest())
        if seen in _VERIFIED:
            return True
        iterations, salt, digest = int(m[1]), base64.b64decode(m[2]), base64.b64decode(m[3])
        ok = hmac.compare_digest(hashlib.pbkdf2_hmac("sha256", given, salt, max(1, iterations)), digest)
        if ok:
            if len(_VERIFIED) >= _VERIFIED_MAX:
                _VERIFIED.clear()
            _VERIFIED[seen] = None
        return ok
    if is_hashed(stored):  # a malformed hash never matches
        return False
    return hmac.compare_digest(given, stored.encode("utf-8"))


def password_matches(stored: str, given: bytes, version: OcppVersion) -> bool:
    """True when `given` (the raw password bytes of the Basic header) is the charger's password."""
    if not stored:
        return False
    candidates = [given]
    if version is OcppVersion.V16:
        text = given.decode("latin-1")
        if _HEX.fullmatch(text):  # the key's hex digits as text, as many 1.6 firmwares send it
            candidates.append(bytes.fromhex(text))
        if not is_hashed(stored) and _HEX.fullmatch(stored):  # AuthorizationKey: hex in the configuration
            key = bytes.fromhex(stored)
            return any([hmac.compare_digest(c, key) for c in candidates])  # a list: no short cut (timing)
    return any([_matches(stored, c) for c in candidates])


def password_problems(stored: str) -> list[str]:
    """Rule violations of a configured (plain) password; hashed ones cannot be checked here."""
    if not stored or is_hashed(stored):
        return []
    if _HEX.fullmatch(stored) and len(stored) >= 32:
        return [] if len(stored) <= 40 else ["a 1.6 AuthorizationKey is at most 20 bytes (40 hex digits)"]
    if not 16 <= len(stored) <= 40:
        return ["should be 16-40 characters (2.x BasicAuthPassword; a 1.6 AuthorizationKey is 32-40 hex digits)"]
    return []


def parse_basic(header: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) bytes from `Authorization: Basic ...`, or None. The password is kept as raw
    bytes (1.6 AuthorizationKeys are binary); it is split at the first ':' (ids contain none)."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or len(value) > 1024:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return user, password


def basic_header(user: str, password: bytes | str) -> str:
    raw = password if isinstance(password, bytes) else password.encode("utf-8")
    return "Basic " + base64.b64encode(user.encode("utf-8") + b":" + raw).decode("ascii")


def certificate_names(peercert: dict[str, Any] | None) -> list[str]:
    """The subject CN(s) and DNS/URI subjectAltNames of a verified peer certificate
    (`ssl.SSLSocket.getpeercert()` form)."""
    if not peercert:
        return []
    names = [value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"]
    names += [value for kind, value in peercert.get("subjectAltName", ()) if kind in ("DNS", "URI")]
    return names


def certificate_matches(peercert: dict[str, Any] | None, charger_id: str) -> bool:
    """Profile 3: the charger id must equal the certificate's subject CN or one of its DNS/URI SANs
    (exact match; A00.FR.405 asks the CN to contain the serial number, the gateway is stricter)."""
    return any(hmac.compare_digest(n.encode(), charger_id.encode()) for n in certificate_names(peercert))


@dataclass
class TokenBucket:
    """`rate` tokens per second, at most `burst`; `take(now)` spends one if there is one."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = 0.0

    def _refill(self, now: float) -> None:
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
            return
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def available(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= 1.0

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait_time(self, now: float) -> float:
        """Seconds until a token is there (0 if one is)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate if self.rate > 0 else float("inf")


def address_group(address: str) -> str:
    """The key under which a source address is rate-limited and counted: an IPv4 address itself
    (an IPv4-mapped IPv6 address as its IPv4 form), an IPv6 address by its /64 network (one host
    usually owns a whole /64, so counting single IPv6 addresses would give it 2**64 budgets);
    anything that is not an IP address as it is."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailureLimiter:
    """Failed logins per source address: `burst` failures, refilled over `window` seconds.
    While an address has none left, every attempt from it is refused (429) without checking.
    Bounded: at most `max_addresses` are tracked; the fullest buckets are forgotten first."""

    def __init__(self, burst: int, window: float, max_addresses: int = 10_000) -> None:
        self.burst = burst
        self.rate = burst / window if window > 0 else float("inf")
        self.max_addresses = max_addresses
        self.buckets: dict[str, TokenBucket] = {}

    def blocked(self, address: str, now: float) -> float:
        """0 when the address may try, else the seconds until it may."""
        if self.burst <= 0:
            return 0.0
        bucket = self.buckets.get(address)
        return 0.0 if bucket is None else bucket.wait_time(now)

    def failed(self, address: str, now: float) -> None:
        if self.burst <= 0:
            return
        bucket = self.buckets.get(address)
        if bucket is None:
            if len(self.buckets) >= self.max_addresses:
                self._prune(now)
            bucket = self.buckets[address] = TokenBucket(self.rate, self.burst)
        bucket.take(now)

    def _prune(self, now: float) -> None:
        for address in [a for a, b in self.buckets.items() if b.available(now) and b.tokens >= b.burst]:
            del self.buckets[address]
        while len(self.buckets) >= self.max_addresses:
            self.buckets.pop(next(iter(self.buckets)))


def hash_password_command(hex_key: bool, iterations: int | None) -> int:
    """`ocpp-gateway hash-password`: read the password (prompted twice on a terminal, else the first
    line of stdin), print its stored form. Nothing else is printed to stdout."""
    import getpass
    import sys

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("the two entries differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("empty password", file=sys.stderr)
        return 2
    if hex_key:
        if not _HEX.fullmatch(password):
            print("--hex: the AuthorizationKey must be hexadecimal (an even number of 0-9 A-F)", file=sys.stderr)
            return 2
        secret = bytes.fromhex(password)
        if not 16 <= len(secret) <= 20:
            print(f"warning: a 1.6 AuthorizationKey is 16-20 bytes, this one is {len(secret)}", file=sys.stderr)
    else:
        secret = password.encode("utf-8")
        for problem in password_problems(password):
            print(f"warning: {problem}", file=sys.stderr)
    if iterations is not None and iterations < 10_000:
        print("--iterations: at least 10000", file=sys.stderr)
        return 2
    print(hash_password(secret, iterations or DEFAULT_ITERATIONS))
    return 0


def configuration_warnings(settings: Any) -> list[str]:
    """Security problems of a valid configuration (for `check-config`); never quotes a secret."""
    out: list[str] = []
    ws = settings.websocket
    if ws.security_profile >= 2 and not (ws.tls_cert and ws.tls_key):
        out.append("websocket.security_profile >= 2 without tls_cert/tls_key: every charger will be refused")
    profiles = {settings.security_profile(c) for c in settings.chargers} | {ws.security_profile}
    if 3 in profiles and not ws.tls_ca:
        out.append("security profile 3 without websocket.tls_ca: every charger will be refused")
    for cid, charger in settings.chargers.items():
        profile = settings.security_profile(cid)
        if profile in (1, 2) and not charger.password.get_secret_value():
            out.append(f"chargers.{cid}: security profile {profile} but no password: it cannot log in")
        for problem in password_problems(charger.password.get_secret_value()):
            out.append(f"chargers.{cid}.password: {problem}")
    if ws.security_profile == 0 and not ws.listen.startswith(("127.", "localhost", "[::1]")):
        out.append("websocket.security_profile = 0 on a non-loopback address: any device on the network can "
                   "connect as any charger")
    loopback = ws.listen.startswith(("127.", "localhost", "[::1]"))
    if ws.allow_unknown and not loopback:
        out.append("websocket.allow_unknown = true on a non-loopback address: any device on the network can connect "
                   "under any id that has no [chargers.ID] entry (and reach the CSMS with it)")
    if settings.api.token is not None and not settings.api.token.get_secret_value():
        out.append('api.token = "": the REST API asks no token; every process on this host can control the chargers')
    if settings.upstream.url.startswith("ws://") and any(c.upstream_password.get_secret_value()
                                                         for c in settings.chargers.values()):
        out.append("upstream.url is ws:// but upstream passwords are set: they cross the network in clear")
    return out
