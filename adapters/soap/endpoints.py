"""Where the gateway sends a SOAP charger's commands (its ChargePointService endpoint), and who
may move it.

OCPP-S chargers name their endpoint in `wsa:From` on every request. Believed blindly, one request
that names an existing charger would redirect its next RemoteStartTransaction anywhere, for good
(the endpoint is kept across restarts). So (docs/security.md, "SOAP endpoints"):

- `[chargers.ID].soap_endpoint` set: that is the endpoint, always; a different `wsa:From` is
  ignored (and logged).
- Otherwise `wsa:From` is taken only when its host is an IP address equal to the request's source
  address (a host name cannot be checked without trusting DNS), and not a loopback, link-local,
  multicast, unspecified or reserved address, nor one of the gateway host's own addresses, unless
  it lies in `[soap].trusted_endpoint_networks` (e.g. a charger simulator on the gateway host).
- Every change is logged at WARNING with the old and the new endpoint, and shown in the REST API
  (`soap_endpoint` of `GET /api/v1/chargers/{id}`).
- Endpoints saved by an earlier run (`data_dir/soap-endpoints.json`) are checked again at start.

Commands are posted without following redirects (`adapters/soap/server.py`).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from adapters.soap import codec
from gateway.config import Settings
from gateway.identity import validate_charger_id

log = logging.getLogger("gateway.soap")

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_endpoint(address: str | None) -> bool:
    """An address the charger can be called back at (not absent, anonymous or "none")."""
    if not address or address.startswith(codec.WSA) or address.startswith(codec.WSA_DRAFTS):
        return False
    parts = urlsplit(address)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _ip(text: str | None) -> IP | None:
    if not text:
        return None
    try:
        ip = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@functools.lru_cache(maxsize=1024)
def is_own_address(ip: IP) -> bool:
    """True when `ip` is an address of this host (binding to it succeeds)."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((str(ip), 0))
    except OSError:
        return False
    return True


def special(ip: IP) -> str | None:
    """Why an address may not be a charger's endpoint unless trusted, or None."""
    for name in ("loopback", "link_local", "multicast", "unspecified", "reserved"):
        if getattr(ip, f"is_{name}"):
            return f"a {name.replace('_', '-')} address"
    if is_own_address(ip):
        return "an address of the gateway host"
    return None


class EndpointBook:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in settings.soap.trusted_endpoint_networks]
        self.file = Path(settings.data_dir) / "soap-endpoints.json"
        self.urls: dict[str, str] = {}
        self.changes: dict[str, dict[str, Any]] = {}  # id -> {"since", "previous"} of the last change
        self._refused: set[tuple[str, str]] = set()  # (id, url) already logged
        for cid, url in self._load().items():
            why = self._address_problem(url)
            if why is not None:
                log.warning("SOAP charger %s: ignoring the saved endpoint %s (%s)", cid, url, why)
                continue
            self.urls[cid] = url

    def configured(self, charger_id: str) -> str | None:
        charger = self.settings.charger(charger_id)
        return charger.soap_endpoint or None if charger is not None else None

    def get(self, charger_id: str) -> str | None:
        return self.configured(charger_id) or self.urls.get(charger_id)

    def _address_problem(self, url: str) -> str | None:
        ip = _ip(urlsplit(url).hostname)
        if ip is None:
            return "its host is a name, not an address (set [chargers.ID].soap_endpoint to use a name)"
        why = special(ip)
        if why is not None and not any(ip in net for net in self.trusted):
            return f"{why} (allowed only within [soap].trusted_endpoint_networks)"
        return None

    def problem(self, charger_id: str, url: str, source: str) -> str | None:
        """Why `url` (a wsa:From) may not become the charger's endpoint, or None."""
        configured = self.configured(charger_id)
        if configured is not None:
            return None if url == configured else f"[chargers.{charger_id}].soap_endpoint is {configured}"
        host_ip, source_ip = _ip(urlsplit(url).hostname), _ip(source)
        if host_ip is None:
            return "its host is a name, not an address (set [chargers.ID].soap_endpoint to use a name)"
        if host_ip != source_ip:
            return f"its host is not the request's source address {source}"
        return self._address_problem(url)

    def offer(self, charger_id: str, url: str | None, source: str) -> bool:
        """A request's wsa:From: True when the endpoint changed (the caller saves it)."""
        if not is_endpoint(url):
            return False
        assert url is not None
        why = self.problem(charger_id, url, source)
        if why is not None:
            if (charger_id, url) not in self._refused:
                if len(self._refused) > 10_000:
                    self._refused.clear()
                self._refused.add((charger_id, url))
                log.warning("SOAP charger %s: wsa:From %s from %s not taken as its endpoint: %s", charger_id,
                            url[:200], source, why, extra={"charger_id": charger_id})
            return False
        if self.configured(charger_id) is not None or self.urls.get(charger_id) == url:
            return False
        previous = self.urls.get(charger_id)
        self.urls[charger_id] = url
        self.changes[charger_id] = {"since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                    "previous": previous}
        if previous is None:
            log.info("SOAP charger %s listens at %s", charger_id, url, extra={"charger_id": charger_id})
        else:
            log.warning("SOAP charger %s: endpoint changed from %s to %s (request from %s)", charger_id, previous,
                        url, source, extra={"charger_id": charger_id})
        return True

    def view(self, charger_id: str) -> dict[str, Any] | None:
        """For the REST API: the endpoint, where it comes from, and its last change."""
        url = self.get(charger_id)
        if url is None:
            return None
        change = self.changes.get(charger_id, {})
        return {"url": url, "source": "configured" if self.configured(charger_id) else "wsa:From",
                "changed_at": change.get("since"), "previous": change.get("previous")}

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
            return {k: v for k, v in data.items() if isinstance(v, str) and validate_charger_id(k) is None}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("ignoring %s: %s", self.file, exc)
            return {}

    def save(self) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.urls, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.file)
