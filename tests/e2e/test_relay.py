"""End to end, relay mode: charger (ocpp package) -> real gateway process -> CSMS (ocpp package).

Everything runs on 127.0.0.1 with real WebSockets. The CSMS answers with recognisable values
(`peers.CSMS_*`), so an answer the gateway made up locally cannot pass for the CSMS's. Each test
compares, frame by frame, what one peer sent with what the other peer received.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Callable

import pytest

from tests.e2e.peers import (
    CP_DT_DATA_16,
    CP_DT_DATA_2X,
    CP_REMOTE_TX_ID,
    CSMS_DT_DATA_16,
    CSMS_DT_DATA_2X,
    CSMS_GOOD_TAG,
    CSMS_INTERVAL,
    CSMS_TIME,
    CSMS_TX_ID,
    MODULES,
    SUBPROTOCOL,
    V2X,
    VERSIONS,
    CsmsServer,
    CsmsSession,
    FrameLog,
    auth_status,
    authorize_request,
    boot_request,
    charger,
    data_transfer_request,
    energy_meter_value,
    heartbeat_request,
    meter_value_16,
    status_request,
    utcnow,
)
from tests.harness import GatewayProcess

pytestmark = pytest.mark.timeout(60)


async def start_gateway(factory: Callable[..., GatewayProcess], config: dict[str, Any]) -> GatewayProcess:
    """Start the gateway without blocking the event loop (the CSMS runs on it)."""
    return await asyncio.wait_for(asyncio.to_thread(factory, config), 30)


async def relay_ready(csms: CsmsServer, cp: Any, charger_id: str, version: str) -> CsmsSession:
    """Wait for the gateway's upstream connection for `charger_id` and check its identity and version."""
    assert cp.ws.subprotocol == SUBPROTOCOL[version], "the gateway did not accept the charger's only subprotocol"
    session = await csms.wait_session(charger_id)
    assert session.path == f"/ocpp/{charger_id}", f"upstream path {session.path!r}"
    assert session.subprotocol == SUBPROTOCOL[version], (
        f"upstream negotiated {session.subprotocol!r} (gateway offered {session.offered}), "
        f"the charger negotiated {SUBPROTOCOL[version]!r}"
    )
    return session


def assert_relayed_up(charger_log: FrameLog, csms_log: FrameLog, action: str, index: int = -1) -> Any:
    """The index-th `action` CALL of the charger reached the CSMS unchanged and the CSMS's CALLRESULT
    came back to the charger unchanged. Returns the CALLRESULT payload."""
    sent, got = charger_log.exchange_out(action, index)
    received, answered = csms_log.exchange_in(action, index)
    assert received == sent, f"{action}: the CSMS got {received!r}, the charger sent {sent!r}"
    assert answered is not None and answered[0] == 3, f"{action}: the CSMS answered {answered!r}"
    assert got is not None, f"{action}: the charger got no answer"
    assert got[0] == 3, f"{action}: the charger got {got!r} instead of the CSMS's CALLRESULT {answered!r}"
    assert got[2] == answered[2], f"{action}: the charger got {got[2]!r}, the CSMS answered {answered[2]!r}"
    return got[2]


def assert_relayed_down(csms_log: FrameLog, charger_log: FrameLog, action: str) -> Any:
    """The CSMS's last `action` CALL reached the charger unchanged and the charger's CALLRESULT came
    back to the CSMS unchanged. Returns the CALLRESULT payload."""
    sent, got = csms_log.exchange_out(action)
    matches = [
        (call, charger_log._reply(charger_log.sent, call[1]))
        for call in charger_log.calls_in(action)
        if call[3] == sent
    ]
    assert matches, (
        f"{action}: the charger never received the CSMS's request {sent!r}; "
        f"it got {charger_log.requests_in(action)!r}"
    )
    _, answered = matches[-1]
    assert answered is not None and answered[0] == 3, f"{action}: the charger answered {answered!r}"
    assert got is not None and got[0] == 3, f"{action}: the CSMS got {got!r} instead of {answered!r}"
    assert got[2] == answered[2], f"{action}: the CSMS got {got[2]!r}, the charger answered {answered[2]!r}"
    return got[2]


def assert_exactly_once_in_order(charger_log: FrameLog, csms_log: FrameLog) -> None:
    sent = [(f[2], f[3]) for f in charger_log.calls_out()]
    assert csms_log.requests_in() == sent, "the CSMS did not get the charger's requests exactly once, in order"


# ----------------------------------------------------------------------------------- OCPP 1.6


async def test_relay_v16_charger_requests_reach_csms_and_csms_answers_reach_charger(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    cid = "RLY16-UP"
    v = "1.6"
    call = MODULES[v].call
    async with CsmsServer() as csms:
        gw = await start_gateway(gateway_factory, {"upstream": {"url": csms.url}})
        try:
            async with charger(gw.url(cid), v, cid) as cp:
                # like a real charger: BootNotification right after the WebSocket opened, while the
                # gateway may still be dialling the CSMS; the answer must still be the CSMS's
                boot = await cp.req(boot_request(v))
                assert (boot.status, boot.interval, boot.current_time) == ("Accepted", CSMS_INTERVAL, CSMS_TIME)
                session = await relay_ready(csms, cp, cid, v)
                assert_relayed_up(cp.log, session.log, "BootNotification")

                hb = await cp.req(heartbeat_request(v))
                assert hb.current_time == CSMS_TIME
                assert_relayed_up(cp.log, session.log, "Heartbeat")

                await cp.req(status_request(v, "Available"))
                assert_relayed_up(cp.log, session.log, "StatusNotification")

                assert auth_status(v, await cp.req(authorize_request(v, CSMS_GOOD_TAG))) == "Accepted"
                assert_relayed_up(cp.log, session.log, "Authorize")
                assert auth_status(v, await cp.req(authorize_request(v, "NOT-AT-CSMS"))) == "Blocked"
                assert_relayed_up(cp.log, session.log, "Authorize")

                start = await cp.req(
                    call.StartTransaction(connector_id=1, id_tag=CSMS_GOOD_TAG, meter_start=1000, timestamp=utcnow())
                )
                assert start.transaction_id == CSMS_TX_ID, "the charger must get the CSMS's transactionId"
                assert start.id_tag_info == {"status": "Accepted"}
                assert_relayed_up(cp.log, session.log, "StartTransaction")

                await cp.req(call.StatusNotification(connector_id=1, error_code="NoError", status="Charging"))
                tx = start.transaction_id
                await cp.req(call.MeterValues(connector_id=1, transaction_id=tx, meter_value=[meter_value_16(1500)]))
                assert_relayed_up(cp.log, session.log, "MeterValues")

                stop = await cp.req(
                    call.StopTransaction(
                        meter_stop=2000,
                        timestamp=utcnow(),
                        transaction_id=start.transaction_id,
                        reason="Local",
                        id_tag=CSMS_GOOD_TAG,
                        transaction_data=[meter_value_16(2000, "Transaction.End")],
                    )
                )
                assert stop.id_tag_info == {"status": "Accepted"}
                assert_relayed_up(cp.log, session.log, "StopTransaction")

                dt = await cp.req(data_transfer_request(v))
                assert (dt.status, dt.data) == ("Accepted", CSMS_DT_DATA_16)
                assert_relayed_up(cp.log, session.log, "DataTransfer")

                # the CSMS saw its own transaction id on every transaction message
                (_, mv), = session.log.requests_in("MeterValues")
                assert mv["transactionId"] == CSMS_TX_ID
                (_, st), = session.log.requests_in("StopTransaction")
                assert st["transactionId"] == CSMS_TX_ID and st["meterStop"] == 2000
                assert_exactly_once_in_order(cp.log, session.log)
        finally:
            print(gw.logs()[-20000:])


async def test_relay_v16_csms_commands_reach_charger_and_answers_reach_csms(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    cid = "RLY16-DOWN"
    v = "1.6"
    call = MODULES[v].call
    async with CsmsServer() as csms:
        gw = await start_gateway(gateway_factory, {"upstream": {"url": csms.url}})
        try:
            async with charger(gw.url(cid), v, cid) as cp:
                session = await relay_ready(csms, cp, cid, v)
                boot = await cp.req(boot_request(v))
                assert boot.interval == CSMS_INTERVAL
                csms_cp = session.cp

                r = await csms_cp.req(call.RemoteStartTransaction(id_tag="REMOTE1", connector_id=1))
                assert r.status == "Accepted"
                assert assert_relayed_down(session.log, cp.log, "RemoteStartTransaction") == {"status": "Accepted"}

                r = await csms_cp.req(call.Reset(type="Soft"))
                assert r.status == "Accepted"
                assert_relayed_down(session.log, cp.log, "Reset")

                r = await csms_cp.req(call.ChangeConfiguration(key="HeartbeatInterval", value="60"))
                assert r.status == "RebootRequired"
                assert assert_relayed_down(session.log, cp.log, "ChangeConfiguration") == {"status": "RebootRequired"}

                r = await csms_cp.req(call.GetConfiguration(key=["HeartbeatInterval", "NoSuchKey"]))
                assert r.configuration_key == [{"key": "HeartbeatInterval", "readonly": False, "value": "60"}]
                assert r.unknown_key == ["NoSuchKey"]
                assert assert_relayed_down(session.log, cp.log, "GetConfiguration") == {
                    "configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "60"}],
                    "unknownKey": ["NoSuchKey"],
                }

                r = await csms_cp.req(call.TriggerMessage(requested_message="StatusNotification", connector_id=1))
                assert r.status == "Accepted"
                assert_relayed_down(session.log, cp.log, "TriggerMessage")

                r = await csms_cp.req(call.UnlockConnector(connector_id=1))
                assert r.status == "Unlocked"
                assert_relayed_down(session.log, cp.log, "UnlockConnector")

                r = await csms_cp.req(call.DataTransfer(vendor_id="com.example.csms", message_id="ping", data="hi"))
                assert (r.status, r.data) == ("Accepted", CP_DT_DATA_16)
                assert assert_relayed_down(session.log, cp.log, "DataTransfer") == {
                    "status": "Accepted",
                    "data": CP_DT_DATA_16,
                }
        finally:
            print(gw.logs()[-20000:])


# ----------------------------------------------------------------------------------- OCPP 2.0.1 / 2.1


@pytest.mark.parametrize("v", V2X)
async def test_relay_v2x_charger_requests_reach_csms_and_csms_answers_reach_charger(
    gateway_factory: Callable[..., GatewayProcess], v: str
) -> None:
    cid = f"RLY{v.replace('.', '')}-UP"
    call = MODULES[v].call
    async with CsmsServer() as csms:
        gw = await start_gateway(gateway_factory, {"upstream": {"url": csms.url}})
        try:
            async with charger(gw.url(cid), v, cid) as cp:
                # like a real charger: BootNotification right after the WebSocket opened, while the
                # gateway may still be dialling the CSMS; the answer must still be the CSMS's
                boot = await cp.req(boot_request(v))
                assert (boot.status, boot.interval, boot.current_time) == ("Accepted", CSMS_INTERVAL, CSMS_TIME)
                session = await relay_ready(csms, cp, cid, v)
                assert_relayed_up(cp.log, session.log, "BootNotification")

                hb = await cp.req(heartbeat_request(v))
                assert hb.current_time == CSMS_TIME
                assert_relayed_up(cp.log, session.log, "Heartbeat")

                await cp.req(status_request(v, "Available"))
                assert_relayed_up(cp.log, session.log, "StatusNotification")

                assert auth_status(v, await cp.req(authorize_request(v, CSMS_GOOD_TAG))) == "Accepted"
                assert_relayed_up(cp.log, session.log, "Authorize")
                assert auth_status(v, await cp.req(authorize_request(v, "NOT-AT-CSMS"))) == "Blocked"
                assert_relayed_up(cp.log, session.log, "Authorize")

                tx = f"TX-{cid}"
                started = await cp.req(
                    call.TransactionEvent(
                        event_type="Started",
                        timestamp=utcnow(),
                        trigger_reason="Authorized",
                        seq_no=0,
                        transaction_info={"transactionId": tx, "chargingState": "Charging"},
                        id_token={"idToken": CSMS_GOOD_TAG, "type": "ISO14443"},
                        evse={"id": 1, "connectorId": 1},
                        meter_value=[energy_meter_value(1000.0, "Transaction.Begin")],
                    )
                )
                assert started.id_token_info == {"status": "Accepted"} and started.charging_priority == 3
                assert_relayed_up(cp.log, session.log, "TransactionEvent")

                updated = await cp.req(
                    call.TransactionEvent(
                        event_type="Updated",
                        timestamp=utcnow(),
                        trigger_reason="MeterValuePeriodic",
                        seq_no=1,
                        transaction_info={"transactionId": tx, "chargingState": "Charging"},
                        meter_value=[energy_meter_value(1500.5)],
                    )
                )
                assert updated.total_cost == 1.25
                assert_relayed_up(cp.log, session.log, "TransactionEvent")

                ended = await cp.req(
                    call.TransactionEvent(
                        event_type="Ended",
                        timestamp=utcnow(),
                        trigger_reason="StopAuthorized",
                        seq_no=2,
                        transaction_info={"transactionId": tx, "stoppedReason": "Local"},
                        evse={"id": 1, "connectorId": 1},
                        meter_value=[energy_meter_value(2000.0, "Transaction.End")],
                    )
                )
                assert ended.total_cost == 2.5
                assert_relayed_up(cp.log, session.log, "TransactionEvent")

                events = [p for _, p in session.log.requests_in("TransactionEvent")]
                assert [(e["eventType"], e["seqNo"], e["transactionInfo"]["transactionId"]) for e in events] == [
                    ("Started", 0, tx),
                    ("Updated", 1, tx),
                    ("Ended", 2, tx),
                ]
                assert events[1]["meterValue"][0]["sampledValue"][0]["value"] == 1500.5

                dt = await cp.req(data_transfer_request(v))
                assert (dt.status, dt.data) == ("Accepted", CSMS_DT_DATA_2X)
                assert_relayed_up(cp.log, session.log, "DataTransfer")

                assert_exactly_once_in_order(cp.log, session.log)
        finally:
            print(gw.logs()[-20000:])


@pytest.mark.parametrize("v", V2X)
async def test_relay_v2x_csms_commands_reach_charger_and_answers_reach_csms(
    gateway_factory: Callable[..., GatewayProcess], v: str
) -> None:
    cid = f"RLY{v.replace('.', '')}-DOWN"
    call = MODULES[v].call
    comp_var = {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}
    async with CsmsServer() as csms:
        gw = await start_gateway(gateway_factory, {"upstream": {"url": csms.url}})
        try:
            async with charger(gw.url(cid), v, cid) as cp:
                session = await relay_ready(csms, cp, cid, v)
                boot = await cp.req(boot_request(v))
                assert boot.interval == CSMS_INTERVAL
                csms_cp = session.cp

                r = await csms_cp.req(
                    call.RequestStartTransaction(
                        id_token={"idToken": "REMOTE1", "type": "ISO14443"}, remote_start_id=4711, evse_id=1
                    )
                )
                assert (r.status, r.transaction_id) == ("Accepted", CP_REMOTE_TX_ID)
                assert assert_relayed_down(session.log, cp.log, "RequestStartTransaction") == {
                    "status": "Accepted",
                    "transactionId": CP_REMOTE_TX_ID,
                }

                r = await csms_cp.req(call.Reset(type="OnIdle"))
                assert r.status == "Scheduled"
                assert assert_relayed_down(session.log, cp.log, "Reset") == {"status": "Scheduled"}

                r = await csms_cp.req(call.SetVariables(set_variable_data=[{"attributeValue": "60", **comp_var}]))
                assert assert_relayed_down(session.log, cp.log, "SetVariables") == {
                    "setVariableResult": [{"attributeStatus": "RebootRequired", **comp_var}]
                }
                assert r.set_variable_result[0]["attribute_status"] == "RebootRequired"

                r = await csms_cp.req(call.GetVariables(get_variable_data=[comp_var]))
                assert assert_relayed_down(session.log, cp.log, "GetVariables") == {
                    "getVariableResult": [{"attributeStatus": "Accepted", "attributeValue": "60", **comp_var}]
                }
                assert r.get_variable_result[0]["attribute_value"] == "60"

                r = await csms_cp.req(
                    call.TriggerMessage(requested_message="StatusNotification", evse={"id": 1, "connectorId": 1})
                )
                assert r.status == "Accepted"
                assert_relayed_down(session.log, cp.log, "TriggerMessage")

                r = await csms_cp.req(call.UnlockConnector(evse_id=1, connector_id=1))
                assert r.status == "Unlocked"
                assert_relayed_down(session.log, cp.log, "UnlockConnector")

                r = await csms_cp.req(
                    call.DataTransfer(vendor_id="com.example.csms", message_id="ping", data={"q": [1, "two"]})
                )
                assert (r.status, r.data) == ("Accepted", CP_DT_DATA_2X)
                assert assert_relayed_down(session.log, cp.log, "DataTransfer") == {
                    "status": "Accepted",
                    "data": CP_DT_DATA_2X,
                }
        finally:
            print(gw.logs()[-20000:])


# ----------------------------------------------------------------------------------- upstream credentials


@pytest.mark.parametrize("v", VERSIONS)
async def test_relay_upstream_basic_auth_uses_charger_identity_and_configured_password(
    gateway_factory: Callable[..., GatewayProcess], v: str
) -> None:
    cid = f"CP1-{v.replace('.', '')}"
    other = f"CP2-{v.replace('.', '')}"  # no upstream_password configured
    async with CsmsServer() as csms:
        gw = await start_gateway(
            gateway_factory,
            {"upstream": {"url": csms.url}, "chargers": {cid: {"upstream_password": "s3cret"}}},
        )
        try:
            async with charger(gw.url(cid), v, cid) as cp:
                session = await relay_ready(csms, cp, cid, v)
                header = session.headers.get("Authorization")
                assert header is not None, f"no Authorization header upstream: {list(session.headers.raw_items())}"
                scheme, _, token = header.partition(" ")
                assert scheme.lower() == "basic", header
                assert base64.b64decode(token).decode() == f"{cid}:s3cret"
                # and the relay works under that identity
                boot = await cp.req(boot_request(v))
                assert boot.interval == CSMS_INTERVAL

            async with charger(gw.url(other), v, other) as cp2:
                session2 = await relay_ready(csms, cp2, other, v)
                header2 = session2.headers.get("Authorization")
                if header2 is not None:
                    _, _, token2 = header2.partition(" ")
                    assert "s3cret" not in base64.b64decode(token2).decode(errors="replace"), (
                        "another charger's upstream password was presented for a charger without one"
                    )
        finally:
            print(gw.logs()[-20000:])



# ----------------------------------------------------------------------------------- payload bytes

#: DataTransfer payloads written by hand: odd spacing, escapes (`\u00e9`, `\/`), `1.50`, a 20-digit
#: integer, vendor customData. Any json.loads/json.dumps round trip in the gateway changes these bytes.
RAW_DT_16 = '{ "vendorId" : "com.example.e2e", "messageId":"raw",  "data":"caf\\u00e9 \\/ 1.50"}'
RAW_DT_2X = (
    '{"vendorId": "com.example.e2e" ,"messageId":"raw", "data": {"value": 1.50, "big": 12345678901234567890,'
    ' "s": "caf\\u00e9 \\/"}, "customData": {"vendorId": "com.example.meter", "signed": "AbC+/="}}'
)


def raw_calls(raw_frames: list[Any], action: str) -> list[str]:
    texts = [r.decode() if isinstance(r, bytes) else r for r in raw_frames]
    return [t for t in texts if t.lstrip().startswith("[2") and f'"{action}"' in t]


@pytest.mark.parametrize("v", VERSIONS)
async def test_relay_forwards_payload_bytes_untouched_both_ways(
    gateway_factory: Callable[..., GatewayProcess], v: str
) -> None:
    cid = f"RLY{v.replace('.', '')}-RAW"
    payload_text = RAW_DT_16 if v == "1.6" else RAW_DT_2X
    async with CsmsServer() as csms:
        gw = await start_gateway(gateway_factory, {"upstream": {"url": csms.url}})
        try:
            async with charger(gw.url(cid), v, cid) as cp:
                await cp.req(boot_request(v))
                session = await relay_ready(csms, cp, cid, v)

                # charger -> CSMS
                answer = await cp.text_call("DataTransfer", payload_text)
                assert answer["status"] == "Accepted"
                arrived = raw_calls(session.log.received_raw, "DataTransfer")
                assert len(arrived) == 1, arrived
                assert arrived[0].rstrip().endswith(payload_text + "]"), (
                    f"the CSMS got {arrived[0]!r}; the charger's payload was {payload_text!r}"
                )

                # CSMS -> charger
                answer = await session.cp.text_call("DataTransfer", payload_text)
                assert answer["status"] == "Accepted"
                arrived = raw_calls(cp.log.received_raw, "DataTransfer")
                assert len(arrived) == 1, arrived
                assert arrived[0].rstrip().endswith(payload_text + "]"), (
                    f"the charger got {arrived[0]!r}; the CSMS's payload was {payload_text!r}"
                )
        finally:
            print(gw.logs()[-20000:])
