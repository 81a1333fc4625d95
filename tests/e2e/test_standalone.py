"""End to end, standalone mode (no upstream URL): the real gateway process is the chargers' CSMS.

Chargers are `ocpp` package ChargePoints on loopback WebSockets. The `ocpp` package validates every
response against the official JSON schemas, so a call that returns proves the gateway answered with a
CALLRESULT that conforms to the schema of that action and version.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import pytest

from tests.e2e.peers import (
    MODULES,
    STEP,
    SUBPROTOCOL,
    V2X,
    VERSIONS,
    RpcError,
    auth_status,
    authorize_request,
    boot_request,
    charger,
    data_transfer_request,
    energy_meter_value,
    heartbeat_request,
    meter_value_16,
    parse_time,
    status_request,
    utcnow,
)
from tests.harness import GatewayProcess

pytestmark = pytest.mark.timeout(60)

HEARTBEAT = 123
DATA_TRANSFER_STATUSES = {"Accepted", "Rejected", "UnknownMessageId", "UnknownVendorId"}
SITE_CONFIG: dict[str, Any] = {
    "local": {"heartbeat_interval": HEARTBEAT},
    "auth": {"unknown_id_tags": "reject", "local_list": ["GOODTAG"]},
}


@pytest.fixture(scope="module")
def site_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One standalone gateway shared by this module's tests (each test uses its own charger id):
    heartbeat interval 123, unknown id tags rejected, local list ["GOODTAG"]."""
    gw = GatewayProcess(tmp_path_factory.mktemp("standalone"), SITE_CONFIG, name="site").start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def open_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A standalone gateway whose policy accepts unknown id tags."""
    config = {"auth": {"unknown_id_tags": "accept"}}
    gw = GatewayProcess(tmp_path_factory.mktemp("standalone-open"), config, name="open").start()
    yield gw
    gw.stop()


def assert_recent(value: str, what: str) -> None:
    """A CSMS time must be a zoned RFC 3339 date-time close to the real time (chargers sync to it)."""
    when = parse_time(value)
    skew = abs(datetime.now(timezone.utc) - when)
    assert skew < timedelta(minutes=2), f"{what} {value!r} is {skew} away from now"


async def booted(cp: Any, version: str) -> Any:
    boot = await cp.req(boot_request(version))
    assert boot.status == "Accepted", f"BootNotification answered {boot!r}"
    return boot


# ----------------------------------------------------------------------------------- core messages


@pytest.mark.parametrize("v", VERSIONS)
async def test_standalone_boot_heartbeat_status(site_gw: GatewayProcess, v: str) -> None:
    cid = f"SA{v.replace('.', '')}-BOOT"
    gw = site_gw
    try:
        async with charger(gw.url(cid), v, cid) as cp:
            assert cp.ws.subprotocol == SUBPROTOCOL[v]
            boot = await cp.req(boot_request(v))
            assert boot.status == "Accepted"
            assert boot.interval == HEARTBEAT, "interval must be [local].heartbeat_interval"
            assert_recent(boot.current_time, "BootNotification currentTime")

            hb = await cp.req(heartbeat_request(v))
            assert hb.current_time, "Heartbeat must carry currentTime"
            assert_recent(hb.current_time, "Heartbeat currentTime")

            for status in ("Available", "Occupied" if v != "1.6" else "Preparing"):
                await cp.req(status_request(v, status))
            # the answer is the schema's (empty) StatusNotification response, not a CALLERROR
            _, reply = cp.log.exchange_out("StatusNotification")
            assert reply is not None and reply[0] == 3 and reply[2] == {}
    finally:
        print(gw.logs()[-20000:])


# ----------------------------------------------------------------------------------- authorization


@pytest.mark.parametrize("v", VERSIONS)
async def test_standalone_authorize_from_local_list_rejects_unknown(site_gw: GatewayProcess, v: str) -> None:
    cid = f"SA{v.replace('.', '')}-AUTH"
    gw = site_gw
    try:
        async with charger(gw.url(cid), v, cid) as cp:
            await booted(cp, v)
            assert auth_status(v, await cp.req(authorize_request(v, "GOODTAG"))) == "Accepted"
            for stranger in ("BADTAG", "GOODTAG2", "goodtag"):
                status = auth_status(v, await cp.req(authorize_request(v, stranger)))
                assert status != "Accepted", f"{stranger} is not in the local list but was {status}"
                if v == "1.6":
                    assert status == "Invalid", f"1.6: an unknown idTag is Invalid, got {status}"
                else:
                    assert status in ("Unknown", "Invalid"), f"2.x: an unknown idToken got {status}"
            # the list still works after rejections
            assert auth_status(v, await cp.req(authorize_request(v, "GOODTAG"))) == "Accepted"
    finally:
        print(gw.logs()[-20000:])


@pytest.mark.parametrize("v", VERSIONS)
async def test_standalone_authorize_unknown_accepted_when_policy_is_accept(open_gw: GatewayProcess, v: str) -> None:
    cid = f"SA{v.replace('.', '')}-OPEN"
    gw = open_gw
    try:
        async with charger(gw.url(cid), v, cid) as cp:
            await booted(cp, v)
            for tag in ("ANYTAG-1", "04A2B3C4D5E6F7"):
                assert auth_status(v, await cp.req(authorize_request(v, tag))) == "Accepted"
    finally:
        print(gw.logs()[-20000:])


# ----------------------------------------------------------------------------------- OCPP 1.6 transactions


async def start_tx_16(cp: Any, connector: int, meter_start: int) -> int:
    call = MODULES["1.6"].call
    res = await cp.req(
        call.StartTransaction(connector_id=connector, id_tag="GOODTAG", meter_start=meter_start, timestamp=utcnow())
    )
    tx = res.transaction_id
    assert isinstance(tx, int) and not isinstance(tx, bool), f"transactionId {tx!r} is not an integer"
    assert tx > 0, f"transactionId {tx} must be > 0"
    assert res.id_tag_info["status"] == "Accepted", f"GOODTAG is in the local list: {res.id_tag_info}"
    return tx


async def test_standalone_v16_transaction_ids_unique_and_never_reset_across_restart(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    cid = "SA16-TXID"
    gw = await asyncio.wait_for(asyncio.to_thread(gateway_factory, SITE_CONFIG), 30)
    try:
        async with charger(gw.url(cid), "1.6", cid) as cp:
            await booted(cp, "1.6")
            first = await start_tx_16(cp, 1, 100)
            second = await start_tx_16(cp, 2, 200)
            assert first != second, "two transactions got the same id"

        exit_code = await asyncio.to_thread(gw.stop)
        assert exit_code is not None
        await asyncio.wait_for(asyncio.to_thread(gw.start), 30)  # same config file, same data_dir, same port

        async with charger(gw.url(cid), "1.6", cid) as cp:
            await booted(cp, "1.6")
            third = await start_tx_16(cp, 1, 300)
            assert third > max(first, second), f"after a restart the id {third} is not above {first} and {second}"
            fourth = await start_tx_16(cp, 2, 400)
            assert fourth not in (first, second, third)
    finally:
        print(gw.logs()[-20000:])


async def test_standalone_v16_meter_values_stop_transaction_and_data_transfer(site_gw: GatewayProcess) -> None:
    cid = "SA16-METER"
    call = MODULES["1.6"].call
    gw = site_gw
    try:
        async with charger(gw.url(cid), "1.6", cid) as cp:
            await booted(cp, "1.6")
            tx = await start_tx_16(cp, 1, 1000)
            await cp.req(call.StatusNotification(connector_id=1, error_code="NoError", status="Charging"))
            for wh in (1200, 1400):
                await cp.req(call.MeterValues(connector_id=1, transaction_id=tx, meter_value=[meter_value_16(wh)]))
            # a MeterValues without transaction (e.g. clock-aligned on an idle connector) is answered too
            await cp.req(call.MeterValues(connector_id=2, meter_value=[meter_value_16(5, "Sample.Clock")]))
            stop = await cp.req(
                call.StopTransaction(
                    meter_stop=1500,
                    timestamp=utcnow(),
                    transaction_id=tx,
                    reason="EVDisconnected",
                    id_tag="GOODTAG",
                    transaction_data=[meter_value_16(1500, "Transaction.End")],
                )
            )
            if stop.id_tag_info is not None:
                assert stop.id_tag_info["status"] == "Accepted"
            _, reply = cp.log.exchange_out("StopTransaction")
            assert reply is not None and reply[0] == 3

            dt = await cp.req(data_transfer_request("1.6"))
            assert dt.status in DATA_TRANSFER_STATUSES
    finally:
        print(gw.logs()[-20000:])


# ----------------------------------------------------------------------------------- OCPP 2.x transactions


@pytest.mark.parametrize("v", V2X)
async def test_standalone_v2x_transaction_events_and_notifications(site_gw: GatewayProcess, v: str) -> None:
    cid = f"SA{v.replace('.', '')}-TX"
    call = MODULES[v].call
    gw = site_gw
    try:
        async with charger(gw.url(cid), v, cid) as cp:
            await booted(cp, v)
            tx = f"TX-{cid}"
            started = await cp.req(
                call.TransactionEvent(
                    event_type="Started",
                    timestamp=utcnow(),
                    trigger_reason="Authorized",
                    seq_no=0,
                    transaction_info={"transactionId": tx, "chargingState": "Charging"},
                    id_token={"idToken": "GOODTAG", "type": "ISO14443"},
                    evse={"id": 1, "connectorId": 1},
                    meter_value=[energy_meter_value(0.0, "Transaction.Begin")],
                )
            )
            if started.id_token_info is not None:
                assert started.id_token_info["status"] == "Accepted", started.id_token_info
            for seq, wh in ((1, 500.0), (2, 1000.0)):
                await cp.req(
                    call.TransactionEvent(
                        event_type="Updated",
                        timestamp=utcnow(),
                        trigger_reason="MeterValuePeriodic",
                        seq_no=seq,
                        transaction_info={"transactionId": tx, "chargingState": "Charging"},
                        meter_value=[energy_meter_value(wh)],
                    )
                )
            await cp.req(
                call.TransactionEvent(
                    event_type="Ended",
                    timestamp=utcnow(),
                    trigger_reason="EVCommunicationLost",
                    seq_no=3,
                    transaction_info={"transactionId": tx, "stoppedReason": "EVDisconnected"},
                    meter_value=[energy_meter_value(1200.0, "Transaction.End")],
                )
            )
            assert len(cp.log.calls_out("TransactionEvent")) == 4
            for i in range(4):
                _, reply = cp.log.exchange_out("TransactionEvent", i)
                assert reply is not None and reply[0] == 3

            await cp.req(
                call.MeterValues(evse_id=1, meter_value=[energy_meter_value(1200.0, "Sample.Clock")])
            )
            await cp.req(
                call.NotifyReport(
                    request_id=1,
                    generated_at=utcnow(),
                    seq_no=0,
                    report_data=[
                        {
                            "component": {"name": "TemperatureSensor"},
                            "variable": {"name": "Temperature"},
                            "variableAttribute": [{"type": "Actual", "value": "31.5"}],
                            "variableCharacteristics": {
                                "unit": "Celsius",
                                "dataType": "decimal",
                                "supportsMonitoring": True,
                            },
                        }
                    ],
                )
            )
            await cp.req(
                call.NotifyEvent(
                    generated_at=utcnow(),
                    seq_no=0,
                    event_data=[
                        {
                            "eventId": 1,
                            "timestamp": utcnow(),
                            "trigger": "Periodic",
                            "actualValue": "31.5",
                            "eventNotificationType": "HardWiredMonitor",
                            "component": {"name": "TemperatureSensor"},
                            "variable": {"name": "Temperature"},
                        }
                    ],
                )
            )
            await cp.req(call.SecurityEventNotification(type="StartupOfTheDevice", timestamp=utcnow()))
            dt = await cp.req(data_transfer_request(v))
            assert dt.status in DATA_TRANSFER_STATUSES
    finally:
        print(gw.logs()[-20000:])


# ----------------------------------------------------------------------------------- every charger action


def charger_initiated_2x() -> list[tuple[str, dict[str, Any]]]:
    """A minimal schema-valid request for every charger-initiated action of OCPP 2.0.1 (same in 2.1)."""
    ts = utcnow()
    comp_var = {"component": {"name": "TemperatureSensor"}, "variable": {"name": "Temperature"}}
    schedule = {
        "id": 1,
        "chargingRateUnit": "W",
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11000.0}],
    }
    return [
        ("Authorize", {"idToken": {"idToken": "GOODTAG", "type": "ISO14443"}}),
        ("BootNotification", {"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"}),
        ("ClearedChargingLimit", {"chargingLimitSource": "EMS", "evseId": 1}),
        ("DataTransfer", {"vendorId": "com.example.e2e", "messageId": "m", "data": "x"}),
        ("FirmwareStatusNotification", {"status": "Idle"}),
        ("Heartbeat", {}),
        ("LogStatusNotification", {"status": "Idle"}),
        ("MeterValues", {"evseId": 1, "meterValue": [{"timestamp": ts, "sampledValue": [{"value": 42.0}]}]}),
        ("NotifyChargingLimit", {"chargingLimit": {"chargingLimitSource": "EMS"}}),
        ("NotifyCustomerInformation", {"data": "customer data", "seqNo": 0, "generatedAt": ts, "requestId": 7}),
        ("NotifyDisplayMessages", {"requestId": 8}),
        ("NotifyEVChargingNeeds", {"chargingNeeds": {"requestedEnergyTransfer": "AC_three_phase"}, "evseId": 1}),
        ("NotifyEVChargingSchedule", {"timeBase": ts, "chargingSchedule": schedule, "evseId": 1}),
        (
            "NotifyEvent",
            {
                "generatedAt": ts,
                "seqNo": 0,
                "eventData": [
                    {
                        "eventId": 11,
                        "timestamp": ts,
                        "trigger": "Alerting",
                        "actualValue": "55",
                        "eventNotificationType": "HardWiredNotification",
                        **comp_var,
                    }
                ],
            },
        ),
        ("NotifyMonitoringReport", {"requestId": 9, "seqNo": 0, "generatedAt": ts}),
        ("NotifyReport", {"requestId": 10, "generatedAt": ts, "seqNo": 0}),
        ("PublishFirmwareStatusNotification", {"status": "Idle"}),
        (
            "ReportChargingProfiles",
            {
                "requestId": 12,
                "chargingLimitSource": "EMS",
                "evseId": 1,
                "chargingProfile": [
                    {
                        "id": 1,
                        "stackLevel": 0,
                        "chargingProfilePurpose": "TxDefaultProfile",
                        "chargingProfileKind": "Absolute",
                        "chargingSchedule": [{**schedule, "startSchedule": ts}],
                    }
                ],
            },
        ),
        ("ReservationStatusUpdate", {"reservationId": 13, "reservationUpdateStatus": "Expired"}),
        ("SecurityEventNotification", {"type": "StartupOfTheDevice", "timestamp": ts}),
        ("SignCertificate", {"csr": "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----"}),
        ("StatusNotification", {"timestamp": ts, "connectorStatus": "Available", "evseId": 1, "connectorId": 1}),
        (
            "TransactionEvent",
            {
                "eventType": "Started",
                "timestamp": ts,
                "triggerReason": "CablePluggedIn",
                "seqNo": 0,
                "transactionInfo": {"transactionId": "TX-EVERY-1"},
                "evse": {"id": 1, "connectorId": 1},
            },
        ),
        (
            "Get15118EVCertificate",
            {"iso15118SchemaVersion": "urn:iso:15118:2:2013:MsgDef", "action": "Install", "exiRequest": "gAAAAA=="},
        ),
        (
            "GetCertificateStatus",
            {
                "ocspRequestData": {
                    "hashAlgorithm": "SHA256",
                    "issuerNameHash": "a" * 64,
                    "issuerKeyHash": "b" * 64,
                    "serialNumber": "0123456789",
                    "responderURL": "http://ocsp.example.com",
                }
            },
        ),
    ]


REQUIRED_2X = {
    "Authorize", "BootNotification", "ClearedChargingLimit", "DataTransfer", "FirmwareStatusNotification",
    "Heartbeat", "LogStatusNotification", "MeterValues", "NotifyChargingLimit", "NotifyCustomerInformation",
    "NotifyDisplayMessages", "NotifyEVChargingNeeds", "NotifyEVChargingSchedule", "NotifyEvent",
    "NotifyMonitoringReport", "NotifyReport", "PublishFirmwareStatusNotification", "ReportChargingProfiles",
    "ReservationStatusUpdate", "SecurityEventNotification", "SignCertificate", "StatusNotification",
    "TransactionEvent", "Get15118EVCertificate", "GetCertificateStatus",
}  # fmt: skip


def charger_initiated_16() -> list[tuple[str, dict[str, Any]]]:
    """A minimal schema-valid request for every charger-initiated action of OCPP 1.6 (core and
    firmware profiles; StartTransaction/StopTransaction are covered by the transaction tests)."""
    ts = utcnow()
    return [
        ("BootNotification", {"chargePointVendor": "E2EVendor", "chargePointModel": "E2EModel"}),
        ("Authorize", {"idTag": "GOODTAG"}),
        ("DataTransfer", {"vendorId": "com.example.e2e", "messageId": "m", "data": "x"}),
        ("DiagnosticsStatusNotification", {"status": "Idle"}),
        ("FirmwareStatusNotification", {"status": "Idle"}),
        ("Heartbeat", {}),
        ("MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": ts, "sampledValue": [{"value": "42"}]}]}),
        ("StatusNotification", {"connectorId": 0, "errorCode": "NoError", "status": "Available"}),
    ]


async def call_every(cp: Any, requests: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Send each request (bounded: one round trip each); return the failures, described."""
    failures: list[str] = []
    for action, payload in requests:
        try:
            await cp.raw_call(action, payload, timeout=STEP + 1)
        except RpcError as err:
            failures.append(f"{action}: CALLERROR {err.code} {err.description!r}")
        except asyncio.TimeoutError:
            failures.append(f"{action}: no answer within {STEP + 1}s")
        except Exception as err:  # noqa: BLE001 - any failure is reported: schema violation of the response, closed socket, ...
            failures.append(f"{action}: {type(err).__name__}: {err}")
    return failures


@pytest.mark.parametrize("v", V2X)
async def test_standalone_v2x_every_charger_initiated_action_gets_schema_valid_callresult(
    site_gw: GatewayProcess, v: str
) -> None:
    cid = f"SA{v.replace('.', '')}-EVERY"
    requests = charger_initiated_2x()
    assert REQUIRED_2X <= {a for a, _ in requests}
    gw = site_gw
    try:
        async with charger(gw.url(cid), v, cid) as cp:
            await booted(cp, v)
            failures = await asyncio.wait_for(call_every(cp, requests), 45)
            assert not failures, f"OCPP {v}, not answered with a schema-valid CALLRESULT:\n" + "\n".join(failures)
            for action, _ in requests:
                _, reply = cp.log.exchange_out(action)
                assert reply is not None and reply[0] == 3, f"{action}: {reply!r}"
    finally:
        print(gw.logs()[-20000:])


async def test_standalone_v16_every_charger_initiated_action_gets_schema_valid_callresult(
    site_gw: GatewayProcess,
) -> None:
    cid = "SA16-EVERY"
    requests = charger_initiated_16()
    gw = site_gw
    try:
        async with charger(gw.url(cid), "1.6", cid) as cp:
            failures = await asyncio.wait_for(call_every(cp, requests), 45)
            assert not failures, "OCPP 1.6, not answered with a schema-valid CALLRESULT:\n" + "\n".join(failures)
    finally:
        print(gw.logs()[-20000:])
