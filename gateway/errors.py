"""The core's own exceptions. Adapters catch their library's exceptions and raise these."""

from __future__ import annotations


class GatewayError(Exception):
    pass


class LinkClosed(GatewayError):
    """The link (charger or upstream) is closed; nothing more can be sent or received on it."""


class LinkFailed(GatewayError):
    """An upstream connection attempt failed (refused, TLS, HTTP status, timeout, no subprotocol)."""


class NotConnected(GatewayError):
    """The charger has no live connection."""


class CallFailed(GatewayError):
    """A CALL the gateway made was answered with a CALLERROR."""

    def __init__(self, code: str, description: str, details: dict | None = None) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.details = details or {}


class CallTimeout(GatewayError):
    """A CALL the gateway made got no answer in time."""


class Busy(GatewayError):
    """Too many calls are already waiting for this charger."""
