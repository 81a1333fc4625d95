"""A store with nothing in it, for benches of the live relay path (bench/session_path.py): no
backlog, no id map, no authorization lists; what the session writes is dropped."""

from __future__ import annotations

from typing import Any


class NullStore:
    async def tx_map(self, charger_id: str) -> list[tuple[int, int | None]]:
        return []

    async def has_backlog(self, charger_id: str) -> bool:
        return False

    async def charger_seen(self, charger_id: str, version: str, transport: str, when: str) -> None:
        pass

    async def auth_load(self) -> tuple[list[Any], list[Any]]:
        return [], []

    async def chargers_with_backlog(self) -> list[tuple[str, str]]:
        return []
