"""What a charger session may use of the site around it: the narrow context the hub hands each
session (gateway/hub.py implements it), so that a session can be built and tested without a hub."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Protocol

from gateway.auth import LocalAuthorizer
from gateway.config import Settings
from gateway.local import LocalCsms
from gateway.ports import Exchange, Store, UpstreamLink
from gateway.protocol.frames import OcppVersion
from gateway.protocol.rpc import MessageIds
from gateway.protocol.schemas import SchemaRegistry

if TYPE_CHECKING:
    from gateway.session import ChargerSession


class SessionContext(Protocol):
    """The site's shared parts and the hub's services, as one session sees them."""

    settings: Settings
    store: Store
    schemas: SchemaRegistry
    auth: LocalAuthorizer
    local: LocalCsms
    ids: MessageIds
    rng: random.Random

    @property
    def observed(self) -> bool:
        """Anyone watches the exchanges (else a session does not build them)."""

    def publish(self, session: ChargerSession, exchange: Exchange) -> None:
        """A finished exchange, to every observer (never raises)."""

    def notify(self, session: ChargerSession, event: str) -> None:
        """A session event (`upstream`, ...), to every observer (never raises)."""

    async def dial(self, charger_id: str, version: OcppVersion) -> UpstreamLink:
        """Open the charger's upstream link within the site-wide cap on dials. Raises LinkFailed."""

    async def backoff(self, delay: float) -> None:
        """Wait out a backoff after a failed dial (less if another session reaches the CSMS)."""

    def csms_reached(self) -> None:
        """A dial got through: sessions waiting out a backoff dial now."""

    def claims(self, charger_id: str, action: str, payload: dict[str, Any]) -> bool:
        """A charger CALL that answers the gateway's own request (the variables mirror's NotifyReport
        parts): the session answers it itself and never relays it."""

    async def forget(self, session: ChargerSession) -> None:
        """The session ends on its own (outbox replayed without a charger; strict mode)."""

    async def replay_in(self, session: ChargerSession, protocol: str) -> None:
        """`session`'s next stored row was stored in `protocol`: replay it over a link of that
        version (a replay-only session), then let `session` go on."""

    def backlog_blocked(self, session: ChargerSession, reason: str | None) -> None:
        """A replay-only session cannot open its link (`reason`; None: it could again)."""
