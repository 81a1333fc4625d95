"""The SOAP endpoint on the wire: standalone answers to the official 1.5/1.6 clients, Faults for
malformed envelopes (with the S16 §4 codes), hardened XML parsing, compression, header case."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from lxml import etree

from tests.harness import free_port
from tests.soap.peers import OfficialCharger, fault_codes
from tests.soap.test_soap_relay import NOW, gateway, meter_values

pytestmark = pytest.mark.timeout(60)

SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
WSA = "http://www.w3.org/2005/08/addressing"


def envelope(body: str, identity: str | None = "RAW1", header_name: str = "chargeBoxIdentity",
             ns: str = "urn://Ocpp/Cs/2015/10/", prolog: str = "", env_ns: str = SOAP12) -> bytes:
    ident = f"<cs:{header_name}>{identity}</cs:{header_name}>" if identity is not None else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?>{prolog}<s:Envelope xmlns:s="{env_ns}" xmlns:cs="{ns}" '
            f'xmlns:a="{WSA}"><s:Header>{ident}<a:Action>/Heartbeat</a:Action><a:MessageID>urn:uuid:m-1</a:MessageID>'
            f"<a:From><a:Address>http://127.0.0.1:9/cp</a:Address></a:From></s:Header>"
            f"<s:Body>{body}</s:Body></s:Envelope>").encode()


async def post(url: str, data: bytes, **headers: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=data, headers={"Content-Type": "application/soap+xml", **headers},
                             timeout=aiohttp.ClientTimeout(total=15)) as r:
            return r.status, await r.read()


@pytest.mark.parametrize("version", ["1.6", "1.5"])
async def test_standalone_answers_every_charger_operation(tmp_path: Path, version: str) -> None:
    async with gateway(tmp_path, auth={"unknown_id_tags": "accept"}) as gw:
        seen: list[Any] = []

        class Observer:  # what telemetry, the API and metrics see: the session's OCPP 1.6J exchanges
            def exchange(self, session: Any, exchange: Any) -> None:
                seen.append(exchange)

            def session_event(self, session: Any, event: str) -> None:
                pass

        gw.hub.observers.append(Observer())
        c = OfficialCharger(version, gw.soap_url, "ALONE1")  # no wsa:From: it cannot be called back
        boot = await c.call("BootNotification", chargePointVendor="ACME", chargePointModel="S-1")
        assert boot["status"] == "Accepted"
        assert boot["interval" if version == "1.6" else "heartbeatInterval"] == 300
        assert (await c.call("Heartbeat")).year >= 2024
        await c.call("StatusNotification", connectorId=1, status="Available", errorCode="NoError")
        assert (await c.call("Authorize", idTag="T1"))["status"] == "Accepted"
        start = await c.call("StartTransaction", connectorId=1, idTag="T1", timestamp=NOW, meterStart=0)
        tx = start["transactionId"]
        assert isinstance(tx, int) and 0 < tx < 2**31 and start["idTagInfo"]["status"] == "Accepted"
        await c.call("MeterValues", connectorId=1, transactionId=tx, **meter_values(version))
        await c.call("StopTransaction", transactionId=tx, timestamp=NOW, meterStop=10)
        assert (await c.call("DataTransfer", vendorId="X"))["status"] == "UnknownVendorId"
        await c.call("FirmwareStatusNotification", status="Downloaded")
        await c.call("DiagnosticsStatusNotification", status="UploadFailed")
        meter = [e for e in seen if e.action == "MeterValues"][0]
        assert meter.charger_id == "ALONE1" and meter.response == {}
        assert meter.request["meterValue"][0]["sampledValue"][1]["unit"] == "A"  # 1.5 "Amp" converted
        session = gw.hub.sessions["ALONE1"]
        assert session.link.transport == "soap"
        assert session.snapshot()["transport"] == "soap" and session.snapshot()["protocol"] == "ocpp1.6"
        # a CSMS-side call to a charger whose endpoint is unknown fails at once, with a clear error
        from gateway.errors import CallFailed

        with pytest.raises(CallFailed) as info:
            await session.call_charger("Reset", {"type": "Soft"}, timeout=3)
        assert info.value.code == "GenericError" and "wsa:From" in info.value.description


async def test_faults_for_malformed_requests_and_hardened_parsing(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        url = gw.soap_url
        ok = "<cs:heartbeatRequest/>"

        # case-insensitive chargeBoxIdentity, response correlated to the request's MessageID
        status, body = await post(url, envelope(ok, header_name="ChargeBoxIdentity"))
        assert status == 200, body
        env = etree.fromstring(body)
        assert env.findtext(f".//{{{WSA}}}RelatesTo") == "urn:uuid:m-1"
        assert env.findtext(f".//{{{WSA}}}Action") == "/HeartbeatResponse"
        assert env.find(".//{urn://Ocpp/Cs/2015/10/}currentTime") is not None
        # gzip and deflate request bodies (S16 §6.1)
        assert (await post(url, gzip.compress(envelope(ok)), **{"Content-Encoding": "gzip"}))[0] == 200
        assert (await post(url, zlib.compress(envelope(ok)), **{"Content-Encoding": "deflate"}))[0] == 200
        raw = zlib.compressobj(wbits=-15)
        assert (await post(url, raw.compress(envelope(ok)) + raw.flush(), **{"Content-Encoding": "deflate"}))[0] == 200
        # a pre-release WS-Addressing namespace is read too
        draft = envelope(ok, identity="DRAFT1").replace(WSA.encode(), b"http://schemas.xmlsoap.org/ws/2004/08/addressing")
        status, body = await post(url, draft)
        assert status == 200 and b"urn:uuid:m-1" in body
        # 1.5 on the same endpoint, by namespace
        status, body = await post(url, envelope(ok, identity="RAW15", ns="urn://Ocpp/Cs/2012/06/"))
        assert status == 200 and b"urn://Ocpp/Cs/2012/06/" in body
        sessions_before = set(gw.hub.sessions)

        xxe = ('<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>', "<cs:heartbeatRequest>&x;</cs:heartbeatRequest>")
        laughs = ('<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
                  '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>',
                  "<cs:heartbeatRequest>&d;</cs:heartbeatRequest>")
        cases: list[tuple[str, bytes, dict[str, str], int, tuple[str, str]]] = [
            ("not XML", b"this is not xml", {}, 400, ("Sender", "ProtocolError")),
            ("truncated", envelope(ok)[:-20], {}, 400, ("Sender", "ProtocolError")),
            ("XXE", envelope(xxe[1], identity="EVIL1", prolog=xxe[0]), {}, 400, ("Sender", "ProtocolError")),
            ("billion laughs", envelope(laughs[1], identity="EVIL2", prolog=laughs[0]), {}, 400,
             ("Sender", "ProtocolError")),
            ("unknown operation", envelope("<cs:fooRequest/>", identity="EVIL3"), {}, 500, ("Receiver", "NotSupported")),
            ("a Charge Point operation", envelope("<cs:resetRequest><cs:type>Soft</cs:type></cs:resetRequest>",
                                                  identity="EVIL4"), {}, 500, ("Receiver", "NotSupported")),
            ("unknown namespace", envelope(ok, identity="EVIL5", ns="urn://Ocpp/Cs/2010/08/"), {}, 400,
             ("Sender", "ProtocolError")),
            ("no chargeBoxIdentity", envelope(ok, identity=None), {}, 400, ("Sender", "ProtocolError")),
            ("bad chargeBoxIdentity", envelope(ok, identity="a:b"), {}, 400, ("Sender", "ProtocolError")),
            ("SOAP 1.1", envelope(ok, identity="EVIL6", env_ns=SOAP11), {}, 400, ("VersionMismatch", "ProtocolError")),
            ("bad gzip", b"\x1f\x8b\x08garbage", {"Content-Encoding": "gzip"}, 400, ("Sender", "ProtocolError")),
            ("zip bomb", gzip.compress(b" " * 5_000_000), {"Content-Encoding": "gzip"}, 400,
             ("Sender", "ProtocolError")),
            ("enum violation", envelope("<cs:statusNotificationRequest><cs:connectorId>1</cs:connectorId><cs:status>Bogus"
                                        "</cs:status><cs:errorCode>NoError</cs:errorCode></cs:statusNotificationRequest>",
                                        identity="RAW1"), {}, 400, ("Sender", "ProtocolError")),
            ("missing field", envelope("<cs:bootNotificationRequest><cs:chargePointModel>M</cs:chargePointModel>"
                                       "</cs:bootNotificationRequest>", identity="RAW1"), {}, 400,
             ("Sender", "ProtocolError")),
        ]
        for name, data, headers, want_status, want_codes in cases:
            status, body = await post(url, data, **headers)
            assert status == want_status, (name, body[:300])
            assert fault_codes(body) == want_codes, name
            assert b"root:" not in body, name  # nothing of the entity target leaks
        # nothing changed: no session was created by a refused request
        assert set(gw.hub.sessions) == sessions_before
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as r:
                assert r.status == 405


async def test_unknown_charge_box_is_refused_when_unknown_ids_are_not_allowed(tmp_path: Path) -> None:
    async with gateway(tmp_path, websocket={"allow_unknown": False}, chargers={"KNOWN1": {}}) as gw:
        status, body = await post(gw.soap_url, envelope("<cs:heartbeatRequest/>", identity="STRANGER"))
        assert status == 400 and fault_codes(body) == ("Sender", "SecurityError")
        status, _ = await post(gw.soap_url, envelope("<cs:heartbeatRequest/>", identity="KNOWN1"))
        assert status == 200


async def test_session_policy_idle_soap_charger_is_detached_and_comes_back(tmp_path: Path) -> None:
    async with gateway(tmp_path, soap={"idle_timeout": 0.5}) as gw:
        assert (await post(gw.soap_url, envelope("<cs:heartbeatRequest/>", identity="IDLE1")))[0] == 200
        assert gw.hub.sessions["IDLE1"].link.transport == "soap"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while "IDLE1" in gw.hub.sessions:
            assert loop.time() < deadline, "idle SOAP session not ended"
            await asyncio.sleep(0.05)
        assert (await post(gw.soap_url, envelope("<cs:heartbeatRequest/>", identity="IDLE1")))[0] == 200
        assert "IDLE1" in gw.hub.sessions


async def test_concurrent_requests_of_one_charger_are_all_answered(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        results = await asyncio.gather(*(post(gw.soap_url, envelope("<cs:heartbeatRequest/>", identity="BUSY1"))
                                         for _ in range(10)))
        assert [status for status, _ in results] == [200] * 10
        assert len(gw.hub.sessions) == 1


async def test_the_generated_contract_is_served_at_wsdl(tmp_path: Path) -> None:
    import io

    import zeep

    async with gateway(tmp_path) as gw:
        async with aiohttp.ClientSession() as http:
            for version, ns in (("", "urn://Ocpp/Cs/2015/10/"), ("1.5", "urn://Ocpp/Cs/2012/06/")):
                async with http.get(gw.soap_url + "?wsdl" + (f"={version}" if version else "")) as r:
                    assert r.status == 200
                    data = await r.read()
                client = zeep.Client(io.BytesIO(data))
                service = client.create_service(f"{{{ns}}}CentralSystemServiceSoap", gw.soap_url)
                assert len(client.wsdl.bindings[f"{{{ns}}}CentralSystemServiceSoap"]._operations) == 10
                assert gw.soap_url.encode() in data
                del service


async def test_strict_mode_refuses_a_soap_charger_while_the_csms_is_unreachable(tmp_path: Path) -> None:
    dead = f"ws://127.0.0.1:{free_port()}/ocpp"
    async with gateway(tmp_path, upstream={"url": dead, "offline_mode": "strict", "connect_timeout": 2.0}) as gw:
        status, body = await post(gw.soap_url, envelope("<cs:heartbeatRequest/>", identity="STRICT1"))
        assert status == 500 and fault_codes(body) == ("Receiver", "InternalError")
        assert "STRICT1" not in gw.hub.sessions


async def test_fields_in_another_order_than_the_wsdl_are_not_lost(tmp_path: Path) -> None:
    """Some chargers do not keep the WSDL's element order; the gateway reads them all the same."""
    async with gateway(tmp_path) as gw:
        seen: list[Any] = []

        class Observer:
            def exchange(self, session: Any, exchange: Any) -> None:
                seen.append(exchange)

            def session_event(self, session: Any, event: str) -> None:
                pass

        gw.hub.observers.append(Observer())
        body = ("<cs:statusNotificationRequest><cs:vendorErrorCode>E42</cs:vendorErrorCode>"
                "<cs:errorCode>OtherError</cs:errorCode><cs:timestamp>2030-01-02T03:04:05Z</cs:timestamp>"
                "<cs:status>Faulted</cs:status><cs:connectorId>2</cs:connectorId><cs:info>hot</cs:info>"
                "</cs:statusNotificationRequest>")
        status, _ = await post(gw.soap_url, envelope(body, identity="SLOPPY1"))
        assert status == 200
        assert seen[-1].request == {"connectorId": 2, "status": "Faulted", "errorCode": "OtherError", "info": "hot",
                                    "timestamp": "2030-01-02T03:04:05Z", "vendorErrorCode": "E42"}


async def test_an_unreachable_charger_endpoint_is_a_generic_error_for_the_caller(tmp_path: Path) -> None:
    from gateway.errors import CallFailed

    async with gateway(tmp_path) as gw:
        dead = f"http://127.0.0.1:{free_port()}/cp"
        c = OfficialCharger("1.6", gw.soap_url, "GONE1", from_address=dead)
        await c.call("Heartbeat")
        with pytest.raises(CallFailed) as info:
            await gw.hub.sessions["GONE1"].call_charger("Reset", {"type": "Soft"}, timeout=4)
        assert info.value.code == "GenericError" and "unreachable" in info.value.description
        # a payload that breaks the 1.6 schema gets the error a 1.6J charger would give, before any SOAP
        with pytest.raises(CallFailed) as info:
            await gw.hub.sessions["GONE1"].call_charger("Reset", {"type": "Bogus"}, timeout=4)
        assert info.value.code == "PropertyConstraintViolation"


async def test_large_compressed_and_chunked_bodies_arrive_whole(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        seen: list[Any] = []

        class Observer:
            def exchange(self, session: Any, exchange: Any) -> None:
                seen.append(exchange)

            def session_event(self, session: Any, event: str) -> None:
                pass

        gw.hub.observers.append(Observer())
        data = "x" * 400_000
        body = envelope(f"<cs:dataTransferRequest><cs:vendorId>V</cs:vendorId><cs:data>{data}</cs:data>"
                        "</cs:dataTransferRequest>", identity="BIG1")

        async def chunks() -> Any:
            for i in range(0, len(body), 1000):
                yield body[i:i + 1000]

        for payload, headers in ((gzip.compress(body), {"Content-Encoding": "gzip"}), (chunks(), {})):
            async with aiohttp.ClientSession() as http:
                async with http.post(gw.soap_url, data=payload, headers={"Content-Type": "application/soap+xml",
                                                                         **headers}) as r:
                    assert r.status == 200, await r.text()
            assert len(seen[-1].request["data"]) == len(data)


async def test_security_profile_1_asks_soap_chargers_for_http_basic_credentials(tmp_path: Path) -> None:
    """OCPP-S has no authentication of its own; with profile 1 a SOAP charger must send HTTP Basic
    credentials, as an OCPP-J charger does (no unauthenticated way around the profile)."""
    import base64

    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    config = {"websocket": {"security_profile": 1}, "chargers": {"OLD1": {"password": "0ld-ch4rger-secret"}}}
    async with gateway(tmp_path, **config) as gw:
        hb = envelope("<cs:heartbeatRequest/>", identity="OLD1")
        status, body = await post(gw.soap_url, hb)
        assert status == 401 and fault_codes(body) == ("Sender", "SecurityError")
        status, body = await post(gw.soap_url, hb, Authorization=basic("OLD1", "wrong"))
        assert status == 401
        status, body = await post(gw.soap_url, hb, Authorization=basic("OLD1", "0ld-ch4rger-secret"))
        assert status == 200, body
        assert "OLD1" in gw.hub.sessions
