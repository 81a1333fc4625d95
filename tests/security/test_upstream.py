"""The upstream leg: wss:// to the CSMS verified against [upstream].ca_file, the gateway's own client
certificate for profile 3, the charger's configured upstream_password in Basic, and never the
charger's own Authorization header."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from gateway.security import basic_header
from tests.harness import free_port
from tests.security.conftest import Certs, gateway

BOOT201 = '[2,"b1","BootNotification",{"reason":"PowerUp","chargingStation":{"model":"M1","vendorName":"ACME"}}]'
ANSWER = '[3,"b1",{"currentTime":"2026-01-01T00:00:00Z","interval":300,"status":"Accepted"}]'


class TlsCsms:
    """A profile-3 CSMS: TLS with client certificates required; records what each connection showed."""

    def __init__(self, certs: Certs) -> None:
        self.certs = certs
        self.port = free_port()
        self.seen: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"wss://localhost:{self.port}/ocpp"

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.seen.append({"path": ws.request.path, "headers": dict(ws.request.headers.raw_items()),
                          "cert": ws.transport.get_extra_info("peercert")})
        async for message in ws:
            if isinstance(message, str) and message.startswith("[2,"):
                await ws.send('[3,"' + orjson.loads(message)[1] + '",{"currentTime":"2026-01-01T00:00:00Z",'
                              '"interval":300,"status":"Accepted"}]')

    async def __aenter__(self) -> "TlsCsms":
        self.server = await serve(self._handler, "127.0.0.1", self.port, ssl=self.certs.server(),
                                  select_subprotocol=lambda c, offered: offered[0] if offered else None)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.server.close()
        await self.server.wait_closed()


async def test_wss_upstream_with_client_certificate_and_basic(tmp_path: Path, certs: Certs) -> None:
    async with TlsCsms(certs) as csms:
        upstream = {"url": csms.url, "ca_file": certs.path("ca.pem"), "client_cert": certs.path("gateway-client.pem"),
                    "client_key": certs.path("gateway-client.key")}
        async with gateway(tmp_path, upstream=upstream,
                           chargers={"UP1": {"upstream_password": "upstream-secret-1234"}}) as gw:
            own = basic_header("UP1", "the-chargers-own-password")
            async with connect(gw.url("UP1"), subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                               additional_headers={"Authorization": own}) as ws:
                await ws.send(BOOT201)
                assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))[:2] == [3, "b1"]
            (seen,) = csms.seen
            assert seen["path"] == "/ocpp/UP1"
            # the gateway's own certificate (a Local Controller has its own, J201 §6.5), verified by the CSMS
            subject = dict(x for rdn in seen["cert"]["subject"] for x in rdn)
            assert subject["commonName"] == "ocpp-gateway"
            assert seen["headers"]["Authorization"] == "Basic " + base64.b64encode(b"UP1:upstream-secret-1234").decode()


async def test_untrusted_csms_is_not_used(tmp_path: Path, certs: Certs) -> None:
    """Without the CSMS's CA (system trust store only) the link fails; the charger is served locally."""
    async with TlsCsms(certs) as csms:
        async with gateway(tmp_path, upstream={"url": csms.url, "client_cert": certs.path("gateway-client.pem"),
                                               "client_key": certs.path("gateway-client.key"),
                                               "connect_timeout": 3.0}) as gw:
            async with connect(gw.url("UP2"), subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
                await ws.send(BOOT201)
                reply = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                assert reply[0] == 3  # answered by the gateway (buffer mode)
            assert csms.seen == []  # the TLS handshake never completed


async def test_csms_requiring_a_client_certificate_refuses_a_gateway_without_one(tmp_path: Path, certs: Certs) -> None:
    async with TlsCsms(certs) as csms:
        async with gateway(tmp_path, upstream={"url": csms.url, "ca_file": certs.path("ca.pem"),
                                               "connect_timeout": 3.0}) as gw:
            async with connect(gw.url("UP3"), subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
                await ws.send(BOOT201)
                assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))[0] == 3
            assert csms.seen == []
