"""OCPP peers for the end-to-end tests, built on the independent `ocpp` package.

* `CsmsServer`: a cloud CSMS on a loopback port (`/ocpp/{charger_id}`), one `ocpp` ChargePoint per
  connection, recording every frame in both directions and answering with fixed, recognisable values.
* `charger(url, version, charger_id)`: an async context manager yielding a charger (an `ocpp`
  ChargePoint on a client WebSocket) whose @on handlers answer CSMS commands with fixed values.

Every frame a peer sends or receives is kept in its `FrameLog`, parsed, so that tests can compare
what one side sent with what the other side got, payload for payload.

Deadlock rule of the `ocpp` package: a handler must never await `call()` on its own connection;
tests issue calls from the test body only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, AsyncIterator, ClassVar
from urllib.parse import unquote

from ocpp import v16, v21, v201
from ocpp.messages import Call, MessageType, validate_payload
from ocpp.routing import on
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed

#: Seconds allowed for one OCPP round trip (the `ocpp` response timeout); outer guards add a margin.
STEP = 5.0

VERSIONS = ("1.6", "2.0.1", "2.1")
V2X = ("2.0.1", "2.1")
SUBPROTOCOL = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1", "2.1": "ocpp2.1"}
VERSION_OF = {sp: v for v, sp in SUBPROTOCOL.items()}
MODULES = {"1.6": v16, "2.0.1": v201, "2.1": v21}

# --- what the test CSMS answers (recognisable, so a local answer by the gateway cannot pass) ---------
CSMS_TIME = "2030-06-15T12:34:56.000Z"
CSMS_INTERVAL = 777
CSMS_TX_ID = 987654
CSMS_GOOD_TAG = "CSMSGOOD"  # every other tag gets "Blocked", a status a local authorizer never invents
CSMS_DT_DATA_16 = "csms-pong"
CSMS_DT_DATA_2X = {"answer": "csms-pong", "n": [1, 2, 3]}

# --- what the test charger answers -----------------------------------------------------------------
CP_DT_DATA_16 = "cp-pong"
CP_DT_DATA_2X = {"cp": "pong", "nested": {"k": True}}
CP_REMOTE_TX_ID = "CP-TX-77"


def utcnow() -> str:
    """Current UTC time in the RFC 3339 form OCPP uses."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    """Parse an OCPP date-time (RFC 3339, `Z` or offset) into an aware datetime."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    assert parsed.tzinfo is not None, f"date-time without a zone: {value!r}"
    return parsed


class RpcError(Exception):
    """The peer answered a CALL with a CALLERROR."""

    def __init__(self, action: str, code: str, description: str, details: Any) -> None:
        super().__init__(f"{action}: CALLERROR {code} {description!r} {details!r}")
        self.action = action
        self.code = code
        self.description = description
        self.details = details


class FrameLog:
    """A connection for an `ocpp` ChargePoint that records every frame, parsed, in both directions."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.sent: list[Any] = []
        self.received: list[Any] = []
        self.sent_raw: list[str | bytes] = []
        self.received_raw: list[str | bytes] = []

    @staticmethod
    def _parse(raw: str | bytes) -> Any:
        try:
            return json.loads(raw)
        except (ValueError, TypeError):
            return raw

    async def recv(self) -> str | bytes:
        raw = await self.ws.recv()
        self.received_raw.append(raw)
        self.received.append(self._parse(raw))
        return raw

    async def send(self, raw: str) -> None:
        self.sent_raw.append(raw)
        self.sent.append(self._parse(raw))
        await self.ws.send(raw)

    # -- queries ---------------------------------------------------------------------------------
    @staticmethod
    def _calls(frames: list[Any], action: str | None) -> list[list[Any]]:
        return [
            f
            for f in frames
            if isinstance(f, list) and len(f) >= 4 and f[0] == 2 and (action is None or f[2] == action)
        ]

    @staticmethod
    def _reply(frames: list[Any], message_id: str) -> list[Any] | None:
        for f in frames:
            if isinstance(f, list) and len(f) >= 3 and f[0] in (3, 4) and f[1] == message_id:
                return f
        return None

    def calls_in(self, action: str | None = None) -> list[list[Any]]:
        """CALL frames this side received (from its peer)."""
        return self._calls(self.received, action)

    def calls_out(self, action: str | None = None) -> list[list[Any]]:
        """CALL frames this side sent."""
        return self._calls(self.sent, action)

    def requests_in(self, action: str | None = None) -> list[tuple[str, Any]]:
        """(action, payload) of every CALL this side received, in order."""
        return [(f[2], f[3]) for f in self.calls_in(action)]

    def exchange_in(self, action: str, index: int = -1) -> tuple[Any, list[Any] | None]:
        """(request payload, our reply frame) of the index-th CALL of `action` we received."""
        calls = self.calls_in(action)
        assert calls, f"no {action} CALL was received; got {[c[2] for c in self.calls_in()]}"
        call = calls[index]
        return call[3], self._reply(self.sent, call[1])

    def exchange_out(self, action: str, index: int = -1) -> tuple[Any, list[Any] | None]:
        """(request payload, the reply frame we got) of the index-th CALL of `action` we sent."""
        calls = self.calls_out(action)
        assert calls, f"no {action} CALL was sent"
        call = calls[index]
        return call[3], self._reply(self.received, call[1])


class _Peer:
    """Helpers shared by every peer class (mixed into an `ocpp` ChargePoint)."""

    log: FrameLog

    async def req(self, payload: Any, timeout: float = STEP + 1) -> Any:
        """`ChargePoint.call()` that raises on CALLERROR, bounded in time."""
        return await asyncio.wait_for(self.call(payload, suppress=False), timeout)  # type: ignore[attr-defined]

    async def raw_call(self, action: str, payload: dict[str, Any], timeout: float = STEP + 1) -> Any:
        """Send a CALL with a raw (camelCase) payload; return the CALLRESULT payload.

        Like `ChargePoint.call()`: the request and the response are validated against the `ocpp`
        package's schemas (a schema-invalid response raises); a CALLERROR raises `RpcError`.
        """
        return await asyncio.wait_for(self._raw_call(action, payload), timeout)

    async def _raw_call(self, action: str, payload: dict[str, Any]) -> Any:
        msg = Call(str(uuid.uuid4()), action, payload)
        await validate_payload(msg, self._ocpp_version)  # type: ignore[attr-defined]
        return await self._exchange(action, msg.unique_id, msg.to_json())

    async def text_call(self, action: str, payload_text: str, timeout: float = STEP + 1) -> Any:
        """Send a CALL whose payload is exactly `payload_text` (byte for byte, not re-serialised);
        return the validated CALLRESULT payload."""
        message_id = str(uuid.uuid4())
        frame = f'[2,"{message_id}","{action}",{payload_text}]'
        return await asyncio.wait_for(self._exchange(action, message_id, frame), timeout)

    async def _exchange(self, action: str, message_id: str, frame: str) -> Any:
        cp: Any = self
        async with cp._call_lock:
            await cp._send(frame)
            response = await cp._get_specific_response(message_id, cp._response_timeout)
        if response.message_type_id == MessageType.CallError:
            raise RpcError(action, response.error_code, response.error_description, response.error_details)
        response.action = action
        await validate_payload(response, cp._ocpp_version)
        return response.payload


# ============================================================================ CSMS side


class Csms16(_Peer, v16.ChargePoint):
    @on("BootNotification")
    def csms_boot(self, **_: Any) -> Any:
        return v16.call_result.BootNotification(current_time=CSMS_TIME, interval=CSMS_INTERVAL, status="Accepted")

    @on("Heartbeat")
    def csms_heartbeat(self, **_: Any) -> Any:
        return v16.call_result.Heartbeat(current_time=CSMS_TIME)

    @on("StatusNotification")
    def csms_status(self, **_: Any) -> Any:
        return v16.call_result.StatusNotification()

    @on("Authorize")
    def csms_authorize(self, id_tag: str, **_: Any) -> Any:
        status = "Accepted" if id_tag == CSMS_GOOD_TAG else "Blocked"
        return v16.call_result.Authorize(id_tag_info={"status": status})

    @on("StartTransaction")
    def csms_start(self, **_: Any) -> Any:
        return v16.call_result.StartTransaction(transaction_id=CSMS_TX_ID, id_tag_info={"status": "Accepted"})

    @on("MeterValues")
    def csms_meter(self, **_: Any) -> Any:
        return v16.call_result.MeterValues()

    @on("StopTransaction")
    def csms_stop(self, **_: Any) -> Any:
        return v16.call_result.StopTransaction(id_tag_info={"status": "Accepted"})

    @on("DataTransfer")
    def csms_data_transfer(self, **_: Any) -> Any:
        return v16.call_result.DataTransfer(status="Accepted", data=CSMS_DT_DATA_16)

    @on("FirmwareStatusNotification")
    def csms_fw(self, **_: Any) -> Any:
        return v16.call_result.FirmwareStatusNotification()

    @on("DiagnosticsStatusNotification")
    def csms_diag(self, **_: Any) -> Any:
        return v16.call_result.DiagnosticsStatusNotification()


class _Csms2x(_Peer):
    _call_result: Any

    @on("BootNotification")
    def csms_boot(self, **_: Any) -> Any:
        return self._call_result.BootNotification(current_time=CSMS_TIME, interval=CSMS_INTERVAL, status="Accepted")

    @on("Heartbeat")
    def csms_heartbeat(self, **_: Any) -> Any:
        return self._call_result.Heartbeat(current_time=CSMS_TIME)

    @on("StatusNotification")
    def csms_status(self, **_: Any) -> Any:
        return self._call_result.StatusNotification()

    @on("Authorize")
    def csms_authorize(self, id_token: dict[str, Any], **_: Any) -> Any:
        status = "Accepted" if id_token.get("id_token") == CSMS_GOOD_TAG else "Blocked"
        return self._call_result.Authorize(id_token_info={"status": status})

    @on("TransactionEvent")
    def csms_transaction_event(self, event_type: str, **_: Any) -> Any:
        if event_type == "Started":
            return self._call_result.TransactionEvent(id_token_info={"status": "Accepted"}, charging_priority=3)
        if event_type == "Updated":
            return self._call_result.TransactionEvent(total_cost=1.25)
        return self._call_result.TransactionEvent(total_cost=2.5)

    @on("MeterValues")
    def csms_meter(self, **_: Any) -> Any:
        return self._call_result.MeterValues()

    @on("DataTransfer")
    def csms_data_transfer(self, **_: Any) -> Any:
        return self._call_result.DataTransfer(status="Accepted", data=CSMS_DT_DATA_2X)

    @on("NotifyReport")
    def csms_notify_report(self, **_: Any) -> Any:
        return self._call_result.NotifyReport()

    @on("NotifyEvent")
    def csms_notify_event(self, **_: Any) -> Any:
        return self._call_result.NotifyEvent()

    @on("SecurityEventNotification")
    def csms_security_event(self, **_: Any) -> Any:
        return self._call_result.SecurityEventNotification()


class Csms201(_Csms2x, v201.ChargePoint):
    pass


class Csms21(_Csms2x, v21.ChargePoint):
    pass


CSMS_CLASSES: dict[str, type] = {"1.6": Csms16, "2.0.1": Csms201, "2.1": Csms21}


@dataclass
class CsmsSession:
    """One WebSocket connection the CSMS accepted (made by the gateway for one charger)."""

    charger_id: str
    path: str
    subprotocol: str | None
    offered: list[str]
    headers: Headers
    log: FrameLog
    cp: Any
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class CsmsServer:
    """A CSMS on a loopback port; `url` is the value for the gateway's `[upstream].url`."""

    def __init__(self, subprotocols: tuple[str, ...] = ("ocpp2.1", "ocpp2.0.1", "ocpp1.6")) -> None:
        self.subprotocols = list(subprotocols)
        self.sessions: dict[str, list[CsmsSession]] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._server: Any = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    def _select(self, _conn: ServerConnection, offered: Any) -> str | None:
        # first of the client's preferences that we support; None completes the handshake without
        # a subprotocol and the handler closes (OCPP-J §3.2)
        for proto in offered:
            if proto in self.subprotocols:
                return str(proto)
        return None

    def _event(self, charger_id: str) -> asyncio.Event:
        return self._events.setdefault(charger_id, asyncio.Event())

    async def _handler(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        path = request.path
        charger_id = unquote(path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])
        offered = [
            p.strip() for h in request.headers.get_all("Sec-WebSocket-Protocol") for p in h.split(",") if p.strip()
        ]
        log = FrameLog(ws)
        version = VERSION_OF.get(ws.subprotocol or "")
        cp = CSMS_CLASSES[version](charger_id, log, response_timeout=STEP) if version else None
        if cp is not None:
            cp.log = log
        session = CsmsSession(charger_id, path, ws.subprotocol, offered, request.headers, log, cp)
        self.sessions.setdefault(charger_id, []).append(session)
        self._event(charger_id).set()
        try:
            if cp is None:
                await ws.close()
                return
            await cp.start()
        except ConnectionClosed:
            pass
        finally:
            session.closed.set()

    async def wait_session(self, charger_id: str, timeout: float = STEP) -> CsmsSession:
        """The first upstream connection made for `charger_id` (waits for it up to `timeout`)."""
        try:
            await asyncio.wait_for(self._event(charger_id).wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"the CSMS saw no upstream connection for {charger_id!r} within {timeout}s "
                f"(connections seen: {sorted(self.sessions)})"
            ) from None
        return self.sessions[charger_id][0]

    async def __aenter__(self) -> "CsmsServer":
        self._server = await serve(
            self._handler,
            "127.0.0.1",
            0,
            subprotocols=self.subprotocols,  # type: ignore[arg-type]
            select_subprotocol=self._select,  # type: ignore[arg-type]
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._server.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), STEP)


# ============================================================================ charger side


class Charger16(_Peer, v16.ChargePoint):
    config: ClassVar[dict[str, str]] = {"HeartbeatInterval": "60"}

    @on("RemoteStartTransaction")
    def cp_remote_start(self, **_: Any) -> Any:
        return v16.call_result.RemoteStartTransaction(status="Accepted")

    @on("RemoteStopTransaction")
    def cp_remote_stop(self, **_: Any) -> Any:
        return v16.call_result.RemoteStopTransaction(status="Accepted")

    @on("Reset")
    def cp_reset(self, **_: Any) -> Any:
        return v16.call_result.Reset(status="Accepted")

    @on("ChangeConfiguration")
    def cp_change_configuration(self, **_: Any) -> Any:
        return v16.call_result.ChangeConfiguration(status="RebootRequired")

    @on("GetConfiguration")
    def cp_get_configuration(self, key: list[str] | None = None, **_: Any) -> Any:
        keys = key if key is not None else list(self.config)
        known = [{"key": k, "readonly": False, "value": self.config[k]} for k in keys if k in self.config]
        unknown = [k for k in keys if k not in self.config]
        return v16.call_result.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on("TriggerMessage")
    def cp_trigger(self, **_: Any) -> Any:
        return v16.call_result.TriggerMessage(status="Accepted")

    @on("UnlockConnector")
    def cp_unlock(self, **_: Any) -> Any:
        return v16.call_result.UnlockConnector(status="Unlocked")

    @on("DataTransfer")
    def cp_data_transfer(self, **_: Any) -> Any:
        return v16.call_result.DataTransfer(status="Accepted", data=CP_DT_DATA_16)

    @on("ChangeAvailability")
    def cp_change_availability(self, **_: Any) -> Any:
        return v16.call_result.ChangeAvailability(status="Accepted")


class _Charger2x(_Peer):
    _call_result: Any

    @on("RequestStartTransaction")
    def cp_request_start(self, **_: Any) -> Any:
        return self._call_result.RequestStartTransaction(status="Accepted", transaction_id=CP_REMOTE_TX_ID)

    @on("RequestStopTransaction")
    def cp_request_stop(self, **_: Any) -> Any:
        return self._call_result.RequestStopTransaction(status="Accepted")

    @on("Reset")
    def cp_reset(self, **_: Any) -> Any:
        return self._call_result.Reset(status="Scheduled")

    @on("SetVariables")
    def cp_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        results = [
            {
                "attributeStatus": "RebootRequired",
                "component": {"name": d["component"]["name"]},
                "variable": {"name": d["variable"]["name"]},
            }
            for d in set_variable_data
        ]
        return self._call_result.SetVariables(set_variable_result=results)

    @on("GetVariables")
    def cp_get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        results = [
            {
                "attributeStatus": "Accepted",
                "attributeValue": "60",
                "component": {"name": d["component"]["name"]},
                "variable": {"name": d["variable"]["name"]},
            }
            for d in get_variable_data
        ]
        return self._call_result.GetVariables(get_variable_result=results)

    @on("TriggerMessage")
    def cp_trigger(self, **_: Any) -> Any:
        return self._call_result.TriggerMessage(status="Accepted")

    @on("UnlockConnector")
    def cp_unlock(self, **_: Any) -> Any:
        return self._call_result.UnlockConnector(status="Unlocked")

    @on("DataTransfer")
    def cp_data_transfer(self, **_: Any) -> Any:
        return self._call_result.DataTransfer(status="Accepted", data=CP_DT_DATA_2X)

    @on("ChangeAvailability")
    def cp_change_availability(self, **_: Any) -> Any:
        return self._call_result.ChangeAvailability(status="Accepted")


class Charger201(_Charger2x, v201.ChargePoint):
    pass


class Charger21(_Charger2x, v21.ChargePoint):
    pass


CHARGER_CLASSES: dict[str, type] = {"1.6": Charger16, "2.0.1": Charger201, "2.1": Charger21}


async def _serve_quietly(cp: Any) -> None:
    with contextlib.suppress(ConnectionClosed):
        await cp.start()


@contextlib.asynccontextmanager
async def charger(url: str, version: str, charger_id: str) -> AsyncIterator[Any]:
    """Connect a charger of OCPP `version` to `url`; yields its ChargePoint (with `.ws` and `.log`)."""
    ws = await asyncio.wait_for(
        connect(url, subprotocols=[SUBPROTOCOL[version]], open_timeout=STEP),  # type: ignore[list-item]
        STEP + 1,
    )
    log = FrameLog(ws)
    cp = CHARGER_CLASSES[version](charger_id, log, response_timeout=STEP)
    cp.log = log
    cp.ws = ws
    task = asyncio.create_task(_serve_quietly(cp))
    try:
        yield cp
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(ws.close(), STEP)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, STEP)


# ============================================================================ request builders


def boot_request(version: str) -> Any:
    m = MODULES[version]
    if version == "1.6":
        return m.call.BootNotification(charge_point_vendor="E2EVendor", charge_point_model="E2EModel")
    return m.call.BootNotification(charging_station={"model": "E2EModel", "vendorName": "E2EVendor"}, reason="PowerUp")


def heartbeat_request(version: str) -> Any:
    return MODULES[version].call.Heartbeat()


def status_request(version: str, status: str = "Available") -> Any:
    m = MODULES[version]
    if version == "1.6":
        return m.call.StatusNotification(connector_id=1, error_code="NoError", status=status, timestamp=utcnow())
    return m.call.StatusNotification(timestamp=utcnow(), connector_status=status, evse_id=1, connector_id=1)


def authorize_request(version: str, tag: str) -> Any:
    m = MODULES[version]
    if version == "1.6":
        return m.call.Authorize(id_tag=tag)
    return m.call.Authorize(id_token={"idToken": tag, "type": "ISO14443"})


def auth_status(version: str, result: Any) -> str:
    """The authorization status in an Authorize (or StartTransaction) result dataclass."""
    info = result.id_tag_info if version == "1.6" else result.id_token_info
    return str(info["status"])


def energy_meter_value(wh: float, context: str = "Sample.Periodic") -> dict[str, Any]:
    """One meterValue with an energy register sample, valid in 1.6 (string value) and 2.x (number)."""
    return {
        "timestamp": utcnow(),
        "sampledValue": [{"value": wh, "context": context, "measurand": "Energy.Active.Import.Register"}],
    }


def meter_value_16(wh: int, context: str = "Sample.Periodic") -> dict[str, Any]:
    return {
        "timestamp": utcnow(),
        "sampledValue": [
            {"value": str(wh), "context": context, "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
        ],
    }


def data_transfer_request(version: str) -> Any:
    m = MODULES[version]
    if version == "1.6":
        return m.call.DataTransfer(vendor_id="com.example.e2e", message_id="ping", data="hello")
    return m.call.DataTransfer(vendor_id="com.example.e2e", message_id="ping", data={"hello": [1, 2, {"x": "y"}]})
