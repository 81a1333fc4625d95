"""The gateway as the site's own CSMS: answers every charger-initiated action of 1.6, 2.0.1 and 2.1.

Used in standalone mode (no upstream url). Answers that carry meaning are written out here; every
other action gets the smallest schema-conformant answer, built from its response schema with the
most conservative enum value (see `gateway.protocol.responses`). A test checks every answer of every
version against the response schema.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from gateway.auth import LocalAuthorizer
from gateway.config import Settings
from gateway.ports import Store
from gateway.protocol.frames import Call, OcppVersion
from gateway.protocol.responses import minimal_response
from gateway.protocol.schemas import SchemaRegistry


def iso_now(now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return now.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LocalCsms:
    def __init__(self, settings: Settings, store: Store, schemas: SchemaRegistry, auth: LocalAuthorizer) -> None:
        self.settings = settings
        self.store = store
        self.schemas = schemas
        self.auth = auth
        self._minimal: dict[tuple[OcppVersion, str], dict[str, Any]] = {}

    # -- authorization --------------------------------------------------------------------------

    def _status(self, charger_id: str, version: OcppVersion, id_tag: str | None) -> str:
        if id_tag is None:
            return "Accepted"
        return self.auth.for_version(self.auth.decide(charger_id, id_tag), version)

    def _id_tag_info(self, charger_id: str, id_tag: str | None) -> dict[str, Any]:
        return {"status": self._status(charger_id, OcppVersion.V16, id_tag)}

    def _id_token_info(self, charger_id: str, version: OcppVersion, token: dict[str, Any] | None) -> dict[str, Any]:
        if token is not None and token.get("type") == "NoAuthorization":
            return {"status": "Accepted"}
        tag = token.get("idToken") if token else None
        return {"status": self._status(charger_id, version, tag)}

    # -- answers --------------------------------------------------------------------------------

    async def answer(self, version: OcppVersion, call: Call, charger_id: str = "", now: datetime | None = None,
                     transaction_id: int | None = None) -> dict[str, Any]:
        """The local answer. `transaction_id`: the id for a 1.6 StartTransaction (else one from the
        standalone counter)."""
        stamp = iso_now(now)
        p = call.payload
        action = call.action
        if action == "BootNotification":
            return {"status": "Accepted", "currentTime": stamp, "interval": self.settings.local.heartbeat_interval}
        if action == "Heartbeat":
            return {"currentTime": stamp}
        if version is OcppVersion.V16:
            if action == "Authorize":
                return {"idTagInfo": self._id_tag_info(charger_id, p.get("idTag"))}
            if action == "StartTransaction":
                tx = transaction_id if transaction_id is not None else await self.store.next_transaction_id()
                return {"transactionId": tx, "idTagInfo": self._id_tag_info(charger_id, p.get("idTag"))}
            if action == "StopTransaction":
                return {"idTagInfo": self._id_tag_info(charger_id, p["idTag"])} if "idTag" in p else {}
        else:
            if action == "Authorize":
                return {"idTokenInfo": self._id_token_info(charger_id, version, p.get("idToken"))}
            if action == "TransactionEvent":
                return {"idTokenInfo": self._id_token_info(charger_id, version, p["idToken"])} if "idToken" in p else {}
        return self._minimal_answer(version, action, stamp)

    def _minimal_answer(self, version: OcppVersion, action: str, stamp: str) -> dict[str, Any]:
        key = (version, action)
        template = self._minimal.get(key)
        if template is None:
            schema = self.schemas.load(version, action, response=True) or {}
            template = self._minimal[key] = minimal_response(schema, "\x00now\x00")
        return _fill_now(template, stamp)


def _fill_now(value: Any, stamp: str) -> Any:
    if value == "\x00now\x00":
        return stamp
    if isinstance(value, dict):
        return {k: _fill_now(v, stamp) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_now(v, stamp) for v in value]
    return value
