"""SOAP peers built from the official OCPP-S WSDLs (read from `../shared/ocpp-wsdl/`, never copied).

* `OfficialCharger`: a zeep client of the official CentralSystemService (1.5 or 1.6) that sends a
  charger's requests to the gateway, with `chargeBoxIdentity`, and `wsa:From`/`wsa:ReplyTo` added by
  a small plugin (zeep adds Action, MessageID and To itself for these WSDLs).
* `OfficialChargePoint`: an aiohttp server whose bodies are read and written by zeep with the
  official ChargePointService WSDL: it receives the gateway's calls and answers them.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import zeep
import zeep.helpers
from aiohttp import web
from lxml import etree
from zeep.plugins import Plugin

from tests.harness import free_port
from tests.soap import official

SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
WSA = "http://www.w3.org/2005/08/addressing"
CS_NS = {"1.5": "urn://Ocpp/Cs/2012/06/", "1.6": "urn://Ocpp/Cs/2015/10/"}
CP_NS = {"1.5": "urn://Ocpp/Cp/2012/06/", "1.6": "urn://Ocpp/Cp/2015/10/"}


class _FromReplyTo(Plugin):
    def __init__(self, from_address: str | None) -> None:
        self.from_address = from_address

    def egress(self, envelope: Any, http_headers: Any, operation: Any, binding_options: Any) -> Any:
        header = envelope.find(f"{{{SOAP12}}}Header")
        if self.from_address:
            frm = etree.SubElement(header, f"{{{WSA}}}From")
            etree.SubElement(frm, f"{{{WSA}}}Address").text = self.from_address
        reply = etree.SubElement(header, f"{{{WSA}}}ReplyTo")
        etree.SubElement(reply, f"{{{WSA}}}Address").text = WSA + "/anonymous"
        return envelope, http_headers


class OfficialCharger:
    """A SOAP charger: `await charger.call("BootNotification", chargePointVendor=...)` returns the
    response as a plain dict (zeep runs in a worker thread)."""

    def __init__(self, version: str, gateway_url: str, charger_id: str, from_address: str | None = None) -> None:
        self.version = version
        self.charger_id = charger_id
        wsdl = official.path("cs", version)
        self.client = zeep.Client(str(wsdl), plugins=[_FromReplyTo(from_address)])
        self.client.transport.operation_timeout = 20
        self.service = self.client.create_service(f"{{{CS_NS[version]}}}CentralSystemServiceSoap", gateway_url)

    def _call(self, op: str, kwargs: dict[str, Any]) -> Any:
        result = getattr(self.service, op)(_soapheaders={"ChargeBoxIdentity": self.charger_id}, **kwargs)
        return zeep.helpers.serialize_object(result, dict)

    async def call(self, op: str, **kwargs: Any) -> Any:
        return await asyncio.wait_for(asyncio.to_thread(self._call, op, kwargs), 25)


@dataclass
class Received:
    op: str
    payload: dict[str, Any]
    identity: str | None
    headers: dict[str, str] = field(default_factory=dict)


class OfficialChargePoint:
    """The charger's own ChargePointService on a free loopback port. `answers[op]` is a dict of
    response fields or a callable(payload) -> dict; `fault[op]` = (code, subcode) answers a Fault."""

    def __init__(self, version: str, answers: dict[str, Any]) -> None:
        self.version = version
        self.port = free_port()
        self.answers = answers
        self.faults: dict[str, tuple[str, str]] = {}
        self.received: list[Received] = []
        client = official.client("cp", version)
        self.binding = client.wsdl.bindings[f"{{{CP_NS[version]}}}ChargePointServiceSoap"]
        self._by_element = {op.input.body.qname: op for op in self.binding._operations.values()}
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/cp"

    async def _handle(self, request: web.Request) -> web.Response:
        env = etree.fromstring(await request.read(), etree.XMLParser(resolve_entities=False, no_network=True))
        body = env.find(f"{{{SOAP12}}}Body")[0]
        op = self._by_element[etree.QName(body).text]
        msg = op.input.deserialize(env)
        headers = {etree.QName(h).localname: (h.findtext(f"{{{WSA}}}Address") or h.text or "")
                   for h in env.find(f"{{{SOAP12}}}Header")}
        self.received.append(Received(op.name, zeep.helpers.serialize_object(msg.body, dict), headers.get(
            "chargeBoxIdentity"), headers))
        if op.name in self.faults:
            code, sub = self.faults[op.name]
            text = (f'<s:Envelope xmlns:s="{SOAP12}" xmlns:o="{CP_NS[self.version]}"><s:Body><s:Fault><s:Code>'
                    f"<s:Value>s:{code}</s:Value><s:Subcode><s:Value>o:{sub}</s:Value></s:Subcode></s:Code>"
                    f'<s:Reason><s:Text xml:lang="en">no</s:Text></s:Reason></s:Fault></s:Body></s:Envelope>')
            return web.Response(status=500, body=text.encode(), content_type="application/soap+xml")
        answer = self.answers.get(op.name, {})
        if callable(answer):
            answer = answer(self.received[-1].payload)
        out = op.output.serialize(**answer).content
        header = out.find(f"{{{SOAP12}}}Header")
        if header is None:
            header = etree.Element(f"{{{SOAP12}}}Header")
            out.insert(0, header)
        etree.SubElement(header, f"{{{WSA}}}Action").text = f"/{op.name}Response"
        etree.SubElement(header, f"{{{WSA}}}MessageID").text = f"urn:uuid:{uuid.uuid4()}"
        etree.SubElement(header, f"{{{WSA}}}RelatesTo").text = headers.get("MessageID", "")
        return web.Response(body=etree.tostring(out, xml_declaration=True, encoding="UTF-8"),
                            content_type="application/soap+xml")

    async def __aenter__(self) -> "OfficialChargePoint":
        app = web.Application()
        app.router.add_post("/cp", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def fault_codes(body: bytes) -> tuple[str, str]:
    env = etree.fromstring(body)
    code = env.findtext(f".//{{{SOAP12}}}Fault/{{{SOAP12}}}Code/{{{SOAP12}}}Value")
    sub = env.findtext(f".//{{{SOAP12}}}Fault/{{{SOAP12}}}Code/{{{SOAP12}}}Subcode/{{{SOAP12}}}Value")
    return code.split(":")[-1], sub.split(":")[-1]


