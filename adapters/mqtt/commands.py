"""The MQTT command channel: `{base}/chargers/{id}/cmd/{Action}` with the request as JSON; the
result goes to the MQTT 5 response topic (with the correlation data) or `.../cmd/{Action}/result`.

Home Assistant's controls publish plain values, so local control also takes them on "set" topics
(the result on `{topic}/result` likewise):
- `{base}/chargers/{id}/evse/{n}/pause/set`: `ON` pauses the EVSE (0: the whole charger), `OFF`
  resumes it (allow-list names Pause, Resume);
- `{base}/chargers/{id}/evse/{n}/limit/set`: a number of amperes, or `None` / empty to lift the
  operator's limit (Limit);
- `{base}/site/limit/set`: the site limit, likewise (SiteLimit).

The checks and the call are the core's (gateway/operator.py); this module only reads the topic
and payload and writes the result document: `{"status": "ok", "response": ...}`,
`{"status": "timeout", "error": ...}` or `{"status": "error", "error": {"code", "description"}}`
with OCPP-style codes (below). Retained commands are never run (they would run again at every
reconnect).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Collection
from typing import Any, Callable
from urllib.parse import unquote

from gateway.operator import LOCAL_COMMANDS, VARIABLES, Operator, OperatorError, parse_payload

log = logging.getLogger("gateway.telemetry.mqtt")

MAX_COMMANDS = 64  # commands running at once; more get an error result
_ACTION = re.compile(r"[A-Za-z0-9]{1,64}")

# OperatorError.kind -> the code in the result document (the control engine's own codes pass as they are)
CODES = {
    "bad_json": "FormatViolation", "bad_payload": "FormatViolation", "not_connected": "NotConnected",
    "unknown_action": "NotSupported", "action_not_allowed": "NotSupported", "not_permitted": "SecurityError",
    "busy": "Busy", "timeout": "Timeout",
}

Reply = Callable[[str, "bytes | None", dict[str, Any]], None]


def error(code: str, description: str) -> dict[str, Any]:
    return {"status": "error", "error": {"code": code, "description": description}}


def result_of(exc: OperatorError) -> dict[str, Any]:
    """An OperatorError as a result document."""
    if exc.kind == "invalid_payload" and exc.violation is not None:
        code = exc.violation.code
        return error(str(getattr(code, "value", code)), exc.violation.description)
    if exc.kind == "call_error" and exc.call is not None:
        return error(exc.call.code, exc.call.description)
    if exc.kind == "timeout":
        return {"status": "timeout", "error": {"code": "Timeout", "description": str(exc)}}
    return error(CODES.get(exc.kind, exc.kind), str(exc))


class Commands:
    """Runs the commands that arrive on `{base}/chargers/+/cmd/+` (one task each, bounded)."""

    def __init__(self, base: str, allowed: Collection[str], reply: Reply) -> None:
        self.base = base
        self.allowed = allowed
        self.reply = reply
        self.operator: Operator | None = None  # set by the gateway (attach_operator) before chargers connect
        self.running: set[asyncio.Task[None]] = set()

    @property
    def topic_filters(self) -> list[str]:
        return [f"{self.base}/chargers/+/cmd/+", f"{self.base}/chargers/+/evse/+/+/set", f"{self.base}/site/limit/set"]

    def received(self, topic: str, payload: bytes, retained: bool, response_topic: str | None,
                 correlation: bytes | None) -> None:
        if retained:
            log.warning("MQTT: ignoring a retained command on %s (commands must not be retained)", topic)
            return
        reply_to = response_topic or f"{topic}/result"
        if len(self.running) >= MAX_COMMANDS:
            self.reply(reply_to, correlation, error("Busy", "too many commands in progress"))
            return
        task = asyncio.ensure_future(self._run(topic, payload, reply_to, correlation))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def close(self) -> None:
        for task in list(self.running):
            task.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)

    async def _run(self, topic: str, payload: bytes, reply_to: str, correlation: bytes | None) -> None:
        try:
            result = await self.execute(topic, payload)
        except Exception as exc:  # noqa: BLE001 - always answer
            log.exception("MQTT command on %s failed", topic)
            result = error("InternalError", str(exc))
        self.reply(reply_to, correlation, result)

    async def execute(self, topic: str, payload: bytes) -> dict[str, Any]:
        levels = topic[len(self.base) + 1:].split("/")
        if levels == ["site", "limit", "set"] or (len(levels) == 6 and levels[0] == "chargers" and levels[2] == "evse"
                                                   and levels[5] == "set"):
            return await self._set(levels, payload)
        if len(levels) != 4 or levels[0] != "chargers" or levels[2] != "cmd":
            return error("BadTopic", "expected .../chargers/{id}/cmd/{Action}")
        charger_id, action = unquote(levels[1]), levels[3]
        if not _ACTION.fullmatch(action):
            return error("NotSupported", f"{action!r} is not an OCPP action name")
        operator = self.operator
        if operator is None:
            return error("NotConnected", "the gateway is starting")
        try:
            request = parse_payload(payload)
            if action == VARIABLES:
                return {"status": "ok", "response": await operator.set_variables(charger_id, request,
                                                                                 allowed=self.allowed, channel="mqtt")}
            if action in LOCAL_COMMANDS:
                return {"status": "ok", "response": await operator.local(charger_id, action, request,
                                                                         allowed=self.allowed, channel="mqtt")}
            return {"status": "ok", "response": await operator.call(charger_id, action, request,
                                                                    allowed=self.allowed, channel="mqtt")}
        except OperatorError as exc:
            return result_of(exc)

    async def _set(self, levels: list[str], payload: bytes) -> dict[str, Any]:
        """A Home Assistant control's plain value on a set topic (module docstring)."""
        operator = self.operator
        if operator is None:
            return error("NotConnected", "the gateway is starting")
        text = payload.decode("utf-8", "replace").strip()
        try:
            if levels[0] == "site":
                return {"status": "ok", "response": await operator.site_limit(
                    {"limit_a": _amperes(text)}, allowed=self.allowed, channel="mqtt")}
            charger_id, control = unquote(levels[1]), levels[4]
            if not levels[3].isdigit():
                return error("BadTopic", "the EVSE level must be a number")
            evse = int(levels[3])
            if control == "pause":
                if text.upper() not in ("ON", "OFF"):
                    return error("FormatViolation", "expected ON or OFF")
                command = "Pause" if text.upper() == "ON" else "Resume"
                body: dict[str, Any] = {"evse": evse}
            elif control == "limit":
                command, body = "Limit", {"evse": evse, "limit_a": _amperes(text)}
            else:
                return error("BadTopic", "expected .../evse/{n}/pause/set or .../evse/{n}/limit/set")
            return {"status": "ok", "response": await operator.local(charger_id, command, body, allowed=self.allowed,
                                                                     channel="mqtt")}
        except OperatorError as exc:
            return result_of(exc)


def _amperes(text: str) -> float | None:
    """A number of amperes as Home Assistant sends it ("16", "16.0"); "None" or nothing: none."""
    if text in ("", "None", "none", "null"):
        return None
    try:
        return float(text)
    except ValueError as exc:
        raise OperatorError("bad_payload", f"not a number of amperes: {text[:32]!r}") from exc
