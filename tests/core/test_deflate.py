"""adapters/deflate.py: permessage-deflate negotiation and codec, checked against websockets' own
implementation as the independent peer (its server answers the same offers; its client-side
extension object compresses what we inflate and inflates what we compress)."""

from __future__ import annotations

import base64
import gc
import random
import tracemalloc
import zlib
from typing import Any

import pytest
from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate as WsPerMessageDeflate,
    enable_server_permessage_deflate,
)
from websockets.frames import Frame, Opcode
from websockets.headers import build_extension, parse_extension
from websockets.http11 import Request
from websockets.server import ServerProtocol

from adapters.deflate import DeflateParams, MessageTooBig, PerMessageDeflate, negotiate
from gateway.errors import ProtocolError

MiB = 1 << 20

# ---------------------------------------------------------------------------------------------
# Negotiation


def websockets_answer(offer: str) -> str | None:
    """What websockets' server, configured as it is by default, answers to `offer`."""
    protocol = ServerProtocol(extensions=enable_server_permessage_deflate(None))
    headers = Headers()
    headers["Host"] = "gateway"
    headers["Upgrade"] = "websocket"
    headers["Connection"] = "Upgrade"
    headers["Sec-WebSocket-Key"] = base64.b64encode(bytes(16)).decode()
    headers["Sec-WebSocket-Version"] = "13"
    headers["Sec-WebSocket-Extensions"] = offer
    response = protocol.accept(Request("/", headers))
    assert response.status_code == 101, response.body
    return response.headers.get("Sec-WebSocket-Extensions")


PMD = "permessage-deflate"
DEFAULT = f"{PMD}; server_max_window_bits=12"  # our answer to a bare offer
USUAL = f"{PMD}; server_max_window_bits=12; client_max_window_bits=12"  # to "client_max_window_bits"

# (offer, our answer, the parameters) - every one of these is also answered by websockets' server.
TABLE: list[tuple[str, str | None, DeflateParams | None]] = [
    # Firefox and Safari: a bare offer; the client then compresses with a 2^15 window.
    (PMD, DEFAULT, DeflateParams(False, False, 12, 15)),
    # Chrome, websockets' client (and so the `ocpp` package's examples, which connect with it).
    (f"{PMD}; client_max_window_bits", USUAL, DeflateParams(False, False, 12, 12)),
    # RFC 7692 5.1 / 7.1: two offers, the first acceptable one wins.
    (
        f"{PMD}; client_max_window_bits; server_max_window_bits=10, {PMD}; client_max_window_bits",
        f"{PMD}; server_max_window_bits=10; client_max_window_bits=12",
        DeflateParams(False, False, 10, 12),
    ),
    # server_max_window_bits=8 cannot be honoured (zlib): the next offer is taken.
    (f"{PMD}; server_max_window_bits=8, {PMD}; client_max_window_bits", USUAL, DeflateParams(False, False, 12, 12)),
    (f"{PMD}; server_max_window_bits=8", None, None),
    (f"{PMD}; server_max_window_bits=9", f"{PMD}; server_max_window_bits=9", DeflateParams(False, False, 9, 15)),
    (f"{PMD}; server_max_window_bits=15", DEFAULT, DeflateParams(False, False, 12, 15)),
    # client_max_window_bits with a value: at most that, at most 12.
    (f"{PMD}; client_max_window_bits=8", f"{DEFAULT}; client_max_window_bits=8", DeflateParams(False, False, 12, 8)),
    (f"{PMD}; client_max_window_bits=10", f"{DEFAULT}; client_max_window_bits=10", DeflateParams(False, False, 12, 10)),
    (f"{PMD}; client_max_window_bits=15", USUAL, DeflateParams(False, False, 12, 12)),
    (f'{PMD}; client_max_window_bits="10"', f"{DEFAULT}; client_max_window_bits=10", DeflateParams(False, False, 12, 10)),
    # no context takeover: accepted (server) and echoed (client).
    (
        f"{PMD}; server_no_context_takeover; client_no_context_takeover",
        f"{PMD}; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12",
        DeflateParams(True, True, 12, 15),
    ),
    (
        f"{PMD}; client_no_context_takeover; client_max_window_bits",
        f"{PMD}; client_no_context_takeover; server_max_window_bits=12; client_max_window_bits=12",
        DeflateParams(False, True, 12, 12),
    ),
    (
        f"{PMD};server_no_context_takeover;client_max_window_bits=15",  # no spaces
        f"{PMD}; server_no_context_takeover; server_max_window_bits=12; client_max_window_bits=12",
        DeflateParams(True, False, 12, 12),
    ),
    # invalid offers are skipped, the next acceptable one is taken
    (f"{PMD}; server_max_window_bits, {PMD}", DEFAULT, DeflateParams(False, False, 12, 15)),  # value missing
    (f"{PMD}; server_max_window_bits=16", None, None),
    (f"{PMD}; server_max_window_bits=7", None, None),
    (f"{PMD}; server_max_window_bits=010", None, None),  # leading zero
    (f"{PMD}; client_max_window_bits=abc", None, None),
    (f"{PMD}; client_max_window_bits=16, {PMD}; client_max_window_bits=9", f"{DEFAULT}; client_max_window_bits=9",
     DeflateParams(False, False, 12, 9)),
    (f"{PMD}; server_no_context_takeover=1", None, None),
    (f"{PMD}; client_no_context_takeover=true", None, None),
    (f"{PMD}; server_no_context_takeover; server_no_context_takeover", None, None),  # duplicate
    (f"{PMD}; client_max_window_bits; client_max_window_bits=10", None, None),  # duplicate
    (f"{PMD}; x-unknown, {PMD}; client_max_window_bits", USUAL, DeflateParams(False, False, 12, 12)),
    # other extensions are not ours; the offer after them is
    ("x-webkit-deflate-frame", None, None),
    (f"x-webkit-deflate-frame, {PMD}", DEFAULT, DeflateParams(False, False, 12, 15)),
    (f"permessage-foo; x=10, {PMD}; client_max_window_bits", USUAL, DeflateParams(False, False, 12, 12)),
    ("Permessage-Deflate", None, None),  # names are compared exactly, as websockets does
    # several header lines, joined with ", " by the caller; empty list elements are tolerated
    (f"foo, {PMD}", DEFAULT, DeflateParams(False, False, 12, 15)),
    (f", {PMD} , ,foo", DEFAULT, DeflateParams(False, False, 12, 15)),
]


@pytest.mark.parametrize(("offer", "answer", "params"), TABLE)
def test_negotiation_table(offer: str, answer: str | None, params: DeflateParams | None) -> None:
    assert negotiate(offer, True) == (answer, params)
    assert websockets_answer(offer) == answer  # websockets' server, by default, answers the same


@pytest.mark.parametrize(
    "offer",
    [
        f"{PMD}; ",  # a parameter name expected
        f"{PMD} junk",
        f'"{PMD}"',
        f'{PMD}; client_max_window_bits="10',  # unterminated
        f'{PMD}; client_max_window_bits="1 0"',  # not a token once unquoted
        f"{PMD}; client_max_window_bits=",
        f"{PMD}; =10",
    ],
)
def test_a_header_that_does_not_parse_means_no_compression(offer: str) -> None:
    # websockets refuses such a handshake (400); we go on without compression, which RFC 6455 allows
    assert negotiate(offer, True) == (None, None)


def test_nothing_offered_or_compression_disabled() -> None:
    assert negotiate(None, True) == (None, None)
    assert negotiate("", True) == (None, None)
    assert negotiate(f"{PMD}; client_max_window_bits", False) == (None, None)


# ---------------------------------------------------------------------------------------------
# Round trips against websockets' extension objects


def websockets_client(**offer: Any) -> tuple[WsPerMessageDeflate, PerMessageDeflate]:
    """Negotiate as a websockets client offering `offer` would: its offer goes through `negotiate`,
    our answer through its client factory. Returns (its client-side extension, our codec)."""
    factory = ClientPerMessageDeflateFactory(compress_settings={"memLevel": 5}, **offer)
    header = build_extension([(factory.name, factory.get_request_params())])
    answer, params = negotiate(header, True)
    assert answer is not None and params is not None
    [(name, response_params)] = parse_extension(answer)
    assert name == PMD
    client = factory.process_response_params(response_params, [])
    assert isinstance(client, WsPerMessageDeflate)
    return client, PerMessageDeflate(params, max_size=4 * MiB)


OFFERS: list[dict[str, Any]] = [
    {},  # websockets' default: client_max_window_bits
    {"client_max_window_bits": None},  # a bare offer
    {"server_no_context_takeover": True, "client_no_context_takeover": True},
    {"client_no_context_takeover": True},
    {"server_no_context_takeover": True},
    {"server_max_window_bits": 9, "client_max_window_bits": 9},
    {"server_max_window_bits": 15, "client_max_window_bits": 15},
    {"server_max_window_bits": 10},
]


def messages() -> list[bytes]:
    """OCPP-like text that repeats across messages (context takeover pays), an empty message, and a
    large one with repeats 2000 bytes apart (beyond a 2^9 or 2^10 window)."""
    rng = random.Random(7)
    out = []
    for i in range(6):
        out.append(
            b'[2,"%d","MeterValues",{"connectorId":1,"transactionId":42,"meterValue":[{"timestamp":'
            b'"2026-12-06T23:00:%02dZ","sampledValue":[{"value":"%d","measurand":"Energy.Active.Import.Register"}]}]}]'
            % (i, i, 1000 + i)
        )
    out.append(b"")
    block = bytes(rng.getrandbits(8) for _ in range(2000))
    out.append(block * 40 + b"tail")
    out.extend(out[:3])
    return out


def fragments(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


@pytest.mark.parametrize("offer", OFFERS, ids=lambda offer: ",".join(f"{k}={v}" for k, v in offer.items()) or "default")
@pytest.mark.parametrize("frame_size", [0, 7, 1500])  # 0: each message in one frame
def test_client_to_server(offer: dict[str, Any], frame_size: int) -> None:
    client, ours = websockets_client(**offer)
    for message in messages():
        parts = fragments(message, frame_size) if frame_size else [message]
        received = []
        for i, part in enumerate(parts):
            fin = i == len(parts) - 1
            frame = client.encode(Frame(Opcode.TEXT if i == 0 else Opcode.CONT, part, fin=fin))
            assert frame.rsv1 == (i == 0)
            received.append(ours.decode(bytes(frame.data), fin))
        assert b"".join(received) == message


@pytest.mark.parametrize("offer", OFFERS, ids=lambda offer: ",".join(f"{k}={v}" for k, v in offer.items()) or "default")
@pytest.mark.parametrize("frame_size", [0, 3, 1000])  # our payload cut into frames at arbitrary bytes
def test_server_to_client(offer: dict[str, Any], frame_size: int) -> None:
    client, ours = websockets_client(**offer)
    for message in messages():
        payload = ours.encode(message)
        parts = fragments(payload, frame_size) if frame_size else [payload]
        received = []
        for i, part in enumerate(parts):
            fin = i == len(parts) - 1
            frame = Frame(Opcode.TEXT if i == 0 else Opcode.CONT, part, fin=fin, rsv1=i == 0)
            received.append(bytes(client.decode(frame, max_size=None).data))
        assert b"".join(received) == message


def test_our_decoder_takes_a_payload_cut_anywhere() -> None:
    client, _ = websockets_client()
    payloads = [bytes(client.encode(Frame(Opcode.TEXT, m)).data) for m in messages()]
    for size in (1, 2, 5, 4096, 70_000):
        _, ours = websockets_client()
        client, _ = websockets_client()
        for message in messages():
            payload = bytes(client.encode(Frame(Opcode.TEXT, message)).data)
            parts = fragments(payload, size)
            out = b"".join(ours.decode(p, i == len(parts) - 1) for i, p in enumerate(parts))
            assert out == message
    assert payloads  # the same messages compress, so the cut ones above carried real data


def test_context_takeover_is_kept_unless_negotiated_away() -> None:
    message = messages()[0]
    keep = PerMessageDeflate(DeflateParams(False, False, 12, 12), max_size=MiB)
    first, second = keep.encode(message), keep.encode(message)
    assert len(second) < len(first) // 4  # the second refers to the first
    fresh = PerMessageDeflate(DeflateParams(True, False, 12, 12), max_size=MiB)
    assert fresh.encode(message) == fresh.encode(message) == first


def test_our_window_is_the_negotiated_one() -> None:
    # zlib holds a decompressor to its window only across calls: a message repeating the previous
    # one 2000 bytes back must not be encoded as a reference when we promised a 2^9 window.
    client, ours = websockets_client(server_max_window_bits=9)
    assert ours.params.server_max_window_bits == 9
    block = random.Random(2).randbytes(2000)
    for _ in range(3):
        payload = ours.encode(block)
        assert len(payload) > len(block)  # random data: no reference to the previous copy
        assert client.decode(Frame(Opcode.BINARY, payload, rsv1=True), max_size=None).data == block


def test_client_no_context_takeover_resets_the_decompressor_per_message() -> None:
    # RFC 7692 7.2.3.2: "Hello" twice from a sender that keeps its context; the second refers to the first
    hello, again = bytes.fromhex("f248cdc9c90700"), bytes.fromhex("f200110000")
    keep = PerMessageDeflate(DeflateParams(False, False, 15, 15), max_size=MiB)
    assert keep.decode(hello, True) == b"Hello" and keep.decode(again, True) == b"Hello"
    reset = PerMessageDeflate(DeflateParams(False, True, 15, 15), max_size=MiB)
    assert reset.decode(hello, True) == b"Hello"
    with pytest.raises(ProtocolError):  # a fresh stream cannot refer back: the reset happened
        reset.decode(again, True)


def test_the_client_window_is_what_the_decompressor_keeps() -> None:
    # zlib bounds back-references by the window it keeps between calls: a client that negotiated
    # client_max_window_bits=10 and still refers 2000 bytes back into its previous message fails.
    block = random.Random(1).randbytes(2000)
    sender = zlib.compressobj(wbits=-15)
    payloads = [(sender.compress(block) + sender.flush(zlib.Z_SYNC_FLUSH))[:-4] for _ in range(2)]
    assert len(payloads[1]) < 100  # the second message is a reference to the first
    wide = PerMessageDeflate(DeflateParams(False, False, 12, 15), max_size=MiB)
    assert [wide.decode(p, True) for p in payloads] == [block, block]
    narrow = PerMessageDeflate(DeflateParams(False, False, 12, 10), max_size=MiB)
    assert narrow.decode(payloads[0], True) == block
    with pytest.raises(ProtocolError):
        narrow.decode(payloads[1], True)


@pytest.mark.parametrize(
    ("frames", "text"),
    [
        (["f248cdc9c90700"], b"Hello"),  # RFC 7692 7.2.3.1
        (["f248cd", "c9c90700"], b"Hello"),  # 7.2.3.1, fragmented
        (["000500faff48656c6c6f"], b"Hello"),  # 7.2.3.3, a stored block (ends byte-aligned: the
        # appended tail then starts a block it does not finish, so only without context takeover)
        (["f348cdc9c9070000"], b"Hello"),  # 7.2.3.4, BFINAL set (and a byte after it)
        (["f24805000000ffffcac9c90700"], b"Hello"),  # 7.2.3.5, two blocks
        (["00"], b""),  # an empty message as a single 0x00 (7.2.3.6)
    ],
)
def test_rfc_7692_payloads(frames: list[str], text: bytes) -> None:
    takeover = not frames[0].startswith("00")
    ours = PerMessageDeflate(DeflateParams(client_no_context_takeover=not takeover), max_size=MiB)
    for _ in range(2):  # and a second message after it (on the same stream with context takeover)
        out = b"".join(ours.decode(bytes.fromhex(f), i == len(frames) - 1) for i, f in enumerate(frames))
        assert out == text


def test_after_a_bfinal_block_the_rest_of_the_message_is_dropped_not_kept() -> None:
    ours = PerMessageDeflate(DeflateParams(), max_size=MiB)
    assert ours.decode(bytes.fromhex("f348cdc9c90700"), False) == b"Hello"
    for _ in range(100):  # trailing data after the stream's end is neither inflated nor buffered
        assert ours.decode(b"\x00" * 10_000, False) == b""
    assert ours.decode(b"", True) == b""
    assert ours.decode(bytes.fromhex("f248cdc9c90700"), True) == b"Hello"  # the next message: a new stream


def test_payloads_may_be_views_of_the_framing_buffer() -> None:
    client, ours = websockets_client()
    for message in messages():
        buffer = bytearray(b"header" + bytes(client.encode(Frame(Opcode.TEXT, message)).data))
        out = ours.decode(memoryview(buffer)[6:], True)
        buffer[:] = bytes(len(buffer))  # the buffer reused: what was returned must not change
        assert out == message
    fresh = [PerMessageDeflate(ours.params, max_size=MiB) for _ in range(2)]
    assert fresh[0].encode(memoryview(b"x" * 100)) == fresh[1].encode(b"x" * 100)


def test_empty_message_round_trip_with_websockets() -> None:
    client, ours = websockets_client()
    assert ours.encode(b"") == b"\x00"
    assert client.decode(Frame(Opcode.TEXT, ours.encode(b""), rsv1=True), max_size=None).data == b""
    assert ours.decode(bytes(client.encode(Frame(Opcode.TEXT, b"")).data), True) == b""


# ---------------------------------------------------------------------------------------------
# The size cap


def compressed_zeros(total: int, step: int = MiB) -> bytes:
    """`total` zero bytes compressed (about 1030:1, DEFLATE's best), built without holding them."""
    sender = zlib.compressobj(9, zlib.DEFLATED, -9)
    chunk = bytes(min(step, total))
    parts = []
    for _ in range(total // len(chunk)):
        parts.append(sender.compress(chunk))
    parts.append(sender.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(parts)[:-4]


def test_exactly_max_size_passes_one_more_byte_does_not() -> None:
    message = random.Random(3).randbytes(5000) * 20
    client, _ = websockets_client()
    payload = bytes(client.encode(Frame(Opcode.BINARY, message)).data)
    params = negotiate(f"{PMD}; client_max_window_bits", True)[1]
    assert params is not None
    assert PerMessageDeflate(params, max_size=len(message)).decode(payload, True) == message
    with pytest.raises(MessageTooBig):
        PerMessageDeflate(params, max_size=len(message) - 1).decode(payload, True)
    # across fragments: the cap counts the whole message, and starts again with the next one
    ours = PerMessageDeflate(params, max_size=len(message))
    client, _ = websockets_client()
    for _ in range(3):
        frames = [client.encode(Frame(Opcode.BINARY if i == 0 else Opcode.CONT, part, fin=i == 9))
                  for i, part in enumerate(fragments(message, len(message) // 10))]
        assert b"".join(ours.decode(bytes(f.data), f.fin) for f in frames) == message


def MARGIN(cap: int) -> int:  # noqa: N802 - reads as a constant of the tests
    """What decoding may hold above the cap: the output buffer's growth step (1/8), a 32 KiB chunk
    in flight and the first one while it moves into the buffer, zlib's state (~40 KiB)."""
    return cap // 8 + 128 * 1024


def peak_while(call: Any) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        call()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_a_1_kib_payload_cannot_allocate_past_the_cap() -> None:
    bomb = compressed_zeros(MiB)  # DEFLATE inflates at most ~1030:1: 1 KiB makes ~1 MiB
    assert len(bomb) <= 1100
    cap = 64 * 1024
    ours = PerMessageDeflate(DeflateParams(False, False, 12, 15), max_size=cap)

    def inflate() -> None:
        with pytest.raises(MessageTooBig):
            ours.decode(bomb, True)

    assert peak_while(inflate) < cap + MARGIN(cap)


@pytest.mark.parametrize("frame_size", [0, 1024])  # one frame, or 1 KiB frames of one message
def test_a_100_mib_bomb_is_stopped_at_the_cap(frame_size: int) -> None:
    bomb = compressed_zeros(100 * MiB)  # ~100 KiB: no smaller payload inflates to 100 MiB
    cap = MiB
    parts = fragments(bomb, frame_size) if frame_size else [bomb]
    ours = PerMessageDeflate(DeflateParams(False, False, 12, 15), max_size=cap)
    inflated = 0

    def inflate() -> None:
        nonlocal inflated
        with pytest.raises(MessageTooBig):
            for i, part in enumerate(parts):
                inflated += len(ours.decode(part, i == len(parts) - 1))  # the caller would keep these; we count

    peak = peak_while(inflate)
    assert inflated <= cap
    assert peak < cap + MARGIN(cap)


def test_memory_estimate_matches_what_zlib_allocates() -> None:
    client, ours = websockets_client()  # the usual offer: both windows 2^12
    message = messages()[-1]
    payload = bytes(client.encode(Frame(Opcode.TEXT, message)).data)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        codec = PerMessageDeflate(ours.params, max_size=MiB)
        assert codec.decode(payload, True) == message
        assert codec.encode(message)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base  # the codec and its zlib streams
    finally:
        tracemalloc.stop()
    assert 40_000 < codec.memory < 60_000
    assert abs(held - codec.memory) < 8 * 1024
    assert PerMessageDeflate(DeflateParams(True, True, 12, 12), max_size=MiB).memory == 0
