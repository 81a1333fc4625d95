"""Property-based fuzzing of the SOAP codec (adapters/soap/codec.py), bounded for CI.

Whatever bytes arrive, the codec returns an envelope / payload or raises SoapError (which the server
turns into a Fault); nothing else escapes. Payloads survive encode -> bytes -> parse -> decode.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from hypothesis import HealthCheck, given, settings, strategies as st

from adapters.soap import codec
from adapters.soap.codec import SoapError
from adapters.soap.contract import CS, contract

FUZZ = settings(max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
NS = contract(CS, "1.6").namespace
ENVELOPE = ('<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
            'xmlns:o="{ns}"><s:Header><o:chargeBoxIdentity>{id}</o:chargeBoxIdentity></s:Header><s:Body>{body}'
            '</s:Body></s:Envelope>')
ELEMENTS = ["authorizeRequest", "bootNotificationRequest", "heartbeatRequest", "statusNotificationRequest",
            "meterValuesRequest", "startTransactionRequest", "stopTransactionRequest", "dataTransferRequest",
            "authorizeResponse", "noSuchRequest"]
FIELDS = ["idTag", "connectorId", "status", "errorCode", "timestamp", "meterStart", "transactionId", "values",
          "value", "chargePointVendor", "chargePointModel", "vendorId", "data", "x"]
# XML 1.0 characters (others cannot be written at all)
xml_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\ufffe\uffff"
                                 + "".join(chr(c) for c in range(1, 32) if c not in (9, 10, 13))), max_size=30)


def decode_all(data: bytes) -> None:
    try:
        env = codec.parse_envelope(data)
        codec.read_headers(env)
        c, op, is_response, _ = codec.lookup(CS, env)
        payload = codec.decode(CS, c.version, op, is_response, env)
    except SoapError as exc:
        assert exc.code in ("Sender", "Receiver", "VersionMismatch")
        assert codec.fault(exc, NS).startswith(b"<")
        return
    assert isinstance(payload, dict)


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes(data: bytes) -> None:
    decode_all(data)


@FUZZ
@given(st.text(max_size=300))
def test_any_text(text: str) -> None:
    decode_all(text.encode("utf-8", "surrogatepass"))


body_element = st.recursive(
    xml_text.map(escape),
    lambda inner: st.builds(lambda name, children: f"<o:{name}>{''.join(children)}</o:{name}>",
                            st.sampled_from(FIELDS), st.lists(inner, max_size=4)),
    max_leaves=12,
)


@FUZZ
@given(st.sampled_from(ELEMENTS), st.lists(body_element, max_size=5), xml_text)
def test_envelopes_with_random_bodies(element: str, children: list[str], identity: str) -> None:
    body = f"<o:{element}>{''.join(children)}</o:{element}>"
    decode_all(ENVELOPE.format(ns=NS, id=escape(identity), body=body).encode("utf-8"))


@FUZZ
@given(st.lists(st.sampled_from(["<", ">", "&", "<!--", "-->", "<![CDATA[", "]]>", "<?x?>", "&#0;", "&#x110000;",
                                 "&amp;", "<o:idTag>", "</o:idTag>", "<s:Body>", "\x00", "\xff", "é"]), max_size=20))
def test_markup_debris_in_the_body(parts: list[str]) -> None:
    body = "<o:authorizeRequest>" + "".join(parts) + "</o:authorizeRequest>"
    decode_all(ENVELOPE.format(ns=NS, id="CP1", body=body).encode("utf-8", "surrogateescape"))


@FUZZ
@given(xml_text.filter(lambda s: 0 < len(s.strip()) <= 20 and s == s.strip()))
def test_authorize_round_trip(id_tag: str) -> None:
    c = contract(CS, "1.6")
    op = c.by_element("authorizeRequest")[0]  # type: ignore[index]
    data = codec.to_bytes(codec.encode(CS, "1.6", op, False, {"idTag": id_tag}))
    env = codec.parse_envelope(data)
    assert codec.decode(CS, "1.6", op, False, env) == {"idTag": id_tag}


def test_entity_expansion_and_huge_nesting_are_refused() -> None:
    laughs = b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><l>&b;</l>'
    deep = ENVELOPE.format(ns=NS, id="CP1", body="<o:x>" * 100_000 + "</o:x>" * 100_000).encode()
    for data in (laughs, deep):
        try:
            codec.parse_envelope(data)
        except SoapError:
            continue
        raise AssertionError("accepted")
