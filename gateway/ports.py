"""The ports: the contract between the core and the adapters.

What the core needs from the outside, as small protocols the adapters implement (`ChargerLink`,
`UpstreamLink`, `FastUpstreamLane`, `PushUpstreamLink`, `UpstreamConnector`, `Store`, `SessionObserver`), what a
charger transport may ask of the core (`ChargerIngress`, handing out `ChargerHandle`s), and what
the operations adapters (REST API, metrics) read of it (`GatewayView` of `SessionView`s, and the
telemetry sinks' `SinkFigures`, handed to the metrics by gateway/app.py). Adapters
import this module, never gateway.session or gateway.hub (tests/core/test_ports.py checks it);
the composition root (gateway/app.py) wires the concrete hub into them.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence, Sized
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from gateway.protocol.frames import OcppVersion
from gateway.protocol.relay import UpstreamState
from gateway.protocol.schemas import SchemaRegistry


class ChargerLink(Protocol):
    """One live connection to a charger, whatever the transport."""

    transport: str  # "websocket", later "soap", "http"
    remote: str  # peer address, for logs

    async def send(self, text: str) -> None:
        """Send one OCPP-J frame. Raises LinkClosed."""

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class UpstreamLink(Protocol):
    """One live connection to the CSMS on a charger's behalf. A link may also be a
    `FastUpstreamLane`, which the replay then uses."""

    async def send(self, text: str) -> None:
        """Raises LinkClosed."""

    async def recv(self) -> str:
        """The CSMS's next frame. Raises LinkClosed when the link is gone."""

    async def close(self) -> None: ...


@runtime_checkable
class FastUpstreamLane(Protocol):
    """The synchronous lane of an upstream link, for the outbox replay's steady state
    (gateway/replay.py): no task switch per replayed message."""

    def send_now(self, text: str) -> bool:
        """Write `text` at once, from a plain callback, in the order of the calls. False: nothing
        was written (closing, flow control); use `send`."""

    def set_fast_reader(self, on_text: Callable[[str], bool] | None) -> None:
        """Offer each text message to `on_text(text) -> bool` as it arrives while the link's reader
        waits idle; what it does not take goes to `recv`, in order. None: stop offering."""


@runtime_checkable
class PushUpstreamLink(Protocol):
    """An upstream link that delivers the CSMS's messages itself, eagerly (adapters/upstream_picows.py):
    the link keeper (gateway/uplink.py) calls `pump` instead of looping on `recv`."""

    async def pump(self, on_frame: Callable[[str], Coroutine[Any, Any, None]]) -> None:
        """Hand each CSMS message to `on_frame` (an async function), in order, one at a time, until the link ends;
        then raise LinkClosed (after the messages that came before the end were handled). A
        message whose handling never waits may be handled inside the transport's callback (no task
        per message); while messages wait, the link stops reading (back-pressure). What `on_frame`
        raises ends the link and is raised here. The fast reader (`FastUpstreamLane`) is offered a
        message before `on_frame` when no message is being handled."""


class UpstreamConnector(Protocol):
    async def connect(self, charger_id: str, version: OcppVersion, password: str | None) -> UpstreamLink:
        """Open `{url}/{charger_id}` with that subprotocol. Raises LinkFailed."""


@dataclass(slots=True)
class OutboxRow:
    """One stored charger message waiting for the CSMS, as `Store.outbox_head` returns it."""

    seq: int  # its place in the outbox (site-wide, increasing)
    action: str
    payload: str  # the payload's JSON text, as the charger sent it
    local_tx: int | None  # a 1.6 StartTransaction's local transaction id
    attempts: int  # > 0: it may have reached the CSMS already (sent before a link or gateway loss)
    message_id: str  # the id it is replayed with (the one it was already sent with, or one from its seq)
    protocol: str = ""  # the OCPP version it was stored in (it is replayed only over a link of that version)


# outbox_step's acknowledgement: (seq, bind, stopped); bind = (charger, local id, CSMS id, auth
# status) for a replayed 1.6 start, stopped = (charger, local id) to unmap
Ack = tuple[int, tuple[str, int, int, Any] | None, tuple[str, int] | None]


class Store(Protocol):
    async def next_transaction_id(self) -> int:
        """A transaction id never issued before by this store (durable before it returns)."""

    async def charger_seen(self, charger_id: str, version: str, transport: str, when: str) -> None: ...

    # offline operation (see adapters/sqlite_store.py for the semantics of each)
    async def outbox_append(self, row: dict[str, Any], *, max_per_charger: int, max_total: int,
                            id_range: tuple[int, int] | None = None) -> tuple[int | None, int | None]:
        """Durable before it returns; (seq or None when refused at a bound, issued local 1.6 id)."""

    async def outbox_head(self, charger_id: str, limit: int = 100, after: int = 0) -> list[OutboxRow]:
        """The next pending rows, oldest first (after seq `after`)."""

    async def outbox_step(self, charger_id: str, ack: Ack | None, send: int | None) -> None:
        """Acknowledge the previous replayed row and mark the next (by seq) as sent, in one commit."""

    def outbox_step_then(self, charger_id: str, ack: Ack | None, send: int | None,
                         then: Callable[[Exception | None], None]) -> None:
        """`outbox_step` without awaiting: `then(None)` (or `then(error)`) runs right after the
        commit, on the event loop. Call it on the event loop thread."""

    async def outbox_mark_sent(self, seq: int, sent_id: str) -> None: ...

    def outbox_purge_later(self, charger_id: str) -> None:
        """The charger's replay is over: its acknowledged rows may be deleted (in the background)."""

    async def outbox_dead(self, seq: int, error: str) -> None: ...

    async def outbox_dead_letter(self, row: dict[str, Any], error: str) -> int:
        """Keep a message that must not reach the CSMS as it is as a dead letter, with its reason."""

    async def outbox_acknowledge(self, charger_id: str, seq: int, bind: tuple[str, int, int, Any] | None = None,
                                 stopped: tuple[str, int] | None = None) -> None:
        """A stored row the CSMS answered late on the live link: done (with what it taught)."""

    async def has_backlog(self, charger_id: str) -> bool: ...

    async def chargers_with_backlog(self) -> list[tuple[str, str]]: ...

    async def pending_boot_set(self, charger_id: str, protocol: str, payload: str, received_at: str) -> None: ...

    async def pending_boot(self, charger_id: str) -> dict[str, Any] | None: ...

    async def pending_boot_clear(self, charger_id: str) -> None: ...

    async def tx_map(self, charger_id: str) -> list[tuple[int, int | None]]: ...

    async def tx_forget(self, charger_id: str, local_id: int) -> None:
        """The CSMS acknowledged the stop: the mapping is kept for [offline].id_map_grace (retired)."""

    async def auth_load(self) -> tuple[list[Any], list[Any]]: ...

    async def auth_cache_put(self, id_tag: str, status: str, expires_at: str | None) -> None: ...

    async def auth_cache_clear(self) -> None: ...

    async def local_list_update(self, charger_id: str, full: bool, version: int | None,
                                entries: list[tuple[str, str | None, str | None]]) -> None: ...

    # what the operations adapters read (REST API, metrics, the known chargers of gateway/registry.py)
    async def outbox_summary(self) -> list[dict[str, Any]]:
        """Per charger with rows: `charger_id`, `depth`, `oldest` (ISO 8601), `dead_letters`."""

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]: ...

    async def transactions(self, *, charger_id: str | None = None, state: str | None = None, since: str | None = None,
                           until: str | None = None, limit: int = 100) -> list[dict[str, Any]]: ...

    async def known_chargers(self) -> list[dict[str, Any]]: ...

    async def chargers_save(self, rows: list[dict[str, Any]], forget: Sequence[str] = (), keep: int = 5000) -> None: ...

    async def close(self) -> None: ...


class ChargerHandle(Protocol):
    """A charger's session, as the transport that carries its frames sees it."""

    charger_id: str

    async def from_charger(self, text: str) -> None:
        """One frame from the charger; returns once the session has acted on it (in order)."""


class ChargerIngress(Protocol):
    """What a charger transport (WebSocket, SOAP, HTTP binding) may ask of the core (gateway/hub.py)."""

    schemas: SchemaRegistry

    @property
    def charger_count(self) -> int:
        """Chargers with a session now."""

    def admits(self, charger_id: str) -> bool:
        """The id may connect (configured, or unknown ids allowed)."""

    def is_known(self, charger_id: str) -> bool:
        """The id has a `[chargers.ID]` entry."""

    def needs_upstream_first(self, charger_id: str) -> bool:
        """Strict offline mode: accept the charger only with its upstream link up (`dial` first)."""

    async def dial(self, charger_id: str, version: OcppVersion) -> UpstreamLink:
        """Open the charger's upstream link before accepting it (strict mode). Raises LinkFailed."""

    async def attach(self, charger_id: str, version: OcppVersion, link: ChargerLink,
                     upstream: UpstreamLink | None = None) -> ChargerHandle:
        """A charger connected on `link` (with the upstream link `dial` gave, if any)."""

    async def detach(self, session: ChargerHandle, link: ChargerLink) -> None:
        """The charger's connection `link` ended."""


class SessionObserver(Protocol):
    """Sees what passes through every session (telemetry, API, metrics). Called on the event loop:
    must return at once, never block, never raise (the hub logs and drops anything raised)."""

    def exchange(self, session: Any, exchange: "Exchange") -> None: ...

    def session_event(self, session: Any, event: str) -> None:
        """`connected`, `disconnected`, `upstream` (the upstream state changed), `forgotten` (an
        operator retired the charger: drop what is kept about it; `session` may then carry only
        `charger_id`) or `known` (at start, a charger remembered from an earlier run, not connected:
        `session` is a gateway.registry.KnownCharger with `charger_id`, `version`, `connected`
        False, `upstream_state.value` "disconnected" and the store's `row`)."""


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


@runtime_checkable
class StoreWriteHealth(Protocol):
    """A store that tells whether it can write (adapters/sqlite_health.py), for the metrics."""

    write_failure: tuple[str, float, int] | None  # (reason, wall-clock since, refused writes) while failing
    write_failures: int  # writes refused since start


class SessionView(Protocol):
    """A charger's session as the operations adapters read it (REST API, metrics)."""

    @property
    def charger_id(self) -> str: ...

    @property
    def version(self) -> OcppVersion: ...

    @property
    def connected(self) -> bool: ...

    @property
    def link(self) -> ChargerLink | None: ...

    @property
    def upstream_state(self) -> UpstreamState: ...

    @property
    def upstream_changed_at(self) -> datetime: ...

    @property
    def to_charger(self) -> Sized:
        """CALLs to the charger waiting or in flight."""

    @property
    def to_upstream(self) -> Sized:
        """CALLs to the CSMS waiting or in flight."""

    @property
    def counters(self) -> Mapping[str, int]:
        """Offline store-and-forward events (buffered, dropped, replayed, ...)."""


class ControlView(Protocol):
    """Local control as the REST API reads and commands it (gateway.control.engine.ControlEngine)."""

    def view(self, cid: str) -> dict[str, Any]: ...

    async def pause(self, cid: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def resume(self, cid: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def limit(self, cid: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def set_site_limit(self, body: dict[str, Any]) -> dict[str, Any]: ...


class GatewayView(Protocol):
    """What the operations adapters (REST API, metrics) read of the core (gateway/hub.py)."""

    @property
    def sessions(self) -> Mapping[str, SessionView]: ...

    @property
    def schemas(self) -> SchemaRegistry: ...

    @property
    def store(self) -> Store: ...

    @property
    def blocked(self) -> Mapping[str, Mapping[str, str]]:
        """Chargers whose backlog in another OCPP version waits (the CSMS refuses that version)."""

    @property
    def control(self) -> ControlView | None: ...

    def notify(self, session: Any, event: str) -> None:
        """Hand a session event to every observer (gateway/registry.py: `known`)."""

    async def forget_charger(self, charger_id: str) -> None: ...


class SpoolFigures(Protocol):
    @property
    def count(self) -> int: ...

    @property
    def dropped(self) -> int: ...


class SinkFigures(Protocol):
    """A telemetry sink's figures for the metrics (adapters/telemetry_sink.py)."""

    @property
    def name(self) -> str: ...

    @property
    def backlog(self) -> int:
        """Items waiting (memory and disk)."""

    @property
    def dropped(self) -> int: ...

    @property
    def delivered(self) -> int: ...

    @property
    def spool(self) -> SpoolFigures: ...
