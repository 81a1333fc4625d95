"""The ports: what the core needs from the outside, as small protocols the adapters implement."""

from __future__ import annotations

from typing import AsyncIterator, Protocol

from gateway.protocol.frames import OcppVersion


class ChargerLink(Protocol):
    """One live connection to a charger, whatever the transport."""

    transport: str  # "websocket", later "soap", "http"
    remote: str  # peer address, for logs

    async def send(self, text: str) -> None:
        """Send one OCPP-J frame. Raises LinkClosed."""

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class UpstreamLink(Protocol):
    """One live connection to the CSMS on a charger's behalf."""

    async def send(self, text: str) -> None:
        """Raises LinkClosed."""

    def frames(self) -> AsyncIterator[str]:
        """The CSMS's frames until the link closes."""

    async def close(self) -> None: ...


class UpstreamConnector(Protocol):
    async def connect(self, charger_id: str, version: OcppVersion, password: str | None) -> UpstreamLink:
        """Open `{url}/{charger_id}` with that subprotocol. Raises LinkFailed."""


class Store(Protocol):
    async def next_transaction_id(self) -> int:
        """A transaction id never issued before by this store (durable before it returns)."""

    async def charger_seen(self, charger_id: str, version: str, transport: str, when: str) -> None: ...

    async def close(self) -> None: ...
