"""The REST API against the real gateway (in this event loop) and real `ocpp` chargers on loopback.

Every answer the tests get is validated against the OpenAPI document the gateway serves
(tests/api/helpers.py: Api.request -> OpenApi.check), and the last test checks that every
documented response of every implemented path was exercised by some test of this module.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson
import pytest
from openapi_spec_validator import validate as validate_spec

from gateway.config import ConfigError, Settings, load_settings
from tests.api.helpers import api_client, charger, inproc, until

EXERCISED: set[tuple[str, str, int]] = set()
TESTED_ELSEWHERE: set[str] = set()  # OpenAPI paths whose responses other test modules exercise


@pytest.fixture
async def gw(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with inproc(tmp_path) as gw:
        yield gw


@pytest.fixture
async def api(gw):  # type: ignore[no-untyped-def]
    async with api_client(gw.api_url) as client:
        yield client
        EXERCISED.update(client.openapi.checked)


async def test_health_readiness_page_and_document(gw, api) -> None:  # type: ignore[no-untyped-def]
    status, body, _ = await api.get("/healthz")
    assert status == 200 and body["status"] == "ok" and body["chargers"] == 0
    status, body, _ = await api.get("/readyz")
    assert status == 200 and body == {"status": "ready", "checks": {"store": True, "websocket": True}}
    status, page, headers = await api.get("/")
    assert status == 200 and "<title>OCPP gateway</title>" in page
    status, doc, _ = await api.get("/api/v1/openapi.json")
    validate_spec(doc)  # a valid OpenAPI 3.1 document
    status, text, headers = await api.get("/metrics")
    assert status == 200 and "ocppgw_build_info" in text
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")


async def test_readiness_fails_when_the_store_is_closed(gw, api) -> None:  # type: ignore[no-untyped-def]
    await gw.hub.store.close()
    status, body, _ = await api.get("/readyz")
    assert status == 503 and body["status"] == "not_ready" and body["checks"]["store"] is False


async def test_chargers_show_connection_status_power_and_transactions(gw, api) -> None:  # type: ignore[no-untyped-def]
    status, body, _ = await api.get("/api/v1/chargers")
    assert status == 200 and body == {"chargers": [], "count": 0}
    async with charger(gw.url("CP16"), "CP16") as cp, charger(gw.url("CP201"), "CP201", "2.0.1") as cp2:
        await cp.boot()
        await cp.status(0, "Available")
        await cp.status(1, "Charging")
        started = await cp.start_tx(1, meter_start=1000)
        await cp.meter(1, started.transaction_id, power_w=7200, energy_wh=3500)
        await cp2.boot()
        await cp2.status(1, 1, "Occupied")
        status, body, _ = await api.get("/api/v1/chargers")
        assert status == 200 and body["count"] == 2
        assert [c["id"] for c in body["chargers"]] == ["CP16", "CP201"]
        status, one, _ = await api.get("/api/v1/chargers/CP16")
        assert status == 200
        assert one["connected"] is True and one["transport"] == "websocket" and one["protocol"] == "ocpp1.6"
        assert one["upstream"]["state"] == "standalone"
        assert one["boot"]["vendor"] == "ACME" and one["boot"]["model"] == "Wallbox 7"
        by_evse = {c["evse"]: c for c in one["connectors"]}
        assert by_evse[0]["status"] == "Available"
        assert by_evse[1]["status"] == "Charging" and by_evse[1]["error_code"] == "NoError"
        assert by_evse[1]["power_w"] == 7200 and by_evse[1]["energy_wh"] == 3500
        assert by_evse[1]["transaction_id"] == str(started.transaction_id)
        [tx] = one["open_transactions"]
        assert tx["transaction_id"] == str(started.transaction_id) and tx["energy_wh"] == 2500
        assert tx["power_w"] == 7200
        assert one["queues"] == {"to_charger": 0, "to_csms": 0}
        status, two, _ = await api.get("/api/v1/chargers/CP201")
        assert two["protocol"] == "ocpp2.0.1"
        assert two["connectors"][0] | {} == {**two["connectors"][0], "evse": 1, "connector": 1, "status": "Occupied"}
    # after the chargers leave: still listed, shown disconnected
    await until(lambda: not gw.hub.sessions, what="sessions ended")
    status, one, _ = await api.get("/api/v1/chargers/CP16")
    assert status == 200 and one["connected"] is False and one["upstream"]["state"] == "disconnected"
    assert one["protocol"] == "ocpp1.6" and one["transport"] == "websocket"  # the last one
    status, body, _ = await api.get("/api/v1/chargers/NOPE")
    assert status == 404 and body["error"] == "not_found"
    status, body, _ = await api.get("/api/v1/chargers/a%2Fb")
    assert status == 404


async def test_calls_reach_the_charger_and_every_failure_has_its_status(gw, api) -> None:  # type: ignore[no-untyped-def]
    async with charger(gw.url("CP1"), "CP1") as cp:
        await cp.boot()
        status, body, _ = await api.post("/api/v1/chargers/CP1/calls/Reset", {"type": "Soft"})
        assert status == 200 and body == {"status": "Accepted"}
        assert cp.resets == ["Soft"]
        # the charger has no handler for ClearCache: the ocpp package answers NotImplemented
        status, body, _ = await api.post("/api/v1/chargers/CP1/calls/ClearCache")
        assert status == 502 and body["error"] == "call_error"
        assert body["ocpp_error"]["code"] == "NotImplemented"
        # too slow for the timeout asked for
        cp.slow = 1.0
        status, body, _ = await api.post("/api/v1/chargers/CP1/calls/GetConfiguration?timeout=0.3", {})
        assert status == 504 and body["error"] == "timeout"
        cp.slow = 0.0
        await asyncio.sleep(1.0)  # let the late answer arrive (and be dropped) before the next call
        status, body, _ = await api.post("/api/v1/chargers/CP1/calls/GetConfiguration", {"key": ["HeartbeatInterval"]})
        assert status == 200 and body["configurationKey"][0]["key"] == "HeartbeatInterval"
        # payloads that fail the schema, with the OCPP reason
        status, body, _ = await api.post("/api/v1/chargers/CP1/calls/Reset", {"type": "Sideways"})
        assert status == 400 and body["error"] == "invalid_payload"
        assert body["ocpp_error"]["code"] == "PropertyConstraintViolation"
        status, body, _ = await api.post("/api/v1/chargers/CP1/calls/Reset", {})
        assert status == 400 and body["ocpp_error"]["code"] == "OccurenceConstraintViolation"  # 1.6 spelling
        # actions the CSMS side may not send, or that do not exist in 1.6
        status, body, _ = await api.post("/api/v1/chargers/CP1/calls/BootNotification",
                                         {"chargePointVendor": "x", "chargePointModel": "y"})
        assert status == 400 and body["error"] == "action_not_allowed"
        status, body, _ = await api.post("/api/v1/chargers/CP1/calls/SetVariables", {"setVariableData": []})
        assert status == 400 and body["error"] == "unknown_action"
        # bodies and timeouts out of shape
        for raw in (b"{not json", b"[1, 2]", b'"Soft"'):
            status, body, _ = await api.request("POST", "/api/v1/chargers/CP1/calls/Reset", raw=raw)
            assert status == 400 and body["error"] in ("bad_json", "bad_payload"), raw
        for t in ("0", "-1", "301", "soon", "nan"):
            status, body, _ = await api.post(f"/api/v1/chargers/CP1/calls/Reset?timeout={t}", {"type": "Soft"})
            assert status == 400 and body["error"] == "bad_timeout", t
        assert cp.resets == ["Soft"]  # none of the refused calls reached the charger
    status, body, _ = await api.post("/api/v1/chargers/NOPE/calls/Reset", {"type": "Soft"})
    assert status == 404 and body["error"] == "not_connected"
    await until(lambda: not gw.hub.sessions, what="session ended")
    status, body, _ = await api.post("/api/v1/chargers/CP1/calls/Reset", {"type": "Soft"})
    assert status == 404  # known, but disconnected


async def test_calls_to_a_201_charger_use_its_schemas(gw, api) -> None:  # type: ignore[no-untyped-def]
    async with charger(gw.url("V2"), "V2", "2.0.1") as cp:
        await cp.boot()
        status, body, _ = await api.post("/api/v1/chargers/V2/calls/Reset", {"type": "Immediate"})
        assert status == 200 and body["status"] == "Accepted"
        status, body, _ = await api.post("/api/v1/chargers/V2/calls/Reset", {"type": "Hard"})  # a 1.6 value
        assert status == 400 and body["ocpp_error"]["code"] == "PropertyConstraintViolation"
        status, body, _ = await api.post("/api/v1/chargers/V2/calls/Reset", {})
        assert status == 400 and body["ocpp_error"]["code"] == "OccurrenceConstraintViolation"  # 2.x spelling


async def test_bearer_token(tmp_path: Path) -> None:
    async with inproc(tmp_path, api={"token": "s3cret-token"}) as gw:
        async with api_client(gw.api_url, token="") as anon, api_client(gw.api_url, token="s3cret-token") as auth:
            for path in ("/api/v1/chargers", "/api/v1/chargers/X", "/metrics", "/api/v1/transactions",
                         "/api/v1/outbox"):
                status, body, headers = await anon.get(path)
                assert status == 401 and body["error"] == "unauthorized", path
                assert headers["WWW-Authenticate"].startswith("Bearer")
                status, _, _ = await anon.get(path, token="wrong")
                assert status == 401
            status, _, _ = await anon.post("/api/v1/chargers/X/calls/Reset", {"type": "Soft"})
            assert status == 401
            status, _, _ = await anon.request("DELETE", "/api/v1/chargers/X")
            assert status == 401
            for path in ("/healthz", "/readyz", "/", "/api/v1/openapi.json"):  # probes, the page shell, the doc
                status, _, _ = await anon.get(path)
                assert status == 200, path
            status, body, _ = await auth.get("/api/v1/chargers")
            assert status == 200 and body["count"] == 0
            status, text, _ = await auth.get("/metrics")
            assert status == 200 and "ocppgw_calls" in text
            EXERCISED.update(anon.openapi.checked | auth.openapi.checked)
        # "bearer" is case-insensitive, the token is not
        async with aiohttp.ClientSession() as http:
            async with http.get(gw.api_url + "/api/v1/chargers", headers={"Authorization": "bearer s3cret-token"}) as r:
                assert r.status == 200
            async with http.get(gw.api_url + "/api/v1/chargers", headers={"Authorization": "Bearer S3CRET-TOKEN"}) as r:
                assert r.status == 401


def test_an_empty_token_only_on_loopback(tmp_path: Path) -> None:
    for listen in ("0.0.0.0:8080", "192.0.2.10:8080", "[::]:8080"):
        with pytest.raises(ConfigError) as info:
            f = tmp_path / "g.toml"
            f.write_text(f'[api]\nlisten = "{listen}"\ntoken = ""\n')
            load_settings(str(f))
        assert "api.token" in str(info.value), listen
        Settings(api={"listen": listen})  # unset: a token is generated at start
    # check-config (and run) refuse it with exit 2, naming the key
    import subprocess
    import sys

    from tests.harness import REPO

    f = tmp_path / "open.toml"
    f.write_text('[api]\nlisten = "0.0.0.0:8080"\ntoken = ""\n')
    for command in ("check-config", "run"):
        result = subprocess.run([sys.executable, "-m", "gateway", command, "-c", str(f)], cwd=str(REPO),
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, (command, result.stderr)
        assert "api.token: must not be empty when api.listen (0.0.0.0:8080) is not a loopback address" in result.stderr
    for listen in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080", "127.0.0.5:1"):
        Settings(api={"listen": listen, "token": ""})
    Settings(api={"listen": "0.0.0.0:8080", "token": "t"})


async def test_a_token_is_generated_kept_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import os
    import stat

    caplog.set_level("INFO", "gateway.api")
    async with inproc(tmp_path) as gw:
        path = tmp_path / "data" / "api-token"
        token = path.read_text().strip()
        assert len(token) >= 40 and gw.api_token == token
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert str(path.resolve()) in caplog.text and token not in caplog.text
        async with api_client(gw.api_url, token="") as anon, api_client(gw.api_url) as auth:
            assert (await anon.get("/api/v1/chargers"))[0] == 401
            assert (await auth.get("/api/v1/chargers"))[0] == 200
    async with inproc(tmp_path) as gw:  # the next start keeps it
        assert gw.api_token == token
    caplog.clear()
    async with inproc(tmp_path / "open", api={"token": ""}) as gw:  # off on purpose: warned about
        assert "api.token is empty" in caplog.text
        async with api_client(gw.api_url, token="") as anon:
            assert (await anon.get("/api/v1/chargers"))[0] == 200


def test_a_generated_token_never_begins_with_a_dash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ocpp-gateway variables --token VALUE`: a value that begins with "-" is taken for an option
    (one URL-safe token in 64 does). The draw is replaced: randomness cannot be made to do it."""
    from adapters import api_guard

    drawn = iter(["-looks-like-an-option", "-again", "Fine_token-with-a-dash-inside"])
    monkeypatch.setattr(api_guard.secrets, "token_urlsafe", lambda n: next(drawn))
    token = api_guard.api_token(Settings(data_dir=str(tmp_path / "data")))
    assert token == "Fine_token-with-a-dash-inside"
    assert (tmp_path / "data" / "api-token").read_text().strip() == token


async def test_a_browser_page_cannot_use_the_api(tmp_path: Path) -> None:
    """Cross-site writes (a form or a no-cors fetch: text/plain, no preflight) and DNS rebinding (a
    foreign Host) are refused even with authentication off (token = "" on loopback)."""
    async with inproc(tmp_path, api={"token": "", "allowed_hosts": ["gw.site.lan"]}) as gw, \
            charger(gw.url("CP1"), "CP1") as cp, api_client(gw.api_url) as api:
        await cp.boot()
        url = "/api/v1/chargers/CP1/calls/Reset"
        # text/plain and form bodies: 415, and the charger is not reset
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            status, body, _ = await api.post(url, raw=b'{"type":"Soft"}', headers={"Content-Type": ctype})
            assert status == 415 and body["error"] == "unsupported_media_type", ctype
        status, _, _ = await api.post("/api/v1/chargers/CP1/pause", raw=b'{"evse":1}',
                                      headers={"Content-Type": "text/plain"})
        assert status == 415
        # JSON from another origin: 403
        status, body, _ = await api.post(url, {"type": "Soft"}, headers={"Origin": "http://evil.example"})
        assert status == 403 and body["error"] == "cross_origin"
        assert (await api.request("DELETE", "/api/v1/chargers/CP1", headers={"Origin": "null"}))[0] == 403
        assert cp.resets == []
        # DNS rebinding: a name the attacker controls resolving to the gateway
        for host in ("evil.example", "evil.example:8080", "127.0.0.1.nip.io"):
            status, body, _ = await api.get("/api/v1/chargers", headers={"Host": host})
            assert status == 421 and body["error"] == "misdirected_request", host
            assert (await api.request("DELETE", "/api/v1/chargers/CP1", headers={"Host": host}))[0] == 421
        # what is allowed: addresses, localhost, configured names; same-origin JSON
        for host in ("127.0.0.1:1", "localhost", "[::1]:8080", "gw.site.lan:8080", "GW.SITE.LAN"):
            assert (await api.get("/api/v1/chargers", headers={"Host": host}))[0] == 200, host
        # every documented operation is guarded
        from adapters import control_api
        from adapters.openapi import document

        for template, item in document(control_api.PATHS, control_api.SCHEMAS)["paths"].items():
            path = template.replace("{id}", "CP1").replace("{action}", "Reset")
            for method in item:
                assert (await api.request(method.upper(), path, headers={"Host": "evil.example"}))[0] == 421, path
                if method in ("post", "delete"):
                    hostile = {"Origin": "http://evil.example"}
                    assert (await api.request(method.upper(), path, headers=hostile))[0] == 403, path
                if method == "post":
                    status, _, _ = await api.request("POST", path, raw=b"{}", headers={"Content-Type": "text/plain"})
                    assert status == 415, path
        assert cp.resets == [] and "CP1" in gw.hub.sessions
        origin = gw.api_url  # the page itself
        status, body, _ = await api.post(url, {"type": "Soft"}, headers={"Origin": origin})
        assert (status, body) == (200, {"status": "Accepted"}) and cp.resets == ["Soft"]
        EXERCISED.update(api.openapi.checked)


async def test_unrouted_paths_answer_json_404(gw) -> None:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {gw.api_token}"}) as http:
        async with http.get(gw.api_url + "/api/v2/nothing") as r:
            assert r.status == 404 and (await r.json())["error"] == "not_found"
        async with http.put(gw.api_url + "/api/v1/chargers") as r:
            assert r.status == 405 and "GET" in r.headers["Allow"]
            assert (await r.json())["error"] == "method_not_allowed"


async def test_the_relay_runs_on_when_the_api_port_is_taken(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import socket

    from gateway.app import running
    from tests.harness import free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(data_dir=str(tmp_path / "data"), websocket={"listen": f"127.0.0.1:{free_port()}"},
                            api={"listen": f"127.0.0.1:{port}"})
        async with running(settings) as gw:
            assert gw.api is None
            assert any("REST API not available" in r.getMessage() and str(port) in r.getMessage()
                       for r in caplog.records if r.levelname == "ERROR")
            async with charger(f"ws://127.0.0.1:{gw.ws_port}/ocpp/ALONE", "ALONE") as cp:
                assert (await cp.boot()).status == "Accepted"


async def test_busy_when_too_many_calls_wait_for_the_charger(tmp_path: Path) -> None:
    async with inproc(tmp_path, websocket={"max_queued_calls": 1}) as gw, api_client(gw.api_url) as api:
        async with charger(gw.url("BUSY"), "BUSY") as cp:
            await cp.boot()
            cp.slow = 0.5
            path = "/api/v1/chargers/BUSY/calls/GetConfiguration?timeout=5"
            first = asyncio.create_task(api.post(path, {}))  # in flight
            await until(lambda: len(gw.hub.sessions["BUSY"].to_charger) == 1, what="first call in flight")
            second = asyncio.create_task(api.post(path, {}))  # queued behind it
            await until(lambda: len(gw.hub.sessions["BUSY"].to_charger) == 2, what="second call queued")
            status, body, headers = await api.post(path, {})  # no room left
            assert status == 503 and body["error"] == "busy" and headers["Retry-After"] == "1"
            assert (await first)[0] == 200 and (await second)[0] == 200
        EXERCISED.update(api.openapi.checked)


async def test_transactions_endpoint_filters_and_answers_bad_filters(gw, api) -> None:  # type: ignore[no-untyped-def]
    from ocpp.v16 import call as c16

    async with charger(gw.url("TX1"), "TX1") as cp:
        first = await cp.call(c16.StartTransaction(connector_id=1, id_tag="A", meter_start=100,
                                                   timestamp="2026-03-01T10:00:00Z"))
        await cp.call(c16.StopTransaction(meter_stop=1100, timestamp="2026-03-01T11:00:00Z",
                                          transaction_id=first.transaction_id))
        second = await cp.call(c16.StartTransaction(connector_id=2, id_tag="B", meter_start=0,
                                                    timestamp="2026-03-02T10:00:00Z"))

    async def listing(query: str) -> list[str]:
        status, body, _ = await api.get("/api/v1/transactions" + query)
        assert status == 200 and body["count"] == len(body["transactions"])
        return [t["transaction_id"] for t in body["transactions"]]

    await until(lambda: gw.txlog.queue.empty(), what="transactions written")
    await asyncio.sleep(0.1)
    assert await listing("") == [str(second.transaction_id), str(first.transaction_id)]  # newest first
    assert await listing("?state=open") == [str(second.transaction_id)]
    assert await listing("?state=ended&charger=TX1") == [str(first.transaction_id)]
    assert await listing("?since=2026-03-02T00:00:00Z") == [str(second.transaction_id)]
    assert await listing("?until=2026-03-02T00:00:00Z&limit=5") == [str(first.transaction_id)]
    assert await listing("?charger=OTHER") == []
    status, body, _ = await api.get("/api/v1/transactions?state=open")
    ended = body["transactions"][0]
    assert ended["ended_at"] is None and ended["meter_start"] == 0 and ended["offline"] is False
    for bad in ("?state=maybe", "?since=yesterday", "?limit=0"):
        status, body, _ = await api.get("/api/v1/transactions" + bad)
        assert status == 400, bad


async def test_outbox_endpoint_shows_depth_age_and_dead_letters(tmp_path: Path) -> None:
    from ocpp.v16 import call as c16

    from tests.e2e.rawpeers import RawCsms

    refused: list[str] = []

    def answer(text: str) -> str | None:
        msg = orjson.loads(text)
        if msg[2] == "MeterValues":
            refused.append(msg[1])
            return orjson.dumps([4, msg[1], "FormationViolation", "refused by the test CSMS", {}]).decode()
        if msg[2] == "StartTransaction":
            return orjson.dumps([3, msg[1], {"transactionId": 42, "idTagInfo": {"status": "Accepted"}}]).decode()
        return orjson.dumps([3, msg[1], {}]).decode()

    csms = RawCsms(answer)
    async with inproc(tmp_path, upstream={"url": csms.url, "reconnect_min": 0.1, "reconnect_max": 0.2},
                      auth={"unknown_id_tags": "accept"}) as gw, api_client(gw.api_url) as api:
        async with charger(gw.url("OB1"), "OB1") as cp:  # the CSMS is not there yet: buffered
            tx = (await cp.call(c16.StartTransaction(connector_id=1, id_tag="A", meter_start=0,
                                                     timestamp="2026-03-01T10:00:00Z"))).transaction_id
            await cp.call(c16.MeterValues(connector_id=1, transaction_id=tx, meter_value=[
                {"timestamp": "2026-03-01T10:01:00Z", "sampledValue": [{"value": "5"}]}]))
            status, body, _ = await api.get("/api/v1/outbox")
            assert status == 200 and body["total_depth"] == 2 and body["dead_letters"] == []
            (row,) = body["chargers"]
            assert row["charger_id"] == "OB1" and row["depth"] == 2 and row["oldest_age_s"] >= 0
            async with csms:
                await until(lambda: bool(refused), what="replay")
                await asyncio.sleep(0.3)
                status, body, _ = await api.get("/api/v1/outbox")
        assert body["total_depth"] == 0
        (dead,) = body["dead_letters"]
        assert dead["action"] == "MeterValues" and "FormationViolation" in dead["error"]
        assert body["chargers"][0]["dead_letters"] == 1
        EXERCISED.update(api.openapi.checked)


async def test_forgetting_a_charger(gw, api) -> None:  # type: ignore[no-untyped-def]
    async with charger(gw.url("GONE1"), "GONE1") as cp:
        from ocpp.v16 import call as c16

        await cp.call(c16.BootNotification(charge_point_vendor="V", charge_point_model="M"))
        status, body, _ = await api.get("/api/v1/chargers/GONE1")
        assert status == 200 and body["connected"] is True
        status, body, _ = await api.request("DELETE", "/api/v1/chargers/GONE1")
        assert status == 200 and body == {"forgotten": "GONE1"}
        await until(lambda: cp.ws.close_code is not None, what="the charger's connection closed")
    status, _, _ = await api.get("/api/v1/chargers/GONE1")
    assert status == 404  # nothing is kept about it any more
    status, _, _ = await api.request("DELETE", "/api/v1/chargers/NEVER")
    assert status == 404


def test_every_documented_response_was_exercised() -> None:
    """Run last in this module: each (method, path, status) of the document was met by a test.
    Paths whose tests live in another module (e.g. /api/v1/transactions, /api/v1/outbox when the
    offline store adds them) go in TESTED_ELSEWHERE."""
    if not EXERCISED:
        pytest.skip("run with the whole module")
    from adapters.openapi import document

    expected = {(m.upper(), p, int(s)) for p, item in document()["paths"].items() for m, op in item.items()
                for s in op["responses"]}
    missing = {e for e in expected - EXERCISED if e[1] not in TESTED_ELSEWHERE}
    assert not missing, sorted(missing)
