"""One 2.x report the gateway asked for (GetBaseReport -> NotifyReport parts), followed part by part.

Parts are applied as they arrive (nothing is held back, so memory stays bounded by one part); the
assembly only tracks which `seqNo`s were seen: parts may come in any order, a part sent twice is
noticed, the report is complete once the part with `tbc = false` and every part before it arrived,
and a report whose parts stop coming (`idle` seconds after the last one) ends as `partial` with the
missing seqNos named. `max_variables` bounds what one charger may put into the mirror.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_MISSING_LISTED = 50  # missing seqNos named in a partial report's status


@dataclass(slots=True)
class ReportAssembly:
    request_id: int
    started: float  # monotonic time the request was sent
    idle: float  # s without a part before the report counts as cut short
    max_variables: int
    read_id: int | None = None  # the read this report belongs to (the store's generation)
    last_part: float = 0.0
    seen: set[int] = field(default_factory=set)
    last_seq: int | None = None  # the seqNo of the part with tbc = false
    variables: int = 0  # variables taken so far
    dropped: int = 0  # variables beyond max_variables
    duplicates: int = 0

    def __post_init__(self) -> None:
        self.last_part = self.started

    def part(self, seq_no: int, tbc: bool, count: int, now: float) -> int:
        """A part arrived with `count` variables: how many of them to take (0 for a duplicate part,
        fewer than `count` at the memory bound)."""
        self.last_part = now
        if seq_no in self.seen:
            self.duplicates += 1
            return 0
        if len(self.seen) >= self.max_variables + MAX_MISSING_LISTED:  # parts of nothing cannot grow it for ever
            self.dropped += count
            return 0
        self.seen.add(seq_no)
        if not tbc:
            self.last_seq = seq_no if self.last_seq is None else max(self.last_seq, seq_no)
        room = max(0, self.max_variables - self.variables)
        take = min(room, count)
        self.variables += take
        self.dropped += count - take
        return take

    @property
    def complete(self) -> bool:
        return self.last_seq is not None and len([s for s in self.seen if s <= self.last_seq]) == self.last_seq + 1

    def missing(self) -> list[int]:
        """seqNos not (yet) seen below the highest one known (at most MAX_MISSING_LISTED)."""
        top = self.last_seq if self.last_seq is not None else (max(self.seen) if self.seen else -1)
        out = []
        for s in range(top + 1):
            if s not in self.seen:
                out.append(s)
                if len(out) >= MAX_MISSING_LISTED:
                    break
        return out

    def cut_short(self, now: float) -> bool:
        """No part for `idle` seconds and not complete."""
        return not self.complete and now - self.last_part >= self.idle

    def deadline(self) -> float:
        return self.last_part + self.idle

    def status(self) -> dict[str, object]:
        state = "complete" if self.complete and not self.dropped else "partial"
        out: dict[str, object] = {"state": state, "parts": len(self.seen), "variables": self.variables}
        if not self.complete:
            out["missing_parts"] = self.missing()
            if self.last_seq is None:
                out["last_part_seen"] = False
        if self.dropped:
            out["dropped"] = self.dropped
        if self.duplicates:
            out["duplicate_parts"] = self.duplicates
        return out
