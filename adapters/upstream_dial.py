"""What both upstream transports share (adapters/upstream_ws.py, adapters/upstream_picows.py):
the dialler's TLS context, the charger's URL and Authorization header, the cheap reachability
probe, and the masked client text frame with keys from one process-wide pool.

For a 1.6 charger an `upstream_password` that is an AuthorizationKey (32-40 hex digits) is sent as
its raw bytes, as OCPP-J 1.6 §6.2.2 says, unless `[upstream].authorization_key_bytes` is false."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway.config import ConfigError, Settings
from gateway.identity import url_segment
from gateway.protocol.frames import OcppVersion
from gateway.security import basic_header, is_hex_key

if TYPE_CHECKING:
    from adapters.credentials import CredentialBook

try:  # websockets' C helper where it was built
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

_KEYS = 1024  # masking keys drawn from the kernel's CSPRNG per read (one read per 1024 frames)


def abort_discarding(transport: asyncio.Transport) -> None:
    """Drop a dead link at once, discarding what waits in the kernel's send queue (SO_LINGER 0: an
    RST, not a FIN after the queue drained) instead of delivering it later on an orphaned
    connection: the message in flight is sent again (same message id) on the next link anyway."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def text_frame(data: bytes, key: bytes) -> bytes:
    """One unfragmented, masked client text frame (RFC 6455 §5.2), no extension."""
    n = len(data)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return head + key + apply_mask(data, key)


class _MaskingKeys:
    """Masking keys for every link of the process, from one pool (RFC 6455 §5.3: from the
    kernel's CSPRNG; websockets draws each with its own urandom call, which cost as much as the
    rest of the frame; a pool per link cost 4 KiB per charger)."""

    __slots__ = ("keys", "at")

    def __init__(self) -> None:
        self.keys = b""
        self.at = 0

    def next(self) -> bytes:
        at = self.at
        if at >= len(self.keys):
            self.keys, at = os.urandom(4 * _KEYS), 0
        self.at = at + 4
        return self.keys[at:at + 4]


_MASKS = _MaskingKeys()


def masked_text_frame(text: str) -> bytes:
    """`text` as one masked client text frame, its key from the process's pool."""
    return text_frame(text.encode(), _MASKS.next())


class UpstreamDialer:
    """The part of an upstream connector that does not depend on the transport."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        up = settings.upstream
        self.base = up.url
        self.ssl: ssl.SSLContext | None = None
        self.credentials: CredentialBook | None = None  # passwords the CSMS changed; wired by gateway/app.py
        if up.url.startswith("wss://"):
            try:
                self.ssl = ssl.create_default_context(cafile=up.ca_file or None)
                self.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
                if up.client_cert:
                    self.ssl.load_cert_chain(up.client_cert, up.client_key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"upstream.ca_file / client_cert / client_key: cannot load them "
                                  f"({exc.strerror or exc})") from exc

    def url(self, charger_id: str) -> str:
        return f"{self.base}/{url_segment(charger_id)}"

    def authorization(self, charger_id: str, version: OcppVersion, password: str | None) -> str | None:
        """The Authorization header for the charger's upstream link (HTTP Basic), or None."""
        if self.credentials is not None:
            password = self.credentials.upstream_password(charger_id, password)
        if not password:
            return None
        raw = password.encode("utf-8")
        if version is OcppVersion.V16 and self.settings.upstream.authorization_key_bytes and is_hex_key(password):
            raw = bytes.fromhex(password)
        return basic_header(charger_id, raw)

    async def probe(self) -> bool:
        """A cheap check whether the CSMS is reachable again: a TCP connection to its host and
        port, closed at once (no TLS, no WebSocket handshake, no charger identity)."""
        parts = urlsplit(self.base)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        try:
            async with asyncio.timeout(self.settings.upstream.connect_timeout):
                _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
