"""Clearing what an earlier run published for a charger that is forgotten now.

The encoder clears the retained topics and Home Assistant configs it published itself (topics.py
`_forget`). A charger remembered from an earlier run (gateway/registry.py) and forgotten after a
restart also has retained topics from that run the encoder never saw: a second after the forget
(when the encoder's own clearing messages are out), the sweep subscribes for a few seconds to that
charger's retained branches and its discovery configs, and clears every retained message the
broker hands over (retained flag set, payload not empty). Only while connected: a forget while the
broker is away leaves those older topics (the encoder's own are spooled and cleared as usual).

The filters never overlap the command subscriptions (`…/cmd/+`, `…/evse/+/+/set`), so no command
is delivered twice or taken for a retained value: a message on a sweep filter is never a command.
"""

from __future__ import annotations

from typing import Callable

from adapters.mqtt import discovery as ha
from adapters.mqtt.topics import topic_level

SWEEP_DELAY = 1.0  # s after the forget: the encoder's own clearing messages are out by then
SWEEP_SECONDS = 5.0  # how long the broker has to hand over the retained messages


def matches(pattern: str, topic: str) -> bool:
    p, t = pattern.split("/"), topic.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(p) == len(t)


def filters(base: str, ha_prefix: str, site_id: str, charger_id: str) -> list[str]:
    """The retained branches of one charger and its discovery configs (none overlaps a command filter)."""
    level = topic_level(charger_id)
    root = f"{base}/chargers/{level}"
    return [f"{root}/+", f"{root}/evse/+/+", f"{root}/evse/+/meter/#", f"{root}/environment/+",
            f"{root}/variables/+", f"{ha_prefix}/+/{ha.node_id(site_id, level)}/+/config"]


class Sweeps:
    """The sweeps under way: `start` them (subscribing), feed `received` every message, `stop` them."""

    def __init__(self, subscribe: Callable[[list[str]], object], unsubscribe: Callable[[list[str]], object],
                 clear: Callable[[str], object]) -> None:
        self._subscribe, self._unsubscribe, self._clear = subscribe, unsubscribe, clear
        self.active: list[list[str]] = []
        self.cleared = 0

    def start(self, patterns: list[str]) -> None:
        self.active.append(patterns)
        self._subscribe(patterns)

    def stop(self, patterns: list[str]) -> None:
        if patterns in self.active:
            self.active.remove(patterns)
            self._unsubscribe(patterns)

    def received(self, topic: str, payload: bytes, retained: bool) -> bool:
        """True when the message is the sweep's (then it is never a command)."""
        if not any(matches(p, topic) for patterns in self.active for p in patterns):
            return False
        if retained and payload:
            self.cleared += 1
            self._clear(topic)
        return True
