"""Listening sockets bound before they serve, and the one line that says why one cannot be bound.

The gateway binds every port it listens on before it opens any outside connection (MQTT, the
CSMS, InfluxDB): a port in use then ends the start before the broker or the CSMS ever saw this
gateway. A bound socket listens at once, so a charger that connects before the gateway serves
waits in the kernel's accept queue and is served a moment later; nothing is refused.

aiohttp servers (REST API, SOAP, HTTP binding) get their sockets from `bind` and serve them with
one `web.SockSite` each; the WebSocket server binds with `start_serving=False` (websockets passes
it to the event loop) and serves from `start_serving()`.
"""

from __future__ import annotations

import errno
import socket
from typing import Protocol

from gateway.config import split_listen
from gateway.errors import ListenerUnavailable

BACKLOG = 128

_WHY = {
    errno.EADDRINUSE: "address already in use (another program, or another gateway, listens there)",
    errno.EADDRNOTAVAIL: "not an address of this host",
    errno.EACCES: "permission denied (a port below 1024 needs CAP_NET_BIND_SERVICE)",
}


def listen_problem(key: str, listen: str, exc: OSError) -> str:
    """One line for the operator: which key, which address, what is wrong, how to change it."""
    section, _, name = key.partition(".")
    why = _WHY.get(exc.errno or 0) or exc.strerror or str(exc)
    env = f"OCPPGW_{section.upper()}__{name.upper()}"
    return f"{key} {listen}: {why}; change [{section}].{name} or set {env}=HOST:PORT"


def unavailable(key: str, listen: str, exc: OSError) -> ListenerUnavailable:
    return ListenerUnavailable(listen_problem(key, listen, exc))


def bind(key: str, listen: str) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for `listen` (HOST:PORT; every address HOST resolves
    to, as the event loop's create_server would). Raises ListenerUnavailable naming `key`."""
    host, port = split_listen(listen)
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does on POSIX
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # the v4 address gets its own
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise unavailable(key, listen, exc) from exc
    return sockets


class _Runner(Protocol):
    async def cleanup(self) -> None: ...


async def release(runner: _Runner | None, sockets: list[socket.socket]) -> None:
    """Stop an aiohttp server: its runner when it served, then the sockets bound for it (a socket
    bound but never served is still open). Empties `sockets`."""
    if runner is not None:
        await runner.cleanup()
    for sock in sockets:
        sock.close()
    sockets.clear()
