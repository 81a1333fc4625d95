"""What keeps the REST API from being used by someone else's web page, or without its token.

A browser on the gateway host (or one that reaches the API through a tunnel) runs whatever pages
it opens; those pages can send requests to the API and, through DNS rebinding, even read answers.
Three rules, checked before any handler runs (`middleware`):

1. **Host allow-list** (against DNS rebinding): the `Host` header must be an IP address literal
   (a rebinding attack needs a name the attacker controls), `localhost` (or `*.localhost`), or one
   of `[api].allowed_hosts`. Anything else: `421 Misdirected Request`.
2. **No cross-site writes**: POST, PUT and PATCH need `Content-Type: application/json` (a form or
   a "simple" cross-site fetch cannot send it without a CORS preflight, which the API never
   grants), else `415`; every unsafe method (those and DELETE) with an `Origin` header needs that
   origin's host to be the request's own `Host`, else `403`.
3. **A token by default**: `[api].token` unset means the gateway makes one on first start
   (`token_urlsafe(32)`), keeps it in `data_dir/api-token` (mode 0600) and logs where it is; the
   CLI reads it from there. `[api].token = ""` turns authentication off on purpose (refused by the
   settings beyond loopback) and is warned about at start. With a token, every path except
   `/healthz`, `/readyz`, the page shell and the OpenAPI document needs `Authorization: Bearer`.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
from typing import Awaitable, Callable
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from gateway.config import Settings
from gateway.opsclient import token_file

log = logging.getLogger("gateway.api")

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/api/v1/openapi.json"})
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def api_token(settings: Settings) -> str:
    """The token the API asks for ("" = none): the configured one, else the one kept in
    `data_dir/api-token`, made on first start. Logs where a generated token is."""
    configured = settings.api.token
    if configured is not None:
        token = configured.get_secret_value()
        if not token:
            log.warning("api.token is empty: the REST API asks no token, so every process on this host (and any "
                        "browser page it runs) can control the chargers; unset it to get a generated token")
        return token
    path = token_file(settings)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    if token:
        log.info("REST API token: kept in %s (the CLI reads it from there)", path.resolve())
        return token
    token = secrets.token_urlsafe(32)
    for _ in range(100):  # one in 64 begins with "-", which `--token VALUE` on a command line takes for an option
        if not token.startswith("-"):
            break
        token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    log.warning("REST API token generated and kept in %s (mode 0600): send it as 'Authorization: Bearer <token>'; "
                "the CLI reads it from there; set [api].token to choose your own", path.resolve())
    return token


def _host_name(host: str) -> str:
    """`Host` header value without its port, lower case, IPv6 brackets removed."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Guard:
    def __init__(self, settings: Settings, token: str) -> None:
        self.allowed = {h.strip().lower().rstrip(".") for h in settings.api.allowed_hosts}
        self._token = token.encode() if token else None

    def host_allowed(self, host: str | None) -> bool:
        if host is None:  # HTTP/1.0 without Host: not a browser
            return True
        name = _host_name(host).rstrip(".")
        return _is_ip(name) or name == "localhost" or name.endswith(".localhost") or name in self.allowed

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if not self.host_allowed(host):
            log.warning("API request for Host %r refused (not an address, localhost or [api].allowed_hosts)",
                        (host or "")[:100])
            return _error(421, "misdirected_request", "this Host is not served here; add it to [api].allowed_hosts")
        if request.method in UNSAFE and request.match_info.http_exception is None:  # unrouted: 404/405 as usual
            origin = request.headers.get("Origin")
            if origin is not None and not self._same_origin(origin, host):
                log.warning("API %s %s refused: cross-site request from Origin %r", request.method, request.path,
                            origin[:100])
                return _error(403, "cross_origin", "cross-site requests are refused")
            if request.method in WITH_BODY and request.content_type != "application/json":
                return _error(415, "unsupported_media_type", f"{request.method} needs Content-Type: application/json")
        if self._token is not None and request.path not in OPEN_PATHS:
            scheme, _, value = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self._token):
                return _error(401, "unauthorized", "a valid bearer token is required",
                              headers={"WWW-Authenticate": 'Bearer realm="ocpp-gateway"'})
        return await handler(request)

    @staticmethod
    def _same_origin(origin: str, host: str | None) -> bool:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or host is None:
            return False  # "null" (a sandboxed page, a file) and anything odd
        return parts.netloc.lower() == host.strip().lower()


def _error(status: int, error: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps({"error": error, "message": message}), status=status,
                        content_type="application/json", headers=headers)

