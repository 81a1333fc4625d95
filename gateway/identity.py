"""Charger identities: the last path segment of the connection URL, percent-decoded and validated.

OCPP 2.0.1/2.1 Part 4 §3.1.1: identifierString, at most 48 characters, no ':' (it is the Basic auth
user name). The gateway also keeps to a safe character set, because the id ends up in upstream URLs,
MQTT topics, InfluxDB tags, log lines and SQL parameters: letters, digits and `. _ - ~ + * @` and the
space. Everything derived from an id is still escaped where it lands (topic levels, URL segments).
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

MAX_ID_LENGTH = 48
_SAFE = re.compile(r"[A-Za-z0-9._~+*@ -]+")


def validate_charger_id(charger_id: str) -> str | None:
    """None when the id is acceptable, else the reason."""
    if not charger_id:
        return "charger id is empty"
    if len(charger_id) > MAX_ID_LENGTH:
        return f"charger id is longer than {MAX_ID_LENGTH} characters"
    if ":" in charger_id:
        return "charger id must not contain ':'"
    if not _SAFE.fullmatch(charger_id):
        return "charger id may only contain letters, digits, space and . _ - ~ + * @"
    if charger_id.strip() != charger_id or charger_id in (".", ".."):
        return "charger id must not start or end with a space or be . or .."
    return None


def charger_id_from_path(path: str, prefix: str) -> tuple[str | None, str | None]:
    """(charger id, None) or (None, reason) for a request path such as `/ocpp/CP%20001?x=1`."""
    path = path.split("?", 1)[0]
    base = prefix.rstrip("/") + "/"
    if not path.startswith(base):
        return None, "not found"
    raw = path[len(base):]
    if not raw or "/" in raw:
        return None, "not found"
    try:
        charger_id = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        return None, "charger id is not valid UTF-8"
    problem = validate_charger_id(charger_id)
    return (None, problem) if problem else (charger_id, None)


def url_segment(charger_id: str) -> str:
    """The id as one percent-encoded URL path segment (for the upstream URL)."""
    return quote(charger_id, safe="")
