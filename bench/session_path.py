"""The charger session's own cost, in one process: the CPU the core (hub, session, relay decisions,
replay, link keeper) spends per relayed call and per replayed outbox message, with the sockets
replaced by in-memory links. No websockets, no other process, so the figure moves far less with
the machine's load than `bench.relay` and `bench.replay` (which measure the whole gateway against a
reference in the same run); it is a check of a change to the core, not a replacement for them.

    python -m bench.session_path                 # best of 5 passes of each
    python -m bench.session_path --calls 50000 --replay 5000 --passes 7
    python -m bench.session_path --observers default   # with the observers a running gateway has
    python -m bench.session_path --once relay --calls 2000 --observers default   # one short run (for callgrind)

Relay: one 1.6 charger, its CSMS link an echo that answers each CALL at once (the answer goes
through the link's reader, as on a socket); the charger sends its next CALL when it has the
answer to the previous one. Replay: `--replay` MeterValues buffered while the CSMS is down, then
replayed into an echo link that offers the fast lane (`FastUpstreamLane`), with the real
SQLite store in a temporary directory; CPU of all threads (the store's writer included) from
the link coming up to the outbox being empty. Needs only the gateway's own dependencies.

`--observers default` adds the session observers a running gateway has (gateway/app.py): the
transaction log, the credential book, local control, the variables mirror (its reads off), the
status page, the metrics, and the telemetry observer (gathering, as with MQTT or InfluxDB
configured) over a sink that takes the records and drops them (the encoders are
`bench.telemetry_path`'s). `--once relay|replay` runs one pass of one figure without a warm-up
pass of its own (the relay still warms up on a tenth of the calls): for instruction counts, e.g.
`valgrind --tool=callgrind python -m bench.session_path --once relay --calls 2000`, whose total
divided by the round trips of the run (the warm-up included) is instructions per relayed call.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import orjson

from bench._common import REPO

if TYPE_CHECKING:
    from gateway.hub import Hub

NOW = "2026-01-01T00:00:00Z"
METER = ('{"connectorId":1,"transactionId":5,"meterValue":[{"timestamp":"2026-01-01T00:00:00Z",'
         '"sampledValue":[{"value":"1.5","measurand":"Energy.Active.Import.Register","unit":"kWh"}]}]}')
BUFFERED = '{"connectorId":1,"meterValue":[{"timestamp":"2026-01-01T00:00:00Z","sampledValue":[{"value":"1"}]}]}'


class _Charger:
    transport = "memory"
    remote = "memory"

    def __init__(self) -> None:
        self.got: asyncio.Future[str] | None = None

    async def send(self, text: str) -> None:
        if self.got is not None and not self.got.done():
            self.got.set_result(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass


class _Echo:
    """An upstream link that answers every CALL with a CALLRESULT on the next loop iteration, and
    offers the synchronous lane the replay uses."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.on_text: Callable[[str], bool] | None = None
        self.waiting = False
        self.loop = asyncio.get_running_loop()

    @staticmethod
    def _answer(text: str) -> str:
        message_id = text[4:text.index('"', 4)]
        if '"Heartbeat"' in text[:60]:
            return f'[3,"{message_id}",{{"currentTime":"{NOW}"}}]'
        return f'[3,"{message_id}",{{}}]'

    def _deliver(self, text: str) -> None:
        if self.on_text is not None and self.waiting and self.queue.empty() and self.on_text(text):
            return
        self.queue.put_nowait(text)

    async def send(self, text: str) -> None:
        self.loop.call_soon(self._deliver, self._answer(text))

    def send_now(self, text: str) -> bool:
        self.loop.call_soon(self._deliver, self._answer(text))
        return True

    def set_fast_reader(self, on_text: Callable[[str], bool] | None) -> None:
        self.on_text = on_text

    async def recv(self) -> str:
        self.waiting = True
        try:
            return await self.queue.get()
        finally:
            self.waiting = False

    async def close(self) -> None:
        pass


class _Connector:
    def __init__(self) -> None:
        self.up = True

    async def connect(self, charger_id: str, version: object, password: str | None) -> _Echo:
        from gateway.errors import LinkFailed

        if not self.up:
            raise LinkFailed("CSMS down (bench)")
        return _Echo()


class _DropSink:
    """A telemetry sink that takes the records of an interval and drops them."""

    def __init__(self) -> None:
        self.records = 0

    def offer(self, record: object) -> None:
        self.records += 1

    def offer_all(self, records: list[object]) -> None:
        self.records += len(records)


def _observe(hub: object, settings: object) -> None:
    """The observers of a running gateway (gateway/app.py), in its order; no I/O of their own."""
    from adapters.credentials import CredentialBook
    from adapters.metrics import Metrics
    from gateway.control.engine import ControlEngine
    from gateway.mirror import VariablesMirror
    from gateway.status import StatusBook
    from gateway.telemetry.observer import GATHER, TelemetryObserver
    from gateway.txlog import TransactionLog

    from bench._memory_store import NullStore

    observers = hub.observers  # type: ignore[attr-defined]
    observers.append(TransactionLog(NullStore()))
    observers.append(CredentialBook(settings))  # type: ignore[arg-type]
    observers.extend((StatusBook(), Metrics(hub)))  # type: ignore[arg-type]
    telemetry = TelemetryObserver([_DropSink()], gather=GATHER)
    observers.append(telemetry)
    engine = ControlEngine(settings, hub, telemetry.records)
    observers.append(engine)
    hub.control = engine  # type: ignore[attr-defined]
    mirror = VariablesMirror(settings, hub, NullStore(), telemetry.records)
    observers.append(mirror)
    hub.variables = mirror  # type: ignore[attr-defined]


ACTIONS = (("Heartbeat", "{}"), ("MeterValues", METER))


async def relay(calls: int, observers: str = "none", actions: tuple[str, ...] = ("Heartbeat", "MeterValues")
                ) -> dict[str, float]:
    """CPU µs per relayed round trip, per action (after a warm-up of a tenth as many)."""
    from gateway.config import Settings
    from gateway.hub import Hub
    from gateway.protocol.frames import OcppVersion
    from gateway.protocol.schemas import SchemaRegistry

    from bench._memory_store import NullStore

    with tempfile.TemporaryDirectory(prefix="bench-session-path-") as tmp:
        settings = Settings(upstream={"url": "ws://127.0.0.1:1/ocpp"}, data_dir=tmp, variables={"enabled": False})
        hub = Hub(settings, NullStore(), SchemaRegistry([OcppVersion.V16]), _Connector())  # type: ignore[arg-type]
        if observers == "default":
            _observe(hub, settings)
        return await _relay(hub, calls, actions)


async def _relay(hub: object, calls: int, actions: tuple[str, ...]) -> dict[str, float]:
    from gateway.protocol.frames import OcppVersion

    hub = cast("Hub", hub)
    charger = _Charger()
    session = await hub.attach("CP1", OcppVersion.V16, charger)
    while not session.upstream_online:
        await asyncio.sleep(0.001)
    loop = asyncio.get_running_loop()
    out: dict[str, float] = {}
    for action, payload in ACTIONS:
        if action not in actions:
            continue
        for n in (calls // 10, calls):  # warm-up, then measured
            start = time.process_time()
            for i in range(n):
                charger.got = loop.create_future()
                await session.from_charger(f'[2,"{i}","{action}",{payload}]')
                await charger.got
            spent = time.process_time() - start
        out[action] = spent / calls * 1e6
    await hub.close()
    return out


async def replay(messages: int) -> float:
    """CPU µs (all threads) per replayed message, from the link coming up to an empty outbox."""
    from adapters.sqlite_store import SqliteStore
    from gateway.config import Settings
    from gateway.hub import Hub
    from gateway.protocol.frames import OcppVersion
    from gateway.protocol.schemas import SchemaRegistry
    from gateway.protocol.relay import UpstreamState

    with tempfile.TemporaryDirectory(prefix="bench-session-path-") as tmp:
        settings = Settings(upstream={"url": "ws://127.0.0.1:1/ocpp", "reconnect_min": 0.01, "reconnect_max": 0.02},
                            data_dir=tmp, variables={"enabled": False})
        async with SqliteStore(tmp) as store:
            connector = _Connector()
            connector.up = False
            hub = Hub(settings, store, SchemaRegistry([OcppVersion.V16]), connector)
            await hub.start()
            charger = _Charger()
            session = await hub.attach("CP1", OcppVersion.V16, charger)
            while session.upstream_state is not UpstreamState.OFFLINE:
                await asyncio.sleep(0.001)
            for i in range(messages):
                await session.from_charger(f'[2,"{i}","MeterValues",{BUFFERED}]')
            start = time.process_time()
            connector.up = True
            while session.backlog:
                await asyncio.sleep(0.0005)
            spent = time.process_time() - start
            assert session.counters["replayed"] == messages, session.counters
            await hub.close()
    return spent / messages * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20_000, help="relayed round trips per action and pass")
    ap.add_argument("--replay", type=int, default=3_000, help="outbox messages replayed per pass")
    ap.add_argument("--passes", type=int, default=5, help="passes; the best of each figure is printed")
    ap.add_argument("--observers", choices=("none", "default"), default="none",
                    help="session observers: none, or those of a running gateway (with telemetry)")
    ap.add_argument("--once", choices=("relay", "replay"), help="one pass of one figure (for callgrind)")
    ap.add_argument("--action", choices=[a for a, _ in ACTIONS], help="with --once relay: only this action")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    logging.basicConfig(level=logging.ERROR)
    gc.freeze()
    if args.once == "relay":
        actions = (args.action,) if args.action else tuple(a for a, _ in ACTIONS)
        print(orjson.dumps(asyncio.run(relay(args.calls, args.observers, actions))).decode())
        return
    if args.once == "replay":
        print(orjson.dumps({"replay MeterValues": asyncio.run(replay(args.replay))}).decode())
        return
    relayed: dict[str, list[float]] = {}
    replayed: list[float] = []
    for _ in range(args.passes):
        for action, us in asyncio.run(relay(args.calls, args.observers)).items():
            relayed.setdefault(action, []).append(us)
        replayed.append(asyncio.run(replay(args.replay)))
    result = {f"relay {a}": min(v) for a, v in relayed.items()} | {"replay MeterValues": min(replayed)}
    for name, us in result.items():
        print(f"{name:24s} {us:7.2f} us CPU per message (best of {args.passes})")
    print(orjson.dumps({"passes": args.passes, **{k: round(v, 2) for k, v in result.items()}}).decode())


if __name__ == "__main__":
    main()
