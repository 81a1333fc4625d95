"""The telemetry path in one process, stage by stage: the CPU to normalise one 1.6 MeterValues
(four sampled values, as bench.telemetry sends) and to turn its records into MQTT messages,
MQTT PUBLISH packets and InfluxDB lines. No I/O, no event-loop wake-ups, warm caches: a floor
for what the sinks add per relayed call, and a quick check of a change to one stage.

    python -m bench.telemetry_path            # best of 15 passes over 2000 MeterValues, per stage

The requests are parsed from JSON text with orjson, as the gateway parses frames; 20 chargers,
every timestamp different. Needs only the gateway's own dependencies.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tempfile
import time
from datetime import datetime, timezone
from types import SimpleNamespace

import orjson

from bench._common import REPO
from bench.telemetry import SAMPLES

N = 2000
PASSES = 15


async def main() -> None:
    sys.path.insert(0, str(REPO))
    from adapters import influx
    from adapters.mqtt import MqttSink
    from gateway.config import Settings
    from gateway.telemetry.normalise import Normaliser

    with tempfile.TemporaryDirectory(prefix="bench-telemetry-path-") as tmp:
        settings = Settings(site_id="bench", mqtt={"url": "mqtt://127.0.0.1:1"})
        sink = MqttSink(settings.mqtt, tmp, "bench")  # not started: only its encoder is used
        normaliser = Normaliser()
        now = datetime.now(timezone.utc)
        requests = []
        for i in range(N):
            stamp = f"2026-01-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z"
            samples = [dict(s, value=str(float(s["value"]) + i % 7)) for s in SAMPLES]
            requests.append((f"B{i % 20:04d}", orjson.loads(orjson.dumps(
                {"connectorId": 1, "meterValue": [{"timestamp": stamp, "sampledValue": samples}]}))))
        best: dict[str, float] = {}
        gc.disable()
        try:
            for _ in range(PASSES):
                t = time.perf_counter()
                records = [r for cid, req in requests
                           for r in normaliser.records(cid, "ocpp1.6", "MeterValues", req, {}, now)]
                times = {"normalise": time.perf_counter() - t}
                t = time.perf_counter()
                messages = [m for r in records for m in sink.encode(r)]
                times["MQTT messages"] = time.perf_counter() - t
                lane = sink.lane  # framed as the sink does: the fast lane's window, onto a buffer
                assert lane is not None  # QoS 1 with fast_publish (the defaults)
                lane.sock, lane.limit = SimpleNamespace(out=bytearray()), len(messages) + 1
                lane.window.clear()
                t = time.perf_counter()
                lane.backlog.extend(messages)
                lane.pump()
                times["MQTT packets"] = time.perf_counter() - t
                t = time.perf_counter()
                lines = [line for r in records for line in influx.encode(r, "bench")]
                times["InfluxDB lines"] = time.perf_counter() - t
                for k, v in times.items():
                    best[k] = min(best.get(k, v), v)
        finally:
            gc.enable()
    print(f"per MeterValues ({len(messages) // N} MQTT messages, {len(lines) // N} InfluxDB lines), best of {PASSES}:")
    for k, v in best.items():
        print(f"  {k:15} {v / N * 1e6:6.2f} us")
    print(f"  {'total':15} {sum(best.values()) / N * 1e6:6.2f} us")


if __name__ == "__main__":
    asyncio.run(main())
