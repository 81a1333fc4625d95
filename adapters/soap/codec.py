"""SOAP 1.2 envelopes for OCPP-S: hardened parsing, WS-Addressing headers, Faults, and zeep as the
(de)serializer of message bodies on the project's own contract (`contract.py`).

Payloads cross this module as OCPP-J JSON dictionaries in the *charger's* OCPP version (1.5 or
1.6); `convert.py` turns 1.5 payloads into 1.6 and back.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import zeep
import zeep.helpers
from lxml import etree
from zeep.settings import Settings as ZeepSettings

from adapters.soap.contract import Contract, Field, Operation, contract
from gateway.errors import RequestError

SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
WSA = "http://www.w3.org/2005/08/addressing"
WSA_ANONYMOUS = WSA + "/anonymous"
# Pre-release WS-Addressing namespaces some charger stacks still send (OCPP-S 1.6 §3 warns of them):
# read like the final one.
WSA_DRAFTS = ("http://schemas.xmlsoap.org/ws/2004/08/addressing", "http://schemas.xmlsoap.org/ws/2004/03/addressing")
CONTENT_TYPE = "application/soap+xml; charset=utf-8"


class SoapError(RequestError):
    """A request that gets a SOAP Fault: `code` is Sender|Receiver (or VersionMismatch), `subcode`
    an OCPP-S fault sub-code (S16 §4)."""

    def __init__(self, code: str, subcode: str, reason: str) -> None:
        super().__init__(f"{code}/{subcode}: {reason}")
        self.code = code
        self.subcode = subcode
        self.reason = reason

    @property
    def http_status(self) -> int:
        return 500 if self.code == "Receiver" else 400


# -- parsing -------------------------------------------------------------------------------------------

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                          huge_tree=False, remove_pis=True, collect_ids=False)


MAX_ELEMENTS = 10_000  # elements in one envelope (a 1.6 MeterValues with 200 samples has ~2 000)
MAX_DEPTH = 32  # element nesting (OCPP-S messages are at most about 8 deep)


def parse_envelope(data: bytes) -> etree._Element:
    """The SOAP 1.2 Envelope of `data`, parsed with no DTD, no entities and no network access, with
    at most MAX_ELEMENTS elements nested at most MAX_DEPTH deep (checked before and after parsing)."""
    head = data[:4096].lower()
    if b"<!doctype" in head or b"<!entity" in data.lower():
        raise SoapError("Sender", "ProtocolError", "DTDs and entity declarations are not allowed")
    if data.count(b"<") > 2 * MAX_ELEMENTS + 64:  # each element needs a '<' (two unless empty): refused unparsed
        raise SoapError("Sender", "ProtocolError", f"more than {MAX_ELEMENTS} elements")
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise SoapError("Sender", "ProtocolError", f"not well-formed XML: {exc}") from exc
    if root.getroottree().docinfo.doctype:
        raise SoapError("Sender", "ProtocolError", "DTDs are not allowed")
    _check_shape(root)
    if root.tag == f"{{{SOAP11}}}Envelope":
        raise SoapError("VersionMismatch", "ProtocolError", "OCPP-S requires SOAP 1.2")
    if root.tag != f"{{{SOAP12}}}Envelope":
        raise SoapError("Sender", "ProtocolError", "not a SOAP 1.2 Envelope")
    return root


def _check_shape(root: etree._Element) -> None:
    count = 0
    stack: list[tuple[etree._Element, int]] = [(root, 1)]
    while stack:
        el, depth = stack.pop()
        count += 1
        if count > MAX_ELEMENTS:
            raise SoapError("Sender", "ProtocolError", f"more than {MAX_ELEMENTS} elements")
        if depth > MAX_DEPTH:
            raise SoapError("Sender", "ProtocolError", f"elements nested deeper than {MAX_DEPTH}")
        stack.extend((child, depth + 1) for child in el)


def body_child(envelope: etree._Element) -> etree._Element:
    body = envelope.find(f"{{{SOAP12}}}Body")
    if body is None:
        raise SoapError("Sender", "ProtocolError", "no soap:Body")
    children = [c for c in body if isinstance(c.tag, str)]
    if len(children) != 1:
        raise SoapError("Sender", "ProtocolError", "soap:Body must hold exactly one element")
    return children[0]


@dataclass
class Addressing:
    """The WS-Addressing headers and the OCPP-S chargeBoxIdentity of one message."""

    action: str | None = None
    message_id: str | None = None
    relates_to: str | None = None
    to: str | None = None
    from_address: str | None = None
    reply_to: str | None = None
    identity: str | None = None


def read_headers(envelope: etree._Element) -> Addressing:
    out = Addressing()
    header = envelope.find(f"{{{SOAP12}}}Header")
    if header is None:
        return out
    for el in header:
        if not isinstance(el.tag, str):
            continue
        qn = etree.QName(el)
        if qn.localname.lower() == "chargeboxidentity":  # S16 §3.3: the name is case-insensitive
            out.identity = (el.text or "").strip()
        elif qn.namespace == WSA or qn.namespace in WSA_DRAFTS:
            name = qn.localname
            if name in ("From", "ReplyTo"):
                addr = el.find(f"{{{qn.namespace}}}Address")
                value = (addr.text or "").strip() if addr is not None else None
                setattr(out, "from_address" if name == "From" else "reply_to", value)
            elif name in ("Action", "MessageID", "RelatesTo", "To"):
                attr = {"Action": "action", "MessageID": "message_id", "RelatesTo": "relates_to", "To": "to"}[name]
                setattr(out, attr, (el.text or "").strip())
    return out


def add_headers(envelope: etree._Element, namespace: str, *, action: str, message_id: str,
                relates_to: str | None = None, to: str | None = None, from_address: str | None = None,
                reply_to: str | None = None, identity: str | None = None) -> None:
    header = envelope.find(f"{{{SOAP12}}}Header")
    if header is None:
        header = etree.Element(f"{{{SOAP12}}}Header")
        envelope.insert(0, header)
    for el in list(header):  # zeep's own header elements are replaced by ours
        header.remove(el)

    def add(tag: str, text: str | None = None, ns: str = WSA) -> etree._Element:
        el = etree.SubElement(header, f"{{{ns}}}{tag}", nsmap={"wsa": WSA} if ns == WSA else None)
        if text is not None:
            el.text = text
        return el

    if identity is not None:
        add("chargeBoxIdentity", identity, namespace).set(f"{{{SOAP12}}}mustUnderstand", "true")
    add("Action", action)
    add("MessageID", message_id)
    if relates_to:
        add("RelatesTo", relates_to)
    if from_address:
        etree.SubElement(add("From"), f"{{{WSA}}}Address").text = from_address
    if reply_to:
        etree.SubElement(add("ReplyTo"), f"{{{WSA}}}Address").text = reply_to
    add("To", to or WSA_ANONYMOUS)


def new_message_id() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def to_bytes(envelope: etree._Element) -> bytes:
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")


def fault(error: SoapError, namespace: str, relates_to: str | None = None) -> bytes:
    """A SOAP 1.2 Fault: Code/Value in the envelope namespace, Subcode/Value in the OCPP namespace."""
    env = etree.Element(f"{{{SOAP12}}}Envelope", nsmap={"soap": SOAP12, "wsa": WSA, "ocpp": namespace})
    header = etree.SubElement(env, f"{{{SOAP12}}}Header")
    etree.SubElement(header, f"{{{WSA}}}Action").text = "http://www.w3.org/2005/08/addressing/soap/fault"
    etree.SubElement(header, f"{{{WSA}}}MessageID").text = new_message_id()
    if relates_to:
        etree.SubElement(header, f"{{{WSA}}}RelatesTo").text = relates_to
    f = etree.SubElement(etree.SubElement(env, f"{{{SOAP12}}}Body"), f"{{{SOAP12}}}Fault")
    code = etree.SubElement(f, f"{{{SOAP12}}}Code")
    etree.SubElement(code, f"{{{SOAP12}}}Value").text = f"soap:{error.code}"
    sub = etree.SubElement(code, f"{{{SOAP12}}}Subcode")
    etree.SubElement(sub, f"{{{SOAP12}}}Value").text = f"ocpp:{error.subcode}"
    reason = etree.SubElement(etree.SubElement(f, f"{{{SOAP12}}}Reason"), f"{{{SOAP12}}}Text")
    reason.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    reason.text = error.reason
    return to_bytes(env)


def read_fault(envelope: etree._Element) -> SoapError | None:
    body = envelope.find(f"{{{SOAP12}}}Body")
    f = body.find(f"{{{SOAP12}}}Fault") if body is not None else None
    if f is None:
        return None

    def local(path: str) -> str:
        el = f.find(path)
        text = (el.text or "").strip() if el is not None else ""
        return text.rsplit(":", 1)[-1]

    return SoapError(local(f"{{{SOAP12}}}Code/{{{SOAP12}}}Value") or "Receiver",
                     local(f"{{{SOAP12}}}Code/{{{SOAP12}}}Subcode/{{{SOAP12}}}Value") or "InternalError",
                     local(f"{{{SOAP12}}}Reason/{{{SOAP12}}}Text"))


# -- bodies through zeep -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _binding(role: str, version: str) -> Any:
    c = contract(role, version)
    settings = ZeepSettings(strict=False, forbid_entities=True, forbid_dtd=True, forbid_external=True,
                            xml_huge_tree=False)
    client = zeep.Client(io.BytesIO(c.wsdl()), settings=settings)
    return client.wsdl.bindings[c.binding]


def warm_up() -> None:
    """Build the four contracts and load them into zeep (a few hundred ms; run it in a thread)."""
    for role in ("cs", "cp"):
        for version in ("1.5", "1.6"):
            _binding(role, version)


def _utc(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)  # OCPP times are UTC (S16 and O16 §3.5)
    text = value.astimezone(dt.timezone.utc).isoformat()
    return text.replace("+00:00", "Z")


def _from_zeep(f: Field, value: Any) -> Any:
    if value is None:
        return None
    if f.repeated and isinstance(value, list):
        items = [_from_zeep_item(f, v) for v in value]
        return [v for v in items if v is not None] or None
    return _from_zeep_item(f, value)


def _from_zeep_item(f: Field, value: Any) -> Any:
    if value is None:
        return None
    if f.kind == "complex":
        out = {}
        for c in f.children:
            v = _from_zeep(c, value.get(c.name) if isinstance(value, dict) else getattr(value, c.name, None))
            if v is not None:
                out[c.name] = v
        return out
    if f.kind == "text":
        get = value.get if isinstance(value, dict) else (lambda k: getattr(value, k, None))
        out = {"value": get("_value_1") if get("_value_1") is not None else ""}
        for a in f.children:
            if get(a.name) is not None:
                out[a.name] = get(a.name)
        return out
    if f.kind == "dateTime":
        return _utc(value) if isinstance(value, dt.datetime) else str(value)
    if f.kind == "decimal":
        if isinstance(value, Decimal):
            return int(value) if value == value.to_integral_value() else float(value)
        return value
    return value


def _to_zeep(f: Field, value: Any) -> Any:
    if value is None:
        return None
    if f.repeated:
        items = value if isinstance(value, list) else [value]
        return [_to_zeep_item(f, v) for v in items]
    return _to_zeep_item(f, value)


def _to_zeep_item(f: Field, value: Any) -> Any:
    if f.kind == "complex":
        if not isinstance(value, dict):
            raise ValueError(f"{f.name} must be an object")
        return {c.name: _to_zeep(c, value[c.name]) for c in f.children if value.get(c.name) is not None}
    if f.kind == "text":
        out = {"_value_1": str(value.get("value", ""))}
        out.update({a.name: value[a.name] for a in f.children if value.get(a.name) is not None})
        return out
    if f.kind == "decimal":
        return Decimal(str(value))
    if f.kind == "int":
        return int(value)
    if f.kind == "boolean":
        return bool(value)
    return str(value)


def _reorder(element: etree._Element, f: Field) -> None:
    """Put the child elements in the contract's order (stable; unknown ones last), recursively.

    zeep reads an xsd:sequence in order and silently skips an element that comes too early; some
    chargers do not keep the WSDL's order, and their fields must not get lost."""
    if f.kind != "complex":
        return
    by_name = {c.name: (i, c) for i, c in enumerate(f.children)}
    unknown = (len(by_name), None)
    children = [c for c in element if isinstance(c.tag, str)]
    ranked = [(by_name.get(etree.QName(c).localname, unknown), c) for c in children]
    ranks = [r[0][0] for r in ranked]
    if ranks != sorted(ranks):
        for c in children:
            element.remove(c)
        ranked.sort(key=lambda r: r[0][0])
        element.extend(c for _, c in ranked)
    for (_, sub), c in ranked:
        if sub is not None and sub.kind == "complex":
            _reorder(c, sub)


def decode(role: str, version: str, op: Operation, response: bool, envelope: etree._Element) -> dict[str, Any]:
    """The body of a request (or response) as an OCPP-J payload of that version. Raises SoapError."""
    zop = _binding(role, version).get(op.name)
    part = zop.output if response else zop.input
    _reorder(body_child(envelope), op.response if response else op.request)
    try:
        # the body only: zeep's deserialize() unwraps one-field responses, and headers are ours to read
        parts = part._deserialize_body(envelope.find(f"{{{SOAP12}}}Body"))
    except Exception as exc:  # noqa: BLE001 - zeep raises many kinds on malformed bodies
        raise SoapError("Sender", "ProtocolError", f"cannot read {op.name}: {exc}") from exc
    body = next(iter(parts.values()), None) if isinstance(parts, dict) else parts
    plain = zeep.helpers.serialize_object(body, dict) if body is not None else {}
    tree = op.response if response else op.request
    return _from_zeep(tree, plain if isinstance(plain, dict) else {}) or {}


def encode(role: str, version: str, op: Operation, response: bool, payload: dict[str, Any]) -> etree._Element:
    """A SOAP envelope (no headers yet) carrying `payload`; fields outside the contract are left out."""
    zop = _binding(role, version).get(op.name)
    tree = op.response if response else op.request
    kwargs = _to_zeep(tree, payload) or {}
    part = zop.output if response else zop.input
    if response:
        return part.serialize(**kwargs).content
    return part.serialize(_soapheaders={"ChargeBoxIdentity": ""}, **kwargs).content


def lookup(role: str, envelope: etree._Element) -> tuple[Contract, Operation, bool, etree._Element]:
    """The contract (by the body element's namespace) and operation of a message. Raises SoapError."""
    child = body_child(envelope)
    qn = etree.QName(child)
    for version in ("1.6", "1.5"):
        c = contract(role, version)
        if qn.namespace == c.namespace:
            found = c.by_element(qn.localname)
            if found is None:
                raise SoapError("Receiver", "NotSupported", f"unknown operation {qn.localname!r}")
            return c, found[0], found[1], child
    raise SoapError("Sender", "ProtocolError", f"unknown namespace {qn.namespace!r}")
