"""Peers for the offline tests, built on the `ocpp` package: a CSMS that counts every message it
receives and can be stopped and started again on the same port, and chargers for 1.6 and 2.0.1."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from ocpp import v16, v201
from ocpp.exceptions import GenericError
from ocpp.routing import on
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve

from tests.harness import free_port

STEP = 10.0
CSMS_INTERVAL = 777  # not the gateway's own default (300): tells a CSMS answer from a local one


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.05)


@dataclass
class Received:
    charger_id: str
    action: str
    message_id: str
    payload: dict[str, Any]


class _Csms16(v16.ChargePoint):
    csms: "CountingCsms"

    def _record(self, action: str, uid: str, payload: dict[str, Any]) -> None:
        self.csms.record(self.id, action, uid, payload)

    @on("BootNotification")
    async def on_boot(self, call_unique_id: str, **kw: Any) -> Any:
        self._record("BootNotification", call_unique_id, kw)
        return v16.call_result.BootNotification(current_time=now(), interval=CSMS_INTERVAL, status="Accepted")

    @on("Heartbeat")
    async def on_heartbeat(self, call_unique_id: str, **kw: Any) -> Any:
        self._record("Heartbeat", call_unique_id, kw)
        return v16.call_result.Heartbeat(current_time=now())

    @on("StatusNotification")
    async def on_status(self, call_unique_id: str, **kw: Any) -> Any:
        self._record("StatusNotification", call_unique_id, kw)
        return v16.call_result.StatusNotification()

    @on("Authorize")
    async def on_authorize(self, call_unique_id: str, id_tag: str) -> Any:
        self._record("Authorize", call_unique_id, {"id_tag": id_tag})
        return v16.call_result.Authorize(id_tag_info={"status": self.csms.tag_status(id_tag)})

    @on("StartTransaction")
    async def on_start(self, call_unique_id: str, **kw: Any) -> Any:
        self._record("StartTransaction", call_unique_id, kw)
        tx = self.csms.next_tx()
        self.csms.issued[(self.id, tx)] = kw
        return v16.call_result.StartTransaction(transaction_id=tx,
                                                id_tag_info={"status": self.csms.tag_status(kw["id_tag"])})

    @on("MeterValues")
    async def on_meter_values(self, call_unique_id: str, **kw: Any) -> Any:
        self._record("MeterValues", call_unique_id, kw)
        if self.csms.reject_meter_value is not None and kw["meter_value"][0]["sampled_value"][0]["value"] == self.csms.reject_meter_value:
            raise GenericError(description="this meter value is refused by the test CSMS")
        return v16.call_result.MeterValues()

    @on("StopTransaction")
    async def on_stop(self, call_unique_id: str, **kw: Any) -> Any:
        self._record("StopTransaction", call_unique_id, kw)
        return v16.call_result.StopTransaction()


class _Csms201(v201.ChargePoint):
    csms: "CountingCsms"

    def _record(self, action: str, uid: str, payload: dict[str, Any]) -> None:
        self.csms.record(self.id, action, uid, payload)

    @on("BootNotification")
    async def on_boot(self, call_unique_id: str, **kw: Any) -> Any:
        self._record("BootNotification", call_unique_id, kw)
        return v201.call_result.BootNotification(current_time=now(), interval=CSMS_INTERVAL, status="Accepted")

    @on("Heartbeat")
    async def on_heartbeat(self, call_unique_id: str, **kw: Any) -> Any:
        self._record("Heartbeat", call_unique_id, kw)
        return v201.call_result.Heartbeat(current_time=now())

    @on("StatusNotification")
    async def on_status(self, call_unique_id: str, **kw: Any) -> Any:
        self._record("StatusNotification", call_unique_id, kw)
        return v201.call_result.StatusNotification()

    @on("TransactionEvent")
    async def on_transaction_event(self, call_unique_id: str, **kw: Any) -> Any:
        self._record("TransactionEvent", call_unique_id, kw)
        return v201.call_result.TransactionEvent()


class CountingCsms:
    """Counts every request per charger, in arrival order; stop() and start() keep the port."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.port = free_port()
        self.received: list[Received] = []
        self.delay = delay  # seconds each handler waits before answering (a slow CSMS)
        self.issued: dict[tuple[str, int], dict[str, Any]] = {}
        self._tx = itertools.count(1001)
        self.blocked_tags: set[str] = set()
        self.reject_meter_value: str | None = None
        self.cps: dict[str, Any] = {}
        self._server: Server | None = None
        self.connects = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    def next_tx(self) -> int:
        return next(self._tx)

    def tag_status(self, tag: str) -> str:
        return "Blocked" if tag in self.blocked_tags else "Accepted"

    def record(self, charger_id: str, action: str, uid: str, payload: dict[str, Any]) -> None:
        self.received.append(Received(charger_id, action, uid, payload))

    def of_action(self, action: str) -> list[Received]:
        return [r for r in self.received if r.action == action]

    def of(self, charger_id: str, action: str | None = None) -> list[Received]:
        return [r for r in self.received if r.charger_id == charger_id and (action is None or r.action == action)]

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        charger_id = ws.request.path.rsplit("/", 1)[1]
        cls = _Csms16 if ws.subprotocol == "ocpp1.6" else _Csms201
        cp = cls(charger_id, ws)
        cp.csms = self
        self.connects += 1
        self.cps[charger_id] = cp
        if self.delay:
            original = cp.route_message

            async def slow(raw: str) -> None:
                await asyncio.sleep(self.delay)
                await original(raw)

            cp.route_message = slow  # type: ignore[method-assign]
        try:
            await cp.start()
        except Exception:  # noqa: BLE001 - the connection closed
            pass

    async def start(self) -> "CountingCsms":
        self._server = await serve(self._handler, "127.0.0.1", self.port, subprotocols=["ocpp1.6", "ocpp2.0.1"])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.cps.clear()


class Charger16(v16.ChargePoint):
    """A 1.6 charger that records the CSMS commands it gets."""

    commands: list[tuple[str, dict[str, Any]]]

    @on("RemoteStopTransaction")
    async def on_remote_stop(self, transaction_id: int) -> Any:
        self.commands.append(("RemoteStopTransaction", {"transaction_id": transaction_id}))
        return v16.call_result.RemoteStopTransaction(status="Accepted")

    @on("SetChargingProfile")
    async def on_set_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any]) -> Any:
        self.commands.append(("SetChargingProfile", {"connector_id": connector_id,
                                                     "cs_charging_profiles": cs_charging_profiles}))
        return v16.call_result.SetChargingProfile(status="Accepted")


class Charger201(v201.ChargePoint):
    commands: list[tuple[str, dict[str, Any]]]


class Connected:
    """`async with Connected(url, "ocpp1.6", "CP1") as cp:` a charger running its read loop."""

    def __init__(self, url: str, subprotocol: str, charger_id: str) -> None:
        self.url, self.subprotocol, self.charger_id = url, subprotocol, charger_id
        self.ws: ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Any:
        self.ws = await asyncio.wait_for(connect(f"{self.url}", subprotocols=[self.subprotocol]), STEP)  # type: ignore[list-item]
        cls = Charger16 if self.subprotocol == "ocpp1.6" else Charger201
        cp = cls(self.charger_id, self.ws, response_timeout=STEP)
        cp.commands = []
        self.task = asyncio.create_task(cp.start())
        return cp

    async def __aexit__(self, *exc: Any) -> None:
        assert self.ws is not None and self.task is not None
        await self.ws.close()
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001
            pass


def meter_value(value: str, measurand: str = "Energy.Active.Import.Register") -> list[dict[str, Any]]:
    return [{"timestamp": now(), "sampledValue": [{"value": value, "measurand": measurand, "unit": "Wh"}]}]
