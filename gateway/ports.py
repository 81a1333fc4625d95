"""The ports: what the core needs from the outside, as small protocols the adapters implement."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from gateway.protocol.frames import OcppVersion


class ChargerLink(Protocol):
    """One live connection to a charger, whatever the transport."""

    transport: str  # "websocket", later "soap", "http"
    remote: str  # peer address, for logs

    async def send(self, text: str) -> None:
        """Send one OCPP-J frame. Raises LinkClosed."""

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class UpstreamLink(Protocol):
    """One live connection to the CSMS on a charger's behalf.

    A link may also offer a synchronous lane, used by the replay when present:
    `send_now(text) -> bool` (write at once from a plain callback; False = use `send`) and
    `set_fast_reader(on_text)` (offer each text message to `on_text(text) -> bool` as it arrives
    while the reader waits idle; what it does not take goes to `recv` in order)."""

    async def send(self, text: str) -> None:
        """Raises LinkClosed."""

    async def recv(self) -> str:
        """The CSMS's next frame. Raises LinkClosed when the link is gone."""

    async def close(self) -> None: ...


class UpstreamConnector(Protocol):
    async def connect(self, charger_id: str, version: OcppVersion, password: str | None) -> UpstreamLink:
        """Open `{url}/{charger_id}` with that subprotocol. Raises LinkFailed."""


class Store(Protocol):
    async def next_transaction_id(self) -> int:
        """A transaction id never issued before by this store (durable before it returns)."""

    async def charger_seen(self, charger_id: str, version: str, transport: str, when: str) -> None: ...

    # offline operation (see adapters/sqlite_store.py for the semantics of each)
    async def outbox_append(self, row: dict[str, Any], *, max_per_charger: int, max_total: int,
                            id_range: tuple[int, int] | None = None) -> tuple[int | None, int | None]:
        """Durable before it returns; (seq or None when refused at a bound, issued local 1.6 id)."""

    async def outbox_head(self, charger_id: str, limit: int = 100, after: int = 0) -> list[Any]:
        """The next pending rows, oldest first, each read by key (row["payload"]) and with its
        replay `message_id` and `attempts`."""

    async def outbox_step(self, charger_id: str, ack: tuple[int, Any, Any] | None, send: int | None) -> None:
        """Acknowledge the previous replayed row and mark the next (by seq) as sent, in one commit."""

    async def outbox_mark_sent(self, seq: int, sent_id: str) -> None: ...

    def outbox_purge_later(self, charger_id: str) -> None:
        """The charger's replay is over: its acknowledged rows may be deleted (in the background)."""

    async def outbox_dead(self, seq: int, error: str) -> None: ...

    async def has_backlog(self, charger_id: str) -> bool: ...

    async def chargers_with_backlog(self) -> list[tuple[str, str]]: ...

    async def pending_boot_set(self, charger_id: str, protocol: str, payload: str, received_at: str) -> None: ...

    async def pending_boot(self, charger_id: str) -> dict[str, Any] | None: ...

    async def pending_boot_clear(self, charger_id: str) -> None: ...

    async def tx_map(self, charger_id: str) -> list[tuple[int, int | None]]: ...

    async def tx_forget(self, charger_id: str, local_id: int) -> None: ...

    async def auth_load(self) -> tuple[list[Any], list[Any]]: ...

    async def auth_cache_put(self, id_tag: str, status: str, expires_at: str | None) -> None: ...

    async def auth_cache_clear(self) -> None: ...

    async def local_list_update(self, charger_id: str, full: bool, version: int | None,
                                entries: list[tuple[str, str | None, str | None]]) -> None: ...

    async def close(self) -> None: ...


class SessionObserver(Protocol):
    """Sees what passes through every session (telemetry, API, metrics). Called on the event loop:
    must return at once, never block, never raise (the hub logs and drops anything raised)."""

    def exchange(self, session: Any, exchange: "Exchange") -> None: ...

    def session_event(self, session: Any, event: str) -> None:
        """`connected`, `disconnected`, `upstream` (the upstream state changed) or `forgotten` (an
        operator retired the charger: drop what is kept about it; `session` may then carry only
        `charger_id`)."""


@dataclass(slots=True, kw_only=True)
class Exchange:
    """One finished CALL: the request and what answered it (a CALLRESULT payload or an error code)."""

    charger_id: str
    version: OcppVersion
    origin: str  # "charger" (charger-initiated), "csms" (CSMS-initiated), "gateway" (the gateway's own call)
    action: str
    message_id: str
    request: dict[str, Any]
    response: dict[str, Any] | None  # None: an error, or a 2.1 SEND (never answered)
    error: str | None = None  # the error code (or "timeout") when there is no response
    answered_by: str = ""  # "csms", "gateway" (local answer) or "charger"
    received_at: datetime  # wall-clock time the request arrived at the gateway
