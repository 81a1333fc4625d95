"""The counting CSMS of the offline tests, listening inside a network namespace (or on loopback
with a chosen set of subprotocols), and a charger that times every call it makes."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from websockets.asyncio.server import serve

from tests.offline.peers import CountingCsms, _Csms16, _Csms201
from tests.uplink.netns import Netns


class NetnsCsms(CountingCsms):
    """`CountingCsms` reached over a veth pair: `netns.silence()` makes its link silent."""

    def __init__(self, netns: Netns, *, delay: float = 0.0, subprotocols: tuple[str, ...] = ("ocpp1.6", "ocpp2.0.1")) -> None:
        super().__init__(delay=delay)
        self.netns = netns
        self.subprotocols = list(subprotocols)

    @property
    def url(self) -> str:
        return f"ws://{self.netns.inner_ip}:{self.port}/ocpp"

    async def start(self) -> "NetnsCsms":
        sock = self.netns.listen(self.port)
        self._server = await serve(self._handler, sock=sock, subprotocols=self.subprotocols,  # type: ignore[arg-type]
                                   ping_interval=None)
        return self


class _Via:
    """The CSMS as one connection's handlers see it: what they record is noted with the
    subprotocol of that connection."""

    def __init__(self, csms: "LoopbackCsms", protocol: str) -> None:
        self._csms = csms
        self._protocol = protocol

    def record(self, charger_id: str, action: str, uid: str, payload: dict[str, Any]) -> None:
        self._csms.record(charger_id, action, uid, payload)
        self._csms.protocols[-1] = self._protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._csms, name)


class LoopbackCsms(CountingCsms):
    """`CountingCsms` on loopback speaking only `subprotocols` (a CSMS that refuses a version),
    answering the actions in `slow` only after that many seconds, and noting the subprotocol of
    the link each message came over (`protocols`, in arrival order like `received`)."""

    def __init__(self, *, subprotocols: tuple[str, ...] = ("ocpp1.6", "ocpp2.0.1"),
                 slow: dict[str, float] | None = None) -> None:
        super().__init__()
        self.subprotocols = list(subprotocols)
        self.slow = dict(slow or {})
        self.protocols: list[str] = []

    def record(self, charger_id: str, action: str, uid: str, payload: dict[str, Any]) -> None:
        super().record(charger_id, action, uid, payload)
        self.protocols.append("?")

    async def _handler(self, ws: Any) -> None:
        charger_id = ws.request.path.rsplit("/", 1)[1]
        cp = (_Csms16 if ws.subprotocol == "ocpp1.6" else _Csms201)(charger_id, ws)
        cp.csms = _Via(self, ws.subprotocol)  # type: ignore[assignment]
        self.connects += 1
        self.cps[charger_id] = cp
        if self.slow:
            self._slowed(cp)
        try:
            await cp.start()
        except Exception:  # noqa: BLE001 - the connection closed
            pass

    async def start(self) -> "LoopbackCsms":
        self._server = await serve(self._handler, "127.0.0.1", self.port, subprotocols=self.subprotocols)  # type: ignore[arg-type]
        return self

    def _slowed(self, cp: Any) -> None:
        original = cp.route_message

        async def route(raw: str) -> None:
            try:
                data = json.loads(raw)
            except ValueError:
                data = None
            if isinstance(data, list) and len(data) == 4 and data[0] == 2 and data[2] in self.slow:
                await asyncio.sleep(self.slow[data[2]])
            await original(raw)

        cp.route_message = route


class Timed:
    """Times each call of a charger (`ocpp` ChargePoint): `await timed(cp, request)`."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, float, float]] = []  # (action, sent at (monotonic), seconds to answer)

    async def __call__(self, cp: Any, request: Any) -> Any:
        started = time.monotonic()
        result = await cp.call(request)
        self.answers.append((type(request).__name__, started, time.monotonic() - started))
        return result

    @property
    def slowest(self) -> float:
        return max((a[2] for a in self.answers), default=0.0)


async def wait_for(condition: Any, timeout: float, what: str, step: float = 0.05) -> float:
    """Wait until `condition()` is true; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} not within {timeout} s")
        await asyncio.sleep(step)
    return time.monotonic() - started
