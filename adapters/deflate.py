"""permessage-deflate (RFC 7692) for a WebSocket server whose framing library has none (picows).

Two parts, both free of I/O:

- `negotiate(offer_header, enabled)`: reads the request's `Sec-WebSocket-Extensions` value (all
  header lines joined with ", "), accepts the first permessage-deflate offer it can honour and
  returns the response header value with the `DeflateParams` both sides will use.
- `PerMessageDeflate`: one connection's codec. `decode` inflates the data frames of a compressed
  message (the frame with RSV1 and its continuation frames) with a hard cap on the inflated size;
  `encode` compresses one whole outgoing message (the caller sets RSV1 on its first frame).

Server defaults are those of websockets' server (`enable_server_permessage_deflate`), so chargers
see the same answer whichever transport the gateway runs: our window is 2^12 (server_max_window_bits
=12, or less if the client asks), the client's window is limited to 2^12 when the client says it can
limit it (a `client_max_window_bits` offer), context takeover is kept in both directions unless the
client asks otherwise, and the compressor uses zlib's default level with memLevel 5.

What a connection costs (zlib state, measured with tracemalloc, zlib 1.2.13):
  - compressor, 2^12 window, memLevel 5: about 38 KiB for the connection's life (with
    server_no_context_takeover only while `encode` runs);
  - decompressor: about 7 KiB of state plus its window (4 KiB at 2^12, 32 KiB at 2^15 - the client's
    window when its offer does not mention client_max_window_bits, e.g. Firefox), the window
    allocated at the first compressed message; with client_no_context_takeover only while a
    message is being decoded.
So about 50 KiB per connection for the usual offer (Chrome, websockets, the `ocpp` package's
examples: "permessage-deflate; client_max_window_bits"), about 77 KiB for a bare
"permessage-deflate". `PerMessageDeflate.memory` gives the estimate for one connection.

`decode` raises `MessageTooBig` when the inflated message would exceed `max_size` (the caller closes
with 1009) and `gateway.errors.ProtocolError` on corrupt compressed data (the caller fails the
connection: 1002, as websockets does). MessageTooBig is a ProtocolError: catch it first.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.errors import ProtocolError

__all__ = ["DeflateParams", "MessageTooBig", "PerMessageDeflate", "negotiate"]

EXTENSION = "permessage-deflate"
TAIL = b"\x00\x00\xff\xff"  # the empty stored block a sync flush ends with; stripped by the sender (RFC 7692 7.2.1)

# Server configuration (websockets' server defaults, see the module docstring).
SERVER_WINDOW_BITS = 12  # our compressor's window at most; 9..15 (zlib cannot compress raw deflate with 8)
CLIENT_WINDOW_BITS = 12  # the window we ask of a client that offers client_max_window_bits
MEM_LEVEL = 5  # compressor hash table: 2^(5+9) bytes instead of zlib's default 2^(8+9)

_CHUNK = 32 * 1024  # inflate at most this much per zlib call (one CPython output block: no copy)
_IN_SLICE = 16 * 1024  # compressed input fed per zlib call
_JOIN_TAIL_BELOW = 4096  # frames shorter than this get the tail appended (one zlib call) rather than fed after
_WINDOW_VALUES = {str(bits): bits for bits in range(8, 16)}  # "8".."15": no sign, no leading zero


@dataclass(frozen=True, slots=True)
class DeflateParams:
    """The negotiated parameters, as effective values (15 where the response named no window)."""

    server_no_context_takeover: bool = False  # we start a fresh compressor for every message
    client_no_context_takeover: bool = False  # the client does: we start a fresh decompressor for every message
    server_max_window_bits: int = 15  # our compressor's window, 9..15
    client_max_window_bits: int = 15  # the client's compressor window (our decompressor's), 8..15


class MessageTooBig(ProtocolError):
    """The inflated message would exceed `max_size` (close with 1009)."""


# ---------------------------------------------------------------------------------------------
# Negotiation


class _Syntax(ProtocolError):
    """The header does not parse (never leaves this module: `negotiate` then declines)."""


_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _ows(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _token(text: str, pos: int) -> tuple[str, int]:
    end = pos
    while end < len(text) and text[end] in _TCHAR:
        end += 1
    if end == pos:
        raise _Syntax(f"token expected at {pos}")
    return text[pos:end], end


def _quoted(text: str, pos: int) -> tuple[str, int]:
    """A quoted-string starting at `pos` (the opening quote): its unescaped content and the position after it."""
    out: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == '"':
            return "".join(out), pos + 1
        if char == "\\":
            pos += 1
            if pos == len(text):
                break
            char = text[pos]
        if char < " " and char != "\t" or char == "\x7f":
            raise _Syntax(f"control character at {pos}")
        out.append(char)
        pos += 1
    raise _Syntax("unterminated quoted-string")


def _parse(header: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """`Sec-WebSocket-Extensions` (RFC 6455 9.1): a list of `name *(; param[=value])`; empty elements tolerated."""
    offers: list[tuple[str, list[tuple[str, str | None]]]] = []
    pos = _ows(header, 0)
    while pos < len(header):
        if header[pos] == ",":  # an empty list element
            pos = _ows(header, pos + 1)
            continue
        name, pos = _token(header, pos)
        params: list[tuple[str, str | None]] = []
        pos = _ows(header, pos)
        while pos < len(header) and header[pos] == ";":
            pname, pos = _token(header, _ows(header, pos + 1))
            value: str | None = None
            pos = _ows(header, pos)
            if pos < len(header) and header[pos] == "=":
                pos = _ows(header, pos + 1)
                if pos < len(header) and header[pos] == '"':
                    value, pos = _quoted(header, pos)
                    if not value or any(char not in _TCHAR for char in value):
                        raise _Syntax("a quoted value must be a token once unquoted")  # RFC 6455 9.1
                else:
                    value, pos = _token(header, pos)
                pos = _ows(header, pos)
            params.append((pname, value))
        if pos < len(header):
            if header[pos] != ",":
                raise _Syntax(f"',' or ';' expected at {pos}")
            pos = _ows(header, pos + 1)
        offers.append((name, params))
    return offers


def _accept(params: list[tuple[str, str | None]]) -> tuple[str, DeflateParams] | None:
    """The response to one permessage-deflate offer (RFC 7692 7.1), or None when it cannot be accepted."""
    seen: set[str] = set()
    server_nct = client_nct = False
    server_bits: int | None = None
    client_bits: int | None = None
    client_bits_offered = False
    for name, value in params:
        if name in seen:
            return None  # a duplicate parameter makes the offer invalid (7.1)
        seen.add(name)
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None  # these take no value
            if name == "server_no_context_takeover":
                server_nct = True
            else:
                client_nct = True
        elif name == "server_max_window_bits":
            if value is None or value not in _WINDOW_VALUES:
                return None  # a value is required, 8..15
            server_bits = _WINDOW_VALUES[value]
        elif name == "client_max_window_bits":
            client_bits_offered = True
            if value is not None:
                if value not in _WINDOW_VALUES:
                    return None
                client_bits = _WINDOW_VALUES[value]
        else:
            return None  # an unknown parameter (7.1: decline the offer)

    # server_no_context_takeover offered: we must accept it (7.1.1.1). client_no_context_takeover
    # offered: echoed, which binds the client and lets us drop its decompressor between messages.
    # server_max_window_bits=N: we must answer with at most N; N = 8 cannot be met, zlib refuses raw
    # deflate with a 2^8 window. Not offered: we may still name our (smaller) window (7.1.2.1).
    if server_bits is None:
        server_bits = SERVER_WINDOW_BITS
    elif server_bits < 9:
        return None
    else:
        server_bits = min(server_bits, SERVER_WINDOW_BITS)
    # client_max_window_bits: only when offered may we name it (7.1.2.2), and at most the offered
    # value; a client that did not offer it compresses with up to 2^15.
    answer_client_bits: int | None = None
    if client_bits_offered:
        answer_client_bits = CLIENT_WINDOW_BITS if client_bits is None else min(client_bits, CLIENT_WINDOW_BITS)

    parts = [EXTENSION]
    if server_nct:
        parts.append("server_no_context_takeover")
    if client_nct:
        parts.append("client_no_context_takeover")
    parts.append(f"server_max_window_bits={server_bits}")
    if answer_client_bits is not None:
        parts.append(f"client_max_window_bits={answer_client_bits}")
    return "; ".join(parts), DeflateParams(
        server_no_context_takeover=server_nct,
        client_no_context_takeover=client_nct,
        server_max_window_bits=server_bits,
        client_max_window_bits=answer_client_bits or 15,
    )


def negotiate(offer_header: str | None, enabled: bool) -> tuple[str | None, DeflateParams | None]:
    """The `Sec-WebSocket-Extensions` response value and parameters for the first acceptable
    permessage-deflate offer in `offer_header` (several header lines joined with ", "), or
    (None, None): compression disabled, nothing offered, no acceptable offer, or a header that does
    not parse (then the connection goes on without compression rather than failing)."""
    if not enabled or not offer_header:
        return None, None
    try:
        offers = _parse(offer_header)
    except _Syntax:
        return None, None
    for name, params in offers:
        if name != EXTENSION:
            continue  # another extension: we offer none
        accepted = _accept(params)
        if accepted is not None:
            return accepted
    return None, None


# ---------------------------------------------------------------------------------------------
# The codec


class PerMessageDeflate:
    """One connection's permessage-deflate codec (server side). Not thread-safe; after
    `MessageTooBig` or `ProtocolError` the object is spent (the connection closes)."""

    __slots__ = ("_eof", "_inflater", "_deflater", "_max_size", "_size", "params")

    def __init__(self, params: DeflateParams, max_size: int) -> None:
        if max_size <= 0:
            raise ValueError("max_size must be positive")
        self.params = params
        self._max_size = max_size
        self._inflater: zlib._Decompress | None = None  # created on first use, dropped per message without takeover
        self._deflater: zlib._Compress | None = None
        self._size = 0  # inflated bytes of the message being decoded
        self._eof = False  # the message being decoded ended its deflate stream (a BFINAL block)

    @property
    def memory(self) -> int:
        """Estimated bytes of zlib state this connection holds between messages (see the module docstring)."""
        total = 0
        if not self.params.server_no_context_takeover:
            bits = self.params.server_max_window_bits
            total += (1 << (bits + 2)) + (1 << (MEM_LEVEL + 9)) + 6 * 1024
        if not self.params.client_no_context_takeover:
            total += 7 * 1024 + (1 << self.params.client_max_window_bits)
        return total

    def decode(self, payload: bytes | bytearray | memoryview, fin: bool) -> bytes:
        """Inflate one data frame of a compressed message (the first has RSV1; its continuation
        frames follow until `fin`). Raises `MessageTooBig` before the message's inflated size
        would pass `max_size`, `ProtocolError` on corrupt data. `payload` may be a view of the
        framing library's buffer: nothing of it is kept after the call."""
        inflater = self._inflater
        if inflater is None:
            inflater = self._inflater = zlib.decompressobj(wbits=-self.params.client_max_window_bits)
        if fin:
            if len(payload) < _JOIN_TAIL_BELOW:
                parts: tuple[bytes | bytearray | memoryview, ...] = (b"".join((payload, TAIL)),)
            else:
                parts = (payload, TAIL)
        else:
            parts = (payload,)
        size = self._size
        first = b""  # the output: one piece (the usual case, no copy) or, past one piece, a BytesIO
        more: io.BytesIO | None = None
        for data in parts:
            feeds: Sequence[bytes | bytearray | memoryview] = (data,)
            if len(data) > _IN_SLICE:
                # Input in slices, so the unconsumed input zlib copies out on every capped call stays small.
                view = memoryview(data)
                feeds = [view[start : start + _IN_SLICE] for start in range(0, len(view), _IN_SLICE)]
            for feed in feeds:
                while not self._eof:
                    # At most one chunk per call, and never more than one byte past the cap: a bomb
                    # is stopped after max_size + 1 bytes, without the output held twice.
                    limit = min(self._max_size - size + 1, _CHUNK)
                    try:
                        piece = inflater.decompress(feed, limit)
                    except zlib.error as exc:
                        raise ProtocolError(f"permessage-deflate: corrupt compressed data ({exc})") from exc
                    size += len(piece)
                    if size > self._max_size:
                        raise MessageTooBig(f"inflated message larger than {self._max_size} bytes")
                    if piece:
                        if more is not None:
                            more.write(piece)
                        elif first:
                            more = io.BytesIO()  # grows in place: no list of pieces joined into a copy
                            more.write(first)
                            more.write(piece)
                            first = b""
                        else:
                            first = piece
                    if inflater.eof:
                        # A BFINAL block (RFC 7692 7.2.3.4): the stream is over; the rest of this
                        # message is neither inflated nor kept, and the next message needs a new stream.
                        self._eof = True
                        break
                    feed = inflater.unconsumed_tail
                    if not feed and len(piece) < limit:
                        break  # all input used and the output not cut short: nothing is pending
        if fin:
            self._size = 0
            if self._eof or self.params.client_no_context_takeover:
                # Without context takeover the next message starts afresh; after a BFINAL block it
                # must (a reference into the lost window then fails as corrupt data).
                self._inflater = None
                self._eof = False
        else:
            self._size = size
        return first if more is None else more.getvalue()

    def encode(self, data: bytes | bytearray | memoryview) -> bytes:
        """Compress one whole message: the payload of its frame(s), RSV1 on the first."""
        deflater = self._deflater
        if deflater is None:
            deflater = zlib.compressobj(wbits=-self.params.server_max_window_bits, memLevel=MEM_LEVEL)
            if not self.params.server_no_context_takeover:
                self._deflater = deflater
        out = deflater.compress(data) + deflater.flush(zlib.Z_SYNC_FLUSH)
        return out[:-4]  # a sync flush always ends with TAIL
