"""Logs: frames at debug level with id tags and secrets redacted, the charger id on every line,
and the traffic journal (one JSON line per frame)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from gateway.logs import REDACTED, JsonFormatter, TextFormatter, redact
from tests.api.helpers import api_client, charger, inproc


def test_redact_removes_id_tags_and_secrets_of_every_version() -> None:
    assert redact({"idTag": "04A2B3C4"}) == {"idTag": REDACTED}
    assert redact({"connectorId": 1, "idTag": "T", "meterStart": 5, "timestamp": "t"}) == {
        "connectorId": 1, "idTag": REDACTED, "meterStart": 5, "timestamp": "t"}
    assert redact({"idTagInfo": {"status": "Accepted", "parentIdTag": "P"}}) == {
        "idTagInfo": {"status": "Accepted", "parentIdTag": REDACTED}}
    # 2.x IdTokenType: the token goes, its type stays
    assert redact({"idToken": {"idToken": "ABC", "type": "ISO14443",
                               "additionalInfo": [{"additionalIdToken": "X", "type": "t"}]}}) == {
        "idToken": {"idToken": REDACTED, "type": "ISO14443",
                    "additionalInfo": [{"additionalIdToken": REDACTED, "type": "t"}]}}
    assert redact({"localAuthorizationList": [{"idTag": "A"}, {"idTag": "B"}], "listVersion": 3}) == {
        "localAuthorizationList": [{"idTag": REDACTED}, {"idTag": REDACTED}], "listVersion": 3}
    # 1.6 configuration keys and 2.x device-model variables that hold secrets
    assert redact({"key": "AuthorizationKey", "value": "00112233"}) == {"key": "AuthorizationKey", "value": REDACTED}
    assert redact({"key": "HeartbeatInterval", "value": "60"}) == {"key": "HeartbeatInterval", "value": "60"}
    data = {"setVariableData": [
        {"attributeValue": "hunter2", "component": {"name": "SecurityCtrlr"}, "variable": {"name": "BasicAuthPassword"}},
        {"attributeValue": "60", "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
    ]}
    out = redact(data)
    assert out["setVariableData"][0]["attributeValue"] == REDACTED
    assert out["setVariableData"][1]["attributeValue"] == "60"
    assert data["setVariableData"][0]["attributeValue"] == "hunter2"  # a copy: the relayed payload is untouched


def test_formatters_carry_the_charger_id() -> None:
    record = logging.LogRecord("gateway.session", logging.INFO, __file__, 1, "upstream %s", ("online",), None)
    record.charger_id = "CP-7"
    assert " [CP-7]: upstream online" in TextFormatter().format(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["charger_id"] == "CP-7" and line["msg"] == "upstream online" and line["level"] == "info"


async def test_debug_frame_log_and_journal_are_redacted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.frames")
    journal = tmp_path / "journal" / "frames.jsonl"
    async with inproc(tmp_path, logging={"journal": str(journal)}) as gw, api_client(gw.api_url) as api:
        async with charger(gw.url("J1"), "J1") as cp:
            await cp.boot()
            await cp.start_tx(1, id_tag="SECRET-TAG-1")
            status, _, _ = await api.post("/api/v1/chargers/J1/calls/Reset", {"type": "Soft"})
            assert status == 200
    # the journal is complete once the gateway has stopped
    lines = [json.loads(x) for x in journal.read_text().splitlines()]
    assert "SECRET-TAG-1" not in journal.read_text()
    assert all(set(x) == {"ts", "charger", "direction", "peer", "frame"} for x in lines)
    assert all(x["charger"] == "J1" for x in lines)
    frames = [(x["direction"], x["peer"], x["frame"][0], x["frame"][2] if x["frame"][0] == 2 else None) for x in lines]
    assert frames == [
        ("in", "gateway", 2, "BootNotification"), ("out", "gateway", 3, None),
        ("in", "gateway", 2, "StartTransaction"), ("out", "gateway", 3, None),
        ("out", "gateway", 2, "Reset"), ("in", "gateway", 3, None),
    ]
    start = lines[2]["frame"]
    assert start[3]["idTag"] == REDACTED and start[3]["connectorId"] == 1
    assert lines[3]["frame"][1] == start[1] and isinstance(lines[3]["frame"][2]["transactionId"], int)
    assert lines[5]["frame"][2] == {"status": "Accepted"}
    # debug log lines: one per exchange, charger id bound, nothing secret
    records = [r for r in caplog.records if r.name == "gateway.frames"]
    assert [r.getMessage().split()[1] for r in records] == ["BootNotification", "StartTransaction", "Reset"]
    assert all(getattr(r, "charger_id", None) == "J1" for r in records)
    assert not any("SECRET-TAG-1" in r.getMessage() for r in records)


async def test_no_journal_and_no_frame_log_unless_asked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.frames")
    async with inproc(tmp_path) as gw:
        names = {type(o).__name__ for o in gw.hub.observers}
        assert "Journal" not in names and "FrameLog" not in names


async def test_json_logs_of_the_gateway_process(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    """Every line the process writes is one JSON object; lines about a charger carry its id, and
    the debug frame lines hide the id tag."""
    gw = gateway_factory({"logging": {"format": "json", "level": "DEBUG"}})
    async with charger(gw.url("JS-1"), "JS-1") as cp:
        await cp.boot()
        await cp.start_tx(1, id_tag="PRIVATE-TAG")
    gw.stop()
    lines = [json.loads(line) for line in gw.logs().splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)
    mine = [x for x in lines if x.get("charger_id") == "JS-1"]
    assert any(x["logger"] == "gateway.websocket" and "connected" in x["msg"] for x in mine)
    assert any(x["logger"] == "gateway.frames" and "StartTransaction" in x["msg"] for x in mine)
    assert "PRIVATE-TAG" not in gw.logs()
