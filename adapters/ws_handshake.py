"""The charger port's handshake decisions, for whichever library carries the frames.

Both charger servers (adapters/websocket_server.py on `websockets`, adapters/picows_server.py on
picows) ask `ChargerDoor.decide` what to do with an opening request and turn its verdict into their
own response type: an `Answer` (an HTTP response that ends the connection: /healthz, or a refusal
with its status, body and headers) or `Admitted` (the charger id, the chosen subprotocol, and the
upstream link strict mode opened first). The rules themselves (OCPP-J §3, docs/security.md) are in
websocket_server.py's module docstring; their order is:

/healthz (200) -> the site's TLS configuration (503) -> the id from the path (400/404) -> connections
per address and in all (503, Retry-After; adapters/ws_limits.py) -> the subprotocol (the charger's
most preferred of `[websocket].versions`; none in common is still admitted, the server closes with
1002 after the handshake) -> authentication (401/429, adapters/charger_auth.py) -> unknown ids
(404) -> strict offline mode dials the CSMS first (503 when it cannot).
"""

from __future__ import annotations

import email.utils
import http
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from adapters.charger_auth import ChargerAuth
from adapters.ws_limits import Admission, Budget
from gateway.config import ConfigError, Settings
from gateway.errors import LinkFailed
from gateway.identity import charger_id_from_path
from gateway.ports import ChargerIngress, UpstreamLink
from gateway.protocol.frames import OcppVersion
from gateway.security import TokenBucket

log = logging.getLogger("gateway.websocket")

SERVER_HEADER = "ocpp-site-gateway"
_AUTH_FAILED = {"error": "authentication failed"}  # one body for every failure: nothing to learn from it


@dataclass(slots=True)
class Answer:
    """An HTTP response that ends the connection (a refusal, or /healthz)."""

    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def phrase(self) -> str:
        return http.HTTPStatus(self.status).phrase


@dataclass(slots=True)
class Admitted:
    """The request may become a WebSocket: `subprotocol` None means none in common (the server
    completes the handshake without one, then closes with 1002)."""

    charger_id: str
    subprotocol: str | None
    upstream: UpstreamLink | None = None


def json_answer(status: http.HTTPStatus, body: dict[str, Any], **extra: str) -> Answer:
    """JSON body; `extra` headers with `_` for `-` (Retry_After=...)."""
    data = orjson.dumps(body)
    return Answer(status.value, data, [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                                       ("Connection", "close"),
                                       *((k.replace("_", "-"), v) for k, v in extra.items())])


def plain_answer(status: http.HTTPStatus, reason: str, *extra: tuple[str, str]) -> Answer:
    """A malformed opening request: plain text saying what was wrong."""
    data = f"Failed to open a WebSocket connection: {reason}.\n".encode()
    return Answer(status.value, data, [("Content-Type", "text/plain; charset=utf-8"),
                                       ("Content-Length", str(len(data))), ("Connection", "close"), *extra])


def http_date() -> str:
    return email.utils.formatdate(usegmt=True)


def server_tls_context(settings: Settings) -> ssl.SSLContext:
    """TLS >= 1.2 with the gateway's certificate; client certificates verified against `tls_ca`:
    required when every charger is on profile 3, optional (checked per charger) otherwise."""
    ws = settings.websocket
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # A00.FR.312-316
    ctx.options |= ssl.OP_NO_COMPRESSION  # A00.FR.320
    try:
        ctx.load_cert_chain(ws.tls_cert, ws.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"websocket.tls_cert / tls_key: cannot load them ({exc.strerror or exc})") from exc
    if ws.tls_ca:
        try:
            ctx.load_verify_locations(cafile=ws.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"websocket.tls_ca: cannot load it ({exc.strerror or exc})") from exc
        all_three = ws.security_profile == 3 and all(
            c.security_profile in (None, 3) for c in settings.chargers.values())
        ctx.verify_mode = ssl.CERT_REQUIRED if all_three else ssl.CERT_OPTIONAL
    return ctx


class ListeningPort:
    """What both charger-port servers (websockets, picows) share about their listening socket;
    each sets `settings`, `tls_problem` and, once bound, `_server` (an asyncio or websockets server)."""

    settings: Settings
    tls_problem: str | None
    tls: ssl.SSLContext | None
    _server: Any

    def serving(self) -> bool:
        """Accepting chargers (for /readyz and the watchdog)."""
        return self._server is not None and bool(self._server.is_serving())

    def _tls_context(self) -> ssl.SSLContext | None:
        self.tls = listening_tls(self.settings, self.tls_problem)
        return self.tls

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(next(iter(self._server.sockets)).getsockname()[1])


def listening_tls(settings: Settings, problem: str | None) -> ssl.SSLContext | None:
    """The charger port's TLS context: None below profile 2, and None (logged: every charger is
    then refused by `ChargerDoor`) when the TLS configuration has a problem."""
    if settings.websocket.security_profile < 2 or problem is not None:
        if problem:
            log.error("WebSocket server refuses every charger: %s", problem)
        return None
    return server_tls_context(settings)


def tls_problem(settings: Settings) -> str | None:
    """Why a secured site cannot serve (its TLS files are not configured), or None."""
    ws = settings.websocket
    if ws.security_profile >= 2:
        if not ws.tls_cert or not ws.tls_key:
            return "security_profile >= 2 needs [websocket].tls_cert and tls_key"
        if any(settings.security_profile(c) == 3 for c in [*settings.chargers, ""]) and not ws.tls_ca:
            return "security_profile 3 needs [websocket].tls_ca (the CA of the chargers' certificates)"
    return None


def offered_subprotocols(values: Sequence[str]) -> list[str]:
    """The subprotocols of all `Sec-WebSocket-Protocol` header values, in order."""
    return [p.strip() for p in ",".join(values).split(",")]


class ChargerDoor:
    """The decisions of the charger port's opening handshake (see the module docstring)."""

    def __init__(self, settings: Settings, hub: ChargerIngress, auth: ChargerAuth, admission: Admission,
                 budget: Budget) -> None:
        self.settings = settings
        self.hub = hub
        self.auth = auth
        self.admission = admission
        self.budget = budget
        self.path = settings.websocket.path
        self.versions = [v.value for v in settings.websocket.versions]
        self.tls_problem = tls_problem(settings)
        self._buckets: dict[str, TokenBucket] = {}  # message rate per charger id

    def rate_bucket(self, charger_id: str) -> TokenBucket | None:
        """The charger's `max_messages_per_second` bucket (None: no limit). Per charger id, not
        per connection: reconnecting does not refill it."""
        ws = self.settings.websocket
        if ws.max_messages_per_second <= 0:
            return None
        bucket = self._buckets.get(charger_id)
        if bucket is None:
            if len(self._buckets) >= 10_000:
                self._buckets.clear()
            bucket = self._buckets[charger_id] = TokenBucket(ws.max_messages_per_second, ws.message_burst)
        return bucket

    def healthz(self) -> Answer:
        return json_answer(http.HTTPStatus.OK, {
            "status": "ok", "chargers": self.hub.charger_count,
            # the hostile-input limits at work (adapters/ws_limits.py)
            "buffered_bytes": self.budget.held, "buffered_peak": self.budget.peak,
            "closed_for_buffering": self.budget.evicted, "dropped_handshakes": self.admission.refused})

    def select_subprotocol(self, offered: Sequence[str]) -> str | None:
        for name in offered:  # the client lists its versions in order of preference
            if name in self.versions:
                return name
        return None

    async def decide(self, path: str, offered: Sequence[str], authorization: str | None, remote: Any,
                     peercert: Callable[[], Any], passed: Callable[[str], str | None] | None) -> Answer | Admitted:
        """`remote` is the peer's address as the server has it (logged as is); `peercert()` the
        client certificate; `passed(charger_id)` counts the connection as open (None) or says why
        it cannot be (adapters/ws_limits.py: Admission)."""
        if path.split("?", 1)[0] == "/healthz":
            return self.healthz()
        if self.tls_problem is not None:  # fail closed: never serve a secured site without its TLS
            log.error("refused connection: %s", self.tls_problem)
            return json_answer(http.HTTPStatus.SERVICE_UNAVAILABLE, {"error": "not configured"})
        charger_id, problem = charger_id_from_path(path, self.path)
        if charger_id is None:
            status = http.HTTPStatus.NOT_FOUND if problem == "not found" else http.HTTPStatus.BAD_REQUEST
            log.warning("refused connection to %r from %s: %s", path[:100], remote, problem)
            return json_answer(status, {"error": problem})
        # connections per address and in all (adapters/ws_limits.py); configured ids always get in
        full = passed(charger_id) if passed is not None else None
        if full is not None:
            log.warning("refused %r from %s: %s", charger_id, remote, full)
            return json_answer(http.HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many connections"},
                               Retry_After="30")
        chosen = self.select_subprotocol(offered)
        refused = await self._authenticate(charger_id, authorization, remote, peercert, chosen)
        if refused is not None:
            return refused
        if not self.hub.admits(charger_id):
            log.warning("refused unknown charger %r from %s", charger_id, remote)
            return json_answer(http.HTTPStatus.NOT_FOUND, {"error": "unknown charger"})
        upstream = None
        if self.hub.needs_upstream_first(charger_id):
            # strict offline mode: the charger is accepted only with its upstream link up
            if chosen is not None:
                try:
                    upstream = await self.hub.dial(charger_id, OcppVersion(chosen))
                except LinkFailed as exc:
                    log.warning("refused %s: strict mode and the CSMS is unreachable (%s)", charger_id, exc,
                                extra={"charger_id": charger_id})
                    return json_answer(http.HTTPStatus.SERVICE_UNAVAILABLE, {"error": "CSMS unreachable"})
        return Admitted(charger_id, chosen, upstream)

    async def _authenticate(self, charger_id: str, authorization: str | None, remote: Any,
                            peercert: Callable[[], Any], chosen: str | None) -> Answer | None:
        """None when the charger may go on, else the refusal (401 / 429). Never says why."""
        address = remote[0] if remote else "?"
        cert = peercert() if self.settings.security_profile(charger_id) == 3 else None
        refusal = await self.auth.check(charger_id, address, authorization,
                                        version=OcppVersion(chosen) if chosen else OcppVersion.V201,
                                        peercert=cert, tls_client_auth=True, port="websocket")
        if refusal is None:
            return None
        status = http.HTTPStatus(refusal.status)
        body = _AUTH_FAILED if refusal.status == 401 else {"error": refusal.body}
        return json_answer(status, body, **{k.replace("-", "_"): v for k, v in refusal.headers.items()})
