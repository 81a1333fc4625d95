"""In-memory stand-ins for the core's ports, for tests of the core without sockets (tests/core).

- `MemoryStore`: the `Store` port over dicts (outbox, replay cursor, pending boot, 1.6 id map,
  authorization cache), with the SQLite store's semantics where the session depends on them
  (rows in seq order, attempts counted for the row in flight, acknowledgements with what they
  taught, `outbox_step_then` calling back after the "commit" on the event loop).
- `MemoryCharger`: a `ChargerLink` whose frames land in a queue the test reads.
- `MemoryConnector` / `MemoryUpstream` / `CsmsEnd`: an `UpstreamConnector` whose links end in a
  test-driven CSMS; `MemoryUpstream` is also a `FastUpstreamLane` (counted).
- `Site`: a hub over these fakes and one charger attached to it.
- `joined(...)`: two hubs joined in memory (the h11 `ConnectionPair` pattern): the upstream link of
  gateway A is a charger link of gateway B, so two real sessions talk without a network.

These are fakes of what lies outside the core (storage, transports), never of the session, the
relay's decisions, the replay or the link keeper: those run for real.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.config import Settings
from gateway.errors import LinkClosed, LinkFailed
from gateway.hub import Hub
from gateway.ports import Ack, OutboxRow
from gateway.protocol.frames import OcppVersion
from gateway.protocol.schemas import SchemaRegistry
from gateway.session import ChargerSession

V16 = OcppVersion.V16
STEP = 5.0  # s: the longest a test waits for one expected frame


@dataclass
class _Row:
    seq: int
    charger_id: str
    protocol: str
    action: str
    payload: str
    kind: str
    local_tx: int | None
    attempts: int = 0
    sent_id: str | None = None
    state: str = "pending"  # pending, dead
    error: str | None = None


class MemoryStore:
    """The `Store` port in memory (see the module doc)."""

    def __init__(self) -> None:
        self.rows: dict[int, _Row] = {}
        self.cursor: dict[str, list[int]] = {}  # charger -> [acked, sent]
        self.boots: dict[str, tuple[str, str, str]] = {}
        self.tx: dict[tuple[str, int], int | None] = {}
        self.retired: set[tuple[str, int]] = set()  # finished mappings, kept (the grace period)
        self.seen: dict[str, tuple[str, str]] = {}
        self.auth_cache: dict[str, tuple[str, str | None]] = {}
        self.steps: list[tuple[str, Ack | None, int | None]] = []  # every cursor move, in order
        self.purged: list[str] = []
        self._seq = 0
        self._local_tx = 0
        self._standalone_tx = 0

    # -- ids, registry ----------------------------------------------------------------------------

    async def next_transaction_id(self) -> int:
        self._standalone_tx += 1
        return self._standalone_tx

    async def charger_seen(self, charger_id: str, version: str, transport: str, when: str) -> None:
        self.seen[charger_id] = (version, transport)

    # -- outbox -----------------------------------------------------------------------------------

    def pending(self, charger_id: str) -> list[_Row]:
        acked = self.cursor.get(charger_id, [0, 0])[0]
        return sorted((r for r in self.rows.values() if r.charger_id == charger_id and r.state == "pending"
                       and r.seq > acked), key=lambda r: r.seq)

    async def outbox_append(self, row: dict[str, Any], *, max_per_charger: int, max_total: int,
                            id_range: tuple[int, int] | None = None) -> tuple[int | None, int | None]:
        charger_id = row["charger_id"]
        if len(self.pending(charger_id)) >= max_per_charger:
            return None, None
        local_tx = None
        if id_range is not None:
            self._local_tx += 1
            local_tx = id_range[0] + (self._local_tx - 1) % (id_range[1] - id_range[0] + 1)
            self.tx[(charger_id, local_tx)] = None
        self._seq += 1
        sent_id = row.get("sent_id")
        self.rows[self._seq] = _Row(self._seq, charger_id, row["protocol"], row["action"], row["payload"], row["kind"],
                                    local_tx, attempts=1 if sent_id else 0, sent_id=sent_id)
        await asyncio.sleep(0)  # a real store answers from another thread: never synchronously
        return self._seq, local_tx

    async def outbox_head(self, charger_id: str, limit: int = 100, after: int = 0) -> list[OutboxRow]:
        _, sent = self.cursor.setdefault(charger_id, [0, 0])
        rows = [r for r in self.pending(charger_id) if r.seq > after][:limit]
        await asyncio.sleep(0)
        return [OutboxRow(r.seq, r.action, r.payload, r.local_tx, r.attempts + (r.seq <= sent),
                          r.sent_id or f"replay-{r.seq}", r.protocol) for r in rows]

    def _step(self, charger_id: str, ack: Ack | None, send: int | None) -> None:
        self.steps.append((charger_id, ack, send))
        cursor = self.cursor.setdefault(charger_id, [0, 0])
        if ack is not None:
            seq, bind, stopped = ack
            cursor[0] = seq
            if bind is not None:
                self.tx[(bind[0], bind[1])] = bind[2]
            if stopped is not None:
                self.retired.add(stopped)
        if send is not None:
            cursor[1] = send

    async def outbox_step(self, charger_id: str, ack: Ack | None, send: int | None) -> None:
        self._step(charger_id, ack, send)
        await asyncio.sleep(0)

    def outbox_step_then(self, charger_id: str, ack: Ack | None, send: int | None,
                         then: Callable[[Exception | None], None]) -> None:
        def commit() -> None:
            self._step(charger_id, ack, send)
            then(None)

        asyncio.get_running_loop().call_soon(commit)

    async def outbox_mark_sent(self, seq: int, sent_id: str) -> None:
        row = self.rows[seq]
        row.attempts += 1
        row.sent_id = sent_id

    def outbox_purge_later(self, charger_id: str) -> None:
        self.purged.append(charger_id)

    async def outbox_dead(self, seq: int, error: str) -> None:
        row = self.rows[seq]
        row.state, row.error = "dead", error

    async def outbox_dead_letter(self, row: dict[str, Any], error: str) -> int:
        self._seq += 1
        self.rows[self._seq] = _Row(self._seq, row["charger_id"], row["protocol"], row["action"], row["payload"],
                                    row["kind"], None, state="dead", error=error)
        await asyncio.sleep(0)
        return self._seq

    async def outbox_acknowledge(self, charger_id: str, seq: int, bind: tuple[str, int, int, Any] | None = None,
                                 stopped: tuple[str, int] | None = None) -> None:
        self.rows.pop(seq, None)
        if bind is not None:
            self.tx[(bind[0], bind[1])] = bind[2]
        if stopped is not None:
            self.retired.add(stopped)
        await asyncio.sleep(0)

    async def has_backlog(self, charger_id: str) -> bool:
        return bool(self.pending(charger_id)) or charger_id in self.boots

    async def chargers_with_backlog(self) -> list[tuple[str, str]]:
        found = {(r.charger_id, r.protocol) for r in self.rows.values() if r in self.pending(r.charger_id)}
        return sorted(found | {(cid, boot[0]) for cid, boot in self.boots.items()})

    async def pending_boot_set(self, charger_id: str, protocol: str, payload: str, received_at: str) -> None:
        self.boots[charger_id] = (protocol, payload, received_at)

    async def pending_boot(self, charger_id: str) -> dict[str, Any] | None:
        boot = self.boots.get(charger_id)
        return {"payload": boot[1], "received_at": boot[2], "protocol": boot[0]} if boot else None

    async def pending_boot_clear(self, charger_id: str) -> None:
        self.boots.pop(charger_id, None)

    async def tx_map(self, charger_id: str) -> list[tuple[int, int | None]]:
        return [(local, csms) for (cid, local), csms in self.tx.items() if cid == charger_id]

    async def tx_forget(self, charger_id: str, local_id: int) -> None:
        if (charger_id, local_id) in self.tx:
            self.retired.add((charger_id, local_id))  # kept for the grace period, as the real store does

    async def tx_retired(self, charger_id: str) -> set[int]:
        return {local for (cid, local) in self.retired if cid == charger_id}

    # -- authorization ----------------------------------------------------------------------------

    async def auth_load(self) -> tuple[list[Any], list[Any]]:
        return [(tag, status, exp) for tag, (status, exp) in self.auth_cache.items()], []

    async def auth_cache_put(self, id_tag: str, status: str, expires_at: str | None) -> None:
        self.auth_cache[id_tag] = (status, expires_at)

    async def auth_cache_clear(self) -> None:
        self.auth_cache.clear()

    async def local_list_update(self, charger_id: str, full: bool, version: int | None,
                                entries: list[tuple[str, str | None, str | None]]) -> None:
        pass

    async def close(self) -> None:
        pass


class MemoryCharger:
    """A `ChargerLink`: what the session sends the charger lands in `frames` (a queue)."""

    transport = "memory"
    remote = "memory"

    def __init__(self) -> None:
        self.frames: asyncio.Queue[list[Any]] = asyncio.Queue()
        self.closed: tuple[int, str] | None = None

    async def send(self, text: str) -> None:
        if self.closed is not None:
            raise LinkClosed("charger link closed")
        self.frames.put_nowait(orjson.loads(text))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)

    async def next(self) -> list[Any]:
        async with asyncio.timeout(STEP):
            return await self.frames.get()


_CLOSED = "\x00closed"


class MemoryUpstream:
    """An `UpstreamLink` (and `FastUpstreamLane`) to a `CsmsEnd`."""

    def __init__(self, csms: CsmsEnd) -> None:
        self.csms = csms
        self.incoming: asyncio.Queue[str] = asyncio.Queue()
        self.closed = False
        self.on_text: Callable[[str], bool] | None = None
        self.reader_waiting = False
        self.sent_now = 0  # frames written through the synchronous lane
        self.taken_fast = 0  # answers taken by the fast reader
        self.probes = 0  # keepalive probes the session asked for (a CALL got no answer in time)

    def probe(self) -> None:
        self.probes += 1

    async def send(self, text: str) -> None:
        if self.closed:
            raise LinkClosed("upstream link closed")
        self.csms.frames.put_nowait(orjson.loads(text))

    def send_now(self, text: str) -> bool:
        if self.closed:
            return False
        self.sent_now += 1
        self.csms.frames.put_nowait(orjson.loads(text))
        return True

    def set_fast_reader(self, on_text: Callable[[str], bool] | None) -> None:
        self.on_text = on_text

    def deliver(self, text: str) -> None:
        """A frame from the CSMS: to the fast reader if it takes it (only while the reader waits
        idle, as the WebSocket link does), else to `recv`, in order."""
        if self.on_text is not None and self.reader_waiting and self.incoming.empty() and self.on_text(text):
            self.taken_fast += 1
            return
        self.incoming.put_nowait(text)

    async def recv(self) -> str:
        self.reader_waiting = True
        try:
            text = await self.incoming.get()
        finally:
            self.reader_waiting = False
        if text == _CLOSED:
            self.incoming.put_nowait(_CLOSED)
            raise LinkClosed("upstream link closed")
        return text

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.incoming.put_nowait(_CLOSED)


class CsmsEnd:
    """The CSMS side of one upstream link, driven by the test: `next()` is the next frame the
    gateway sent, `send(frame)` answers or calls, `drop()` ends the link from the CSMS's side."""

    def __init__(self, charger_id: str) -> None:
        self.charger_id = charger_id
        self.frames: asyncio.Queue[list[Any]] = asyncio.Queue()
        self.link = MemoryUpstream(self)

    async def next(self) -> list[Any]:
        async with asyncio.timeout(STEP):
            return await self.frames.get()

    def send(self, frame: list[Any]) -> None:
        self.link.deliver(orjson.dumps(frame).decode())

    def result(self, message_id: str, payload: dict[str, Any]) -> None:
        self.send([3, message_id, payload])

    async def drop(self) -> None:
        await self.link.close()


class MemoryConnector:
    """An `UpstreamConnector`: each dial gives a new `CsmsEnd` (in `ends`), or fails while `down`."""

    def __init__(self) -> None:
        self.down = False
        self.dials = 0
        self.ends: asyncio.Queue[CsmsEnd] = asyncio.Queue()

    async def connect(self, charger_id: str, version: OcppVersion, password: str | None) -> MemoryUpstream:
        self.dials += 1
        await asyncio.sleep(0)
        if self.down:
            raise LinkFailed("CSMS down (test)")
        end = CsmsEnd(charger_id)
        self.ends.put_nowait(end)
        return end.link

    async def next_end(self) -> CsmsEnd:
        async with asyncio.timeout(STEP):
            return await self.ends.get()


def settings(**sections: Any) -> Settings:
    """Settings for an in-memory site: relaying to a CSMS, fast reconnects, no data on disk."""
    base: dict[str, Any] = {
        "upstream": {"url": "ws://csms.invalid/ocpp", "reconnect_min": 0.02, "reconnect_max": 0.05},
        "websocket": {"versions": ["ocpp1.6", "ocpp2.0.1"]},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return Settings(**base)


SCHEMAS = SchemaRegistry([OcppVersion.V16, OcppVersion.V201])


@dataclass
class Site:
    """A hub over in-memory ports and one attached charger."""

    hub: Hub
    store: MemoryStore
    connector: MemoryConnector
    charger: MemoryCharger = field(default_factory=MemoryCharger)
    session: ChargerSession | None = None

    @classmethod
    async def start(cls, config: Settings | None = None, *, charger_id: str = "CP1", version: OcppVersion = V16,
                    csms_down: bool = False) -> Site:
        store, connector = MemoryStore(), MemoryConnector()
        connector.down = csms_down
        config = config or settings()
        hub = Hub(config, store, SCHEMAS, connector if config.upstream.url else None)
        await hub.start()
        site = cls(hub, store, connector)
        site.session = await hub.attach(charger_id, version, site.charger)
        return site

    @property
    def s(self) -> ChargerSession:
        assert self.session is not None
        return self.session

    async def call(self, message_id: str, action: str, payload: dict[str, Any]) -> None:
        """The charger sends a CALL (returns once the session has applied its effects)."""
        await self.s.from_charger(orjson.dumps([2, message_id, action, payload]).decode())

    async def reply(self, message_id: str, payload: dict[str, Any]) -> None:
        await self.s.from_charger(orjson.dumps([3, message_id, payload]).decode())

    async def close(self) -> None:
        await self.hub.close()


class _Bridge:
    """Gateway A's upstream link that is a charger link of gateway B (see `joined`)."""

    transport = "memory"
    remote = "gateway-a"

    def __init__(self) -> None:
        self.b_session: ChargerSession | None = None
        self.to_a: asyncio.Queue[str] = asyncio.Queue()
        self.closed = False
        self.frames_to_b: list[list[Any]] = []

    # A's UpstreamLink
    async def send(self, text: str) -> None:
        if self.closed or self.b_session is None:
            raise LinkClosed("bridge closed")
        self.frames_to_b.append(orjson.loads(text))
        await self.b_session.from_charger(text)

    async def recv(self) -> str:
        text = await self.to_a.get()
        if text == _CLOSED:
            self.to_a.put_nowait(_CLOSED)
            raise LinkClosed("bridge closed")
        return text

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            self.to_a.put_nowait(_CLOSED)


class _BLink:
    """The same bridge as B sees it: a `ChargerLink` whose frames go to A's upstream reader."""

    transport = "memory"
    remote = "gateway-a"

    def __init__(self, bridge: _Bridge) -> None:
        self.bridge = bridge

    async def send(self, text: str) -> None:
        if self.bridge.closed:
            raise LinkClosed("bridge closed")
        self.bridge.to_a.put_nowait(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.bridge.close()


class BridgeConnector:
    """Gateway A's `UpstreamConnector`: dialling attaches a charger to gateway B's hub."""

    def __init__(self, b: Hub) -> None:
        self.b = b
        self.bridges: list[_Bridge] = []

    async def connect(self, charger_id: str, version: OcppVersion, password: str | None) -> _Bridge:
        bridge = _Bridge()
        bridge.b_session = await self.b.attach(charger_id, version, _BLink(bridge))
        self.bridges.append(bridge)
        return bridge


async def joined(*, charger_id: str = "CP1", version: OcppVersion = V16) -> tuple[Site, Hub]:
    """Gateway A relaying to gateway B (standalone: B answers as the CSMS), joined in memory;
    returns A's site (with its charger attached) and B's hub."""
    b = Hub(settings(upstream={"url": ""}), MemoryStore(), SCHEMAS, None)
    await b.start()
    store = MemoryStore()
    a = Hub(settings(), store, SCHEMAS, BridgeConnector(b))
    await a.start()
    site = Site(a, store, MemoryConnector())
    site.session = await a.attach(charger_id, version, site.charger)
    return site, b
