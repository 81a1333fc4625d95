"""MQTT: telemetry out, commands in, Home Assistant discovery (README "MQTT").

- driver.py: `MqttSink`, paho driven from the event loop, delivery and the spool;
- framing.py: the fast path (PUBLISH packets framed on paho's socket; the only module that
  touches paho internals), off with `[mqtt].fast_publish = false`;
- topics.py: records into messages, the topic layout (pure);
- discovery.py: Home Assistant discovery documents (pure);
- commands.py: the command channel, on top of gateway/operator.py.
"""

from __future__ import annotations

from adapters.mqtt.driver import MqttSink
from adapters.mqtt.topics import Encoder, topic_level

__all__ = ["Encoder", "MqttSink", "topic_level"]
