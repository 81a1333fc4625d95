"""Operator calls: the one place where a request from a person (REST, MQTT) becomes a call to a
charger or a local-control command. The adapters only translate: their input into `call`,
`pause` or `resume`, and an `OperatorError` (or the result) into their own format (an HTTP status
and JSON body; an MQTT `.../result` document).

What is checked, in this order, for an OCPP call:
1. the charger is connected (`not_connected`);
2. the action is an action of the charger's OCPP version (`unknown_action`) that a CSMS may send
   (`action_not_allowed`);
3. the action is on the channel's allow-list (`not_permitted`): REST allows every CSMS-to-charger
   action to the holder of the API token (the token is the operator's credential); MQTT allows
   only `[mqtt].command_actions` (anyone who may publish to `.../cmd/+` on the broker could
   otherwise change credentials or firmware);
4. the payload is a JSON object (`bad_payload`) that passes the action's schema (`invalid_payload`).
Then the call goes through the charger's one-outstanding queue; its failures are `not_connected`,
`busy`, `timeout` and `call_error` (the charger's CALLERROR).

Pause, Resume and Limit are local-control commands, not OCPP actions: `{"evse": n}`,
`{"transaction_id": ...}` or `{}` (the whole charger, EVSE 0); Limit takes `{"evse": n, "limit_a":
A or null}`. SiteLimit (`{"limit_a": A or null}`) sets the site's limit. They need the allow-list
too (by their names).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any, Protocol

import orjson

from gateway.control.engine import ControlError
from gateway.errors import Busy, CallFailed, CallTimeout, GatewayError, NotConnected
from gateway.protocol.frames import OcppVersion
from gateway.protocol.schemas import SchemaRegistry, SchemaViolation

log = logging.getLogger("gateway.operator")

LOCAL_COMMANDS = ("Pause", "Resume", "Limit")
VARIABLES = "Variables"  # the variables mirror's command: set values or read again (gateway/mirror.py)
EVERY_ACTION: frozenset[str] = frozenset({"*"})  # an allow-list that allows every action


class OperatorError(GatewayError):
    """An operator request that was not carried out. `kind` is one of: bad_json, bad_payload,
    not_connected, unknown_action, action_not_allowed, not_permitted, invalid_payload, busy,
    timeout, call_error, and for Pause/Resume the control engine's codes (disabled,
    unknown_transaction, bad_request). `violation` is set for invalid_payload, `call` (code,
    description, details) for call_error."""

    def __init__(self, kind: str, message: str, *, violation: SchemaViolation | None = None,
                 call: CallFailed | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.violation = violation
        self.call = call


class Charger(Protocol):
    """What an operator call needs of a charger's session."""

    @property
    def connected(self) -> bool: ...

    version: OcppVersion

    async def call_charger(self, action: str, payload: dict[str, Any],
                           timeout: float | None = None) -> dict[str, Any]: ...


class LocalControl(Protocol):
    """What Pause and Resume need of the control engine (gateway.control.engine.ControlEngine)."""

    async def pause(self, cid: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def resume(self, cid: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def limit(self, cid: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def set_site_limit(self, body: dict[str, Any]) -> dict[str, Any]: ...


def parse_payload(raw: bytes) -> dict[str, Any]:
    """A request body: empty means `{}`; anything else must be a JSON object."""
    if not raw.strip():
        return {}
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OperatorError("bad_json", f"the body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise OperatorError("bad_payload", "the body must be a JSON object")
    return payload


def permitted(action: str, allowed: Collection[str]) -> bool:
    return "*" in allowed or action in allowed


class Operator:
    """Operator calls for every channel. `sessions` maps charger ids to their sessions (the hub's
    live view); `control` is the control engine, or None when local control is not running."""

    def __init__(self, sessions: Mapping[str, Any], schemas: SchemaRegistry,
                 control: LocalControl | None = None) -> None:
        self.sessions = sessions
        self.schemas = schemas
        self.control = control
        self.variables: Any = None  # gateway.mirror.VariablesMirror, when the mirror runs

    def charger(self, charger_id: str) -> Charger:
        session = self.sessions.get(charger_id)
        if session is None or not session.connected:
            raise OperatorError("not_connected", f"charger {charger_id!r} is unknown or not connected")
        return session

    def check(self, charger_id: str, action: str, payload: dict[str, Any],
              allowed: Collection[str] = EVERY_ACTION) -> Charger:
        """Steps 1 to 4 of the module docstring; the session to call."""
        session = self.charger(charger_id)
        version, schemas = session.version, self.schemas
        if not schemas.knows(version, action):
            raise OperatorError("unknown_action", f"{action!r} is not an action of {version.value}")
        if not schemas.csms_may_send(version, action):
            raise OperatorError("action_not_allowed", f"{action} is not sent by a CSMS in {version.value}")
        if not permitted(action, allowed):
            raise OperatorError("not_permitted", f"{action} is not on this channel's allow-list")
        violation = schemas.validate(version, action, payload)
        if violation is not None:
            raise OperatorError("invalid_payload", f"{action} payload: {violation.description}", violation=violation)
        return session

    async def call(self, charger_id: str, action: str, payload: dict[str, Any], *,
                   allowed: Collection[str] = EVERY_ACTION, timeout: float | None = None,
                   channel: str = "api") -> dict[str, Any]:
        """Check, then call the charger; its answer payload. Raises OperatorError."""
        session = self.check(charger_id, action, payload, allowed)
        log.info("operator call %s to %s (%s)", action, charger_id, channel, extra={"charger_id": charger_id})
        try:
            return await session.call_charger(action, payload, timeout=timeout)
        except NotConnected as exc:
            raise OperatorError("not_connected", str(exc)) from exc
        except Busy as exc:
            raise OperatorError("busy", str(exc)) from exc
        except CallTimeout as exc:
            raise OperatorError("timeout", f"{charger_id} did not answer {action} in time ({exc})") from exc
        except CallFailed as exc:
            raise OperatorError("call_error", f"{charger_id} answered {action} with {exc.code}", call=exc) from exc

    async def local(self, charger_id: str, command: str, body: dict[str, Any], *,
                    allowed: Collection[str] = EVERY_ACTION, channel: str = "api") -> dict[str, Any]:
        """Pause, Resume or Limit (`command`); what the gateway now applies. Raises OperatorError."""
        if command not in LOCAL_COMMANDS:
            raise OperatorError("unknown_action", f"{command!r} is not a local-control command")
        if not permitted(command, allowed):
            raise OperatorError("not_permitted", f"{command} is not on this channel's allow-list")
        if self.control is None:
            raise OperatorError("disabled", "local control is not running")
        log.info("operator %s of %s (%s): %s", command.lower(), charger_id, channel, body,
                 extra={"charger_id": charger_id})
        try:
            if command == "Pause":
                return await self.control.pause(charger_id, body)
            if command == "Limit":
                return await self.control.limit(charger_id, body)
            return await self.control.resume(charger_id, body)
        except ControlError as exc:
            raise OperatorError(exc.code, str(exc)) from exc

    async def site_limit(self, body: dict[str, Any], *, allowed: Collection[str] = EVERY_ACTION,
                         channel: str = "api") -> dict[str, Any]:
        """SiteLimit: the site's current limit set at run time. Raises OperatorError."""
        if not permitted("SiteLimit", allowed):
            raise OperatorError("not_permitted", "SiteLimit is not on this channel's allow-list")
        if self.control is None:
            raise OperatorError("disabled", "local control is not running")
        log.info("operator site limit (%s): %s", channel, body)
        try:
            return await self.control.set_site_limit(body)
        except ControlError as exc:
            raise OperatorError(exc.code, str(exc)) from exc

    async def set_variables(self, charger_id: str, request: dict[str, Any], *,
                            allowed: Collection[str] = EVERY_ACTION, channel: str = "api") -> dict[str, Any]:
        """`Variables`: `{"values": {NAME: VALUE, ...}}`, `{"values": [{"name", "value"}, ...]}`,
        `{"name", "value"}` (the charger's status per item, `{"results": [...]}`) or
        `{"refresh": true}` (the read's state). The names are checked by the mirror
        (`[variables].set_allowed`, credentials). Raises OperatorError."""
        from gateway.mirror import MirrorError, set_pairs

        if not permitted(VARIABLES, allowed):
            raise OperatorError("not_permitted", f"{VARIABLES} is not on this channel's allow-list")
        mirror = self.variables
        if mirror is None or not mirror.cfg.enabled:
            raise OperatorError("disabled", "the variables mirror is off")
        try:
            pairs = set_pairs(request)
            if pairs is None:
                return dict(await mirror.refresh(charger_id))
            log.info("operator set of %d variable(s) of %s (%s)", len(pairs), charger_id, channel,
                     extra={"charger_id": charger_id})
            return {"results": await mirror.set_values(charger_id, pairs)}
        except MirrorError as exc:
            raise OperatorError("bad_payload" if exc.code == "bad_request" else exc.code, str(exc)) from exc
