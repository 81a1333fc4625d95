"""Security messages pass untouched: the 1.6 security extension (SEC16 §5), 2.x certificate
messages, signed meter values and 2.x `-Signed` frames (J201 §7), byte for byte in both directions.

`-Signed` CALLs from a 2.x charger carry a JWS for the CSMS: the gateway relays them without schema
validation while the CSMS is connected; it cannot answer them itself, so without the CSMS they get
a CALLERROR (InternalError) and are not stored.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from tests.e2e.rawpeers import RawConnection, RawCsms
from tests.security.conftest import gateway

CERT = "-----BEGIN CERTIFICATE-----\\nMIIB  x/y+z==\\n-----END CERTIFICATE-----\\n"
JWS = '{"payload":"eyJpZFRva2VuIjp7fX0","protected":"eyJhbGciOiJFUzI1NiIsIk9DUFBBY3Rpb24iOiJUcmFuc2FjdGlvbkV2ZW50In0",' \
      '"signature":"MEUCIQ-_abc"}'


def echo_answer(text: str) -> str | None:
    """A CSMS that answers every CALL with a payload of odd spacing that must arrive untouched."""
    msg = orjson.loads(text)
    if msg[0] != 2:
        return None
    if msg[2].endswith("-Signed"):
        return '[3,"%s", %s ]' % (msg[1], JWS)
    if msg[2] == "BootNotification":
        return '[3,"%s",{"currentTime":"2026-01-01T00:00:00Z","interval":300,"status":"Accepted"}]' % msg[1]
    if msg[2] == "SignCertificate":
        return '[3,"%s",{"status" : "Accepted"}]' % msg[1]
    return '[3,"%s",{ }]' % msg[1]


async def relay_up(ws: ClientConnection, conn: RawConnection, text: str) -> None:
    await ws.send(text)
    assert await asyncio.wait_for(conn.received.get(), 5) == text
    reply = await asyncio.wait_for(ws.recv(), 5)
    assert reply == echo_answer(text)


async def relay_down(ws: ClientConnection, conn: RawConnection, text: str, answer: str) -> None:
    await conn.ws.send(text)
    assert await asyncio.wait_for(ws.recv(), 5) == text
    await ws.send(answer)
    assert await asyncio.wait_for(conn.received.get(), 5) == answer


async def test_16_security_extension_untouched(tmp_path: Path) -> None:
    async with RawCsms(echo_answer) as csms:
        async with gateway(tmp_path, upstream={"url": csms.url}) as gw:
            async with connect(gw.url("S16"), subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
                (conn,) = await csms.wait_connections(1)
                for text in [
                    '[2,"a1","BootNotification",{"chargePointVendor":"ACME","chargePointModel":"M1"}]',
                    '[2,"a2","SignCertificate",{"csr":"-----BEGIN CERTIFICATE REQUEST-----\\nMIIB+/=\\n-----END CERTIFICATE REQUEST-----"}]',
                    '[2,"a3","SecurityEventNotification",{"type":"StartupOfTheDevice","timestamp":"2026-01-01T00:00:00.123Z","techInfo":"  x "}]',
                    '[2,"a4","LogStatusNotification",{"status":"Uploaded","requestId":7}]',
                    '[2,"a5","SignedFirmwareStatusNotification",{"status":"SignatureVerified","requestId":8}]',
                    # signed meter values: the signed data block is opaque, and stays so (also inside a transaction)
                    '[2,"a6","MeterValues",{"connectorId":1,"transactionId":17,"meterValue":[{"timestamp":"2026-01-01T00:00:00Z",'
                    '"sampledValue":[{"value":"AP;0;3;ALCV3ABBBISHFA2RVRTVEWE6JDQKRT0HGPBT2Y0TGSI4K6IMGKGIFH;BIHEIWSHAAA;","format":"SignedData",'
                    '"context":"Transaction.End","measurand":"Energy.Active.Import.Register"}]}]}]',
                ]:
                    await relay_up(ws, conn, text)
                for text, answer in [
                    ('[2,"c1","CertificateSigned",{"certificateChain":"%s"}]' % CERT, '[3,"c1",{"status":"Accepted"}]'),
                    ('[2,"c2","InstallCertificate",{"certificateType":"CentralSystemRootCertificate","certificate":"%s"}]' % CERT,
                     '[3,"c2",{"status":"Accepted"}]'),
                    ('[2,"c3","ExtendedTriggerMessage",{"requestedMessage":"SignChargePointCertificate"}]',
                     '[3,"c3",{"status":"Accepted"}]'),
                    ('[2,"c4","GetInstalledCertificateIds",{"certificateType":"ManufacturerRootCertificate"}]',
                     '[3,"c4",{"status":"Accepted","certificateHashData":[{"hashAlgorithm":"SHA256","issuerNameHash":"a",'
                     '"issuerKeyHash":"b","serialNumber":"01"}]}]'),
                    ('[2,"c5","SignedUpdateFirmware",{"requestId":1,"firmware":{"location":"https://x/fw","retrieveDateTime":'
                     '"2026-01-01T00:00:00Z","signingCertificate":"%s","signature":"c2ln"}}]' % CERT,
                     '[3,"c5",{"status":"Accepted"}]'),
                ]:
                    await relay_down(ws, conn, text, answer)


async def test_2x_signed_frames_and_certificates_untouched(tmp_path: Path) -> None:
    async with RawCsms(echo_answer) as csms:
        async with gateway(tmp_path, upstream={"url": csms.url}) as gw:
            async with connect(gw.url("S201"), subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
                (conn,) = await csms.wait_connections(1)
                for text in [
                    '[2,"b1","BootNotification",{"reason":"PowerUp","chargingStation":{"model":"M1","vendorName":"ACME"}}]',
                    '[2,"b2","SignCertificate",{"csr":"-----BEGIN CERTIFICATE REQUEST-----\\nMIIB+/=\\n-----END CERTIFICATE REQUEST-----",'
                    '"certificateType":"ChargingStationCertificate"}]',
                    '[2,"b3","SecurityEventNotification",{"type":"FirmwareUpdated","timestamp":"2026-01-01T00:00:00Z"}]',
                    # a signed meter value inside an ordinary TransactionEvent
                    '[2,"b4","TransactionEvent",{"eventType":"Updated","timestamp":"2026-01-01T00:00:00Z","triggerReason":"MeterValuePeriodic",'
                    '"seqNo":1,"transactionInfo":{"transactionId":"T-1"},"meterValue":[{"timestamp":"2026-01-01T00:00:00Z",'
                    '"sampledValue":[{"value":12.5,"signedMeterValue":{"signedMeterData":"c2lnbmVk+/=","signingMethod":"ECDSA-secp256r1-SHA256",'
                    '"encodingMethod":"OCMF","publicKey":"cHVi"}}]}]}]',
                    # J201 §7 signed message: a JWS, not the action's schema
                    '[2,"b5","TransactionEvent-Signed",%s]' % JWS,
                    '[2,"b6","SecurityEventNotification-Signed", %s ]' % JWS,
                ]:
                    await relay_up(ws, conn, text)
                for text, answer in [
                    ('[2,"d1","CertificateSigned",{"certificateChain":"%s","certificateType":"V2GCertificate"}]' % CERT,
                     '[3,"d1",{"status":"Accepted"}]'),
                    ('[2,"d2","InstallCertificate",{"certificateType":"CSMSRootCertificate","certificate":"%s"}]' % CERT,
                     '[3,"d2",{"status":"Accepted"}]'),
                    ('[2,"d3","SetVariables-Signed",%s]' % JWS, '[3,"d3",%s]' % JWS),
                ]:
                    await relay_down(ws, conn, text, answer)


async def test_signed_calls_without_the_csms_get_a_callerror(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:  # standalone: the gateway cannot answer what only the CSMS can verify
        async with connect(gw.url("S2"), subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
            async def rpc(text: str) -> list[Any]:
                await ws.send(text)
                return orjson.loads(await asyncio.wait_for(ws.recv(), 5))

            assert (await rpc('[2,"x1","TransactionEvent-Signed",%s]' % JWS))[:3] == [4, "x1", "InternalError"]
            assert (await rpc('[2,"x2","NoSuchThing-Signed",%s]' % JWS))[:3] == [4, "x2", "NotImplemented"]
            assert (await rpc('[2,"x3","Reset-Signed",%s]' % JWS))[:3] == [4, "x3", "NotSupported"]
            # and unsigned traffic goes on as before
            assert (await rpc('[2,"x4","Heartbeat",{}]'))[:2] == [3, "x4"]


async def test_signed_call_whose_csms_link_drops_gets_a_callerror_not_a_local_answer(tmp_path: Path) -> None:
    def answer(text: str) -> str | None:
        msg = orjson.loads(text)
        return None if msg[2].endswith("-Signed") else echo_answer(text)

    async with RawCsms(answer) as csms:
        async with gateway(tmp_path, upstream={"url": csms.url, "reconnect_min": 5.0}) as gw:
            async with connect(gw.url("SD1"), subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
                (conn,) = await csms.wait_connections(1)
                text = '[2,"sg1","TransactionEvent-Signed",%s]' % JWS
                await ws.send(text)
                assert await asyncio.wait_for(conn.received.get(), 5) == text
                await conn.ws.close()  # the CSMS goes away before answering
                reply = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                assert reply[:2] == [4, "sg1"]  # never a CALLRESULT the CSMS did not give
                # and ordinary messages are answered by the gateway meanwhile (buffer mode)
                await ws.send('[2,"h1","Heartbeat",{}]')
                assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))[:2] == [3, "h1"]
