"""The MQTT sink's own framing: the PUBLISH packets it writes on paho's socket and the PUBACKs it
takes off the incoming stream before paho reads it (adapters/mqtt/framing.py). The end-to-end behaviour,
against a real Mosquitto, is in test_sinks.py and test_faults.py; here the byte-level edge cases,
over a real socket pair: packets cut anywhere, long remaining lengths, acknowledgements that belong
to paho, MQTT 5 reason codes."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from adapters.mqtt.framing import BatchedSocket as _BatchedSocket, publish_packet
from adapters.mqtt.framing import remaining_length as _remaining_length


@pytest.mark.parametrize("n, encoded", [
    (0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"), (16384, b"\x80\x80\x01"),
    (2097151, b"\xff\xff\x7f"), (2097152, b"\x80\x80\x80\x01"), (268435455, b"\xff\xff\xff\x7f"),
])
def test_remaining_length_is_mqtts_variable_byte_integer(n: int, encoded: bytes) -> None:
    assert _remaining_length(n) == encoded  # the examples of MQTT 3.1.1 §2.2.3


def test_publish_packets_match_the_specification() -> None:
    # QoS 1, retained, MQTT 3.1.1: 0x33, remaining length, topic length + topic, packet id, payload
    assert publish_packet("a/b", b"xy", 1, True, 0x0102, False) == b"\x33\x09\x00\x03a/b\x01\x02xy"
    # MQTT 5 adds an empty property list after the packet id
    assert publish_packet("a/b", b"xy", 1, False, 7, True) == b"\x32\x0a\x00\x03a/b\x00\x07\x00xy"
    # QoS 0 has no packet id
    assert publish_packet("t", b"", 0, False, 0, False) == b"\x30\x03\x00\x01t"
    big = publish_packet("t", b"x" * 200, 1, False, 1, False)
    assert big[:3] == b"\x32\xcd\x01" and len(big) == 3 + 205  # 205 = 2 + 1 + 2 + 200
    for bad in ("a/+/b", "a/#", "", "a\0b"):
        with pytest.raises(ValueError):
            publish_packet(bad, b"", 1, False, 1, False)


@pytest.mark.parametrize("v5", [False, True])
def test_the_window_frames_every_message_as_publish_packet_does(v5: bool) -> None:
    """The fast lane frames the usual message inline (a two-byte remaining length); every size
    around the bounds of that form, both retain flags, and a topic no client may publish to."""
    import types

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from adapters.mqtt.framing import FastLane

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=paho.MQTTv5 if v5 else paho.MQTTv311)
    lane = FastLane(client, 1, v5)
    lane.sock = types.SimpleNamespace(out=bytearray())  # type: ignore[assignment]
    topic = "gw/site/chargers/CP%201/evse/1/meter"
    messages = [(topic, b"x" * (size - len(topic) - 4 - v5), retain)
                for size in (100, 127, 128, 129, 300, 16383, 16384, 20000) for retain in (False, True)]
    messages.insert(3, ("a/+/b", b"never", True))
    lane.backlog.extend(messages)
    client._last_mid = 65530  # the ids wrap past 65535 on the way
    assert lane.pump()
    mids = [(65530 + j) % 65535 + 1 for j in range(len(messages))]
    expected = b"".join(publish_packet(t, p, 1, r, mid, v5) for (t, p, r), mid in zip(messages, mids) if "+" not in t)
    assert bytes(lane.sock.out) == expected
    assert len(lane.window) == len(messages) - 1 and not lane.backlog


def test_the_sinks_acknowledgements_are_taken_off_the_stream_and_the_rest_reaches_paho_whole() -> None:
    ours = {5, 6, 300}
    taken: list[tuple[int, int]] = []

    def take(mid: int, reason: int) -> bool:
        if mid in ours:
            taken.append((mid, reason))
            return True
        return False

    command = b"\x30" + _remaining_length(2 + 5 + 300) + b"\x00\x05a/cmd" + b"p" * 300  # a PUBLISH for paho
    stream = (b"\x40\x02\x00\x05"  # PUBACK, ours
              + command
              + b"\x40\x02\x00\x09"  # PUBACK for a message paho sent
              + b"\x40\x03\x00\x06\x87"  # MQTT 5 PUBACK with a reason code: refused, ours
              + b"\x40\x04\x01\x2c\x00\x00"  # reason code and an empty property list, ours (300)
              + b"\xd0\x00")  # PINGRESP, for paho
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        sock = _BatchedSocket(a, take)
        to_paho = bytearray()
        for i in range(0, len(stream), 3):  # cut everywhere, even inside a length or a packet id
            b.sendall(stream[i:i + 3])
            while True:
                try:
                    chunk = sock.recv(1)
                except BlockingIOError:
                    break
                to_paho += chunk
                if not sock.pending():
                    break
        assert taken == [(5, 0), (6, 0x87), (300, 0)]
        assert bytes(to_paho) == command + b"\x40\x02\x00\x09" + b"\xd0\x00"
        b.close()
        assert sock.recv(1) == b""  # the end of the stream reaches paho
    finally:
        a.close()
        b.close()


def test_a_read_of_nothing_but_pubacks_is_taken_in_one_go() -> None:
    """Behind a stream of QoS 1 telemetry a read holds only PUBACKs: the sink takes its own at once
    (one call for all of them) and paho still gets the one that was its own, whole."""
    window = {1, 2, 3, 65535}
    calls: list[tuple[int, ...]] = []

    def take_many(mids: tuple[int, ...]) -> list[int]:
        calls.append(mids)
        others = [m for m in mids if m not in window]
        window.difference_update(mids)
        return others

    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        sock = _BatchedSocket(a, lambda mid, reason: False, take_many)
        b.sendall(b"\x40\x02\x00\x01" b"\x40\x02\x00\x02" b"\x40\x02\x00\x63" b"\x40\x02\xff\xff" b"\x40\x02\x00\x03")
        assert sock.fill()
        assert calls == [(1, 2, 99, 65535, 3)] and not window
        assert sock.recv(4) == b"\x40\x02\x00\x63" and not sock.pending()  # 99 was paho's: it gets it whole
        # anything else in the read (here a PINGRESP between two PUBACKs): packet by packet, as before
        b.sendall(b"\x40\x02\x00\x07" b"\xd0\x00" b"\x40\x02\x00\x08")
        assert sock.fill()
        assert len(calls) == 1  # not the bulk path
        assert sock.recv(16) == b"\x40\x02\x00\x07\xd0\x00\x40\x02\x00\x08"  # the single-PUBACK callback said no
        b.close()
        assert not sock.fill()  # the peer closed it
    finally:
        a.close()
        b.close()


def test_mqtt5_pubacks_with_a_reason_code_are_taken_in_one_go_too() -> None:
    """MQTT 5: Mosquitto acknowledges a message to a topic nobody subscribes to with reason code
    0x10 ("no matching subscribers", 5 bytes), and the others with the 4-byte PUBACK: reads of
    either, or of both mixed, are taken in one call; paho gets its own packets as they came; a
    refusal (0x80 and up) goes packet by packet, so the sink counts and logs it."""
    window = {1, 2, 3, 4, 5, 6}
    calls: list[tuple[int, ...]] = []
    single: list[tuple[int, int]] = []

    def take_many(mids: tuple[int, ...]) -> list[int]:
        calls.append(mids)
        others = [m for m in mids if m not in window]
        window.difference_update(mids)
        return others

    def take_one(mid: int, reason: int) -> bool:
        single.append((mid, reason))
        return mid in window and not window.discard(mid)

    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        sock = _BatchedSocket(a, take_one, take_many)
        b.sendall(b"\x40\x03\x00\x01\x10" b"\x40\x03\x00\x63\x10" b"\x40\x03\x00\x02\x00")  # all 5 bytes
        assert sock.fill()
        assert calls == [(1, 99, 2)] and single == []
        assert sock.recv(16) == b"\x40\x03\x00\x63\x10" and not sock.pending()  # paho's, whole, reason and all
        b.sendall(b"\x40\x02\x00\x03" b"\x40\x03\x00\x04\x10" b"\x40\x02\x00\x64" b"\x40\x03\x00\x05\x10")  # mixed
        assert sock.fill()
        assert calls[1] == (3, 4, 100, 5) and single == []
        assert sock.recv(16) == b"\x40\x02\x00\x64" and not sock.pending()
        b.sendall(b"\x40\x03\x00\x06\x87")  # refused: not the bulk path
        assert sock.fill()
        assert len(calls) == 2 and single == [(6, 0x87)] and not window
    finally:
        a.close()
        b.close()


async def test_packet_ids_are_taken_from_pahos_sequence_and_wrap_past_65535(tmp_path: Any) -> None:
    from gateway.config import MqttSettings
    from adapters.mqtt import MqttSink

    sink = MqttSink(MqttSettings(url="mqtt://127.0.0.1:1"), str(tmp_path), "s")
    sink.client._last_mid = 65533
    assert sink.lane is not None and sink.lane.next_mids(4) == [65534, 65535, 1, 2]  # never 0
    assert sink.client._mid_generate() == 3  # paho's own next id follows on: no clash


async def test_meter_payloads_are_the_documents_orjson_would_write(tmp_path: Any) -> None:
    """The MQTT meter and environment payloads are put together from per-shape text; they must be
    the JSON documents of PRODUCT.md, key for key and in the same order, whatever the strings hold."""
    import json
    from datetime import datetime, timezone

    from gateway.config import MqttSettings
    from adapters.mqtt import MqttSink
    from gateway.telemetry.records import EnvironmentReading, MeterReading, MeterSample

    ts = datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=timezone.utc)
    sink = MqttSink(MqttSettings(url="mqtt://127.0.0.1:1"), str(tmp_path), "s")
    samples = (MeterSample("Energy.Active.Import.Register", 1234500.0, "Wh", None, None, "Sample.Periodic"),
               MeterSample('Odd "measurand" \\ ü', -0.5, "A", "L1-N", "Outlet", "Trigger"),
               MeterSample("Power.Active.Import", 1e16, "W", None, "EV", None),
               MeterSample("SoC", 3.2e-7, "Percent", None, None, "Sample.Clock"))
    for tx in (None, '7"x', "12345"):
        reading = MeterReading(charger_id="CP/1", evse=2, connector=2, ts=ts, transaction_id=tx, samples=samples,
                               source="MeterValues")
        out = sink.encode(reading)
        expected_samples = [{"measurand": s.measurand, "value": s.value, "unit": s.unit, "phase": s.phase,
                             "location": s.location, "context": s.context} for s in samples]
        topic, payload, retain = out[0]
        assert (topic, retain) == ("ocpp/s/chargers/CP%2F1/evse/2/meter", False)
        doc = json.loads(payload)
        assert list(doc) == ["ts", "transaction_id", "samples"]
        assert doc == {"ts": "2026-05-01T12:30:15.123Z", "transaction_id": tx, "samples": expected_samples}
        assert [list(s) for s in doc["samples"]] == [list(s) for s in expected_samples]
        for (t, body, keep), s in zip(out[1:], expected_samples):
            assert keep and t.startswith("ocpp/s/chargers/CP%2F1/evse/2/meter/")
            assert json.loads(body) == {**s, "ts": "2026-05-01T12:30:15.123Z", "transaction_id": tx}
            assert list(json.loads(body)) == [*s, "ts", "transaction_id"]
    env = sink.encode(EnvironmentReading(charger_id="CP/1", name="temperature", value=25.5, unit="Celsius", ts=ts,
                                         source='Data"Transfer'))
    assert env == [("ocpp/s/chargers/CP%2F1/environment/temperature",
                    json.dumps({"value": 25.5, "unit": "Celsius", "ts": "2026-05-01T12:30:15.123Z",
                                "source": 'Data"Transfer'}, separators=(",", ":")).encode(), True)]


async def test_each_acknowledgement_refills_a_small_window_at_once(tmp_path: Any) -> None:
    """With Mosquitto's default Receive Maximum (20: a window of 16) every PUBACK read must send
    what waits, at once: waiting for half the window to drain dropped most records at high rates."""
    from gateway.config import MqttSettings
    from adapters.mqtt import MqttSink

    sink = MqttSink(MqttSettings(url="mqtt://127.0.0.1:1"), str(tmp_path), "s")
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        b.settimeout(5)
        lane = sink.lane
        assert lane is not None
        sink.client._sock = a
        assert lane.attach(a) is not None
        sink._fd = a.fileno()
        sink.connected = True
        sink._up(20)
        assert (lane.limit, lane.refill) == (16, 1)
        lane.backlog.extend((f"t/{i}", b"x", False) for i in range(20))
        sink._pump()
        assert len(lane.window) == 16 and len(lane.backlog) == 4
        first = min(lane.window)
        sent = b.recv(65536)
        assert sent.count(b"t/") == 16 and sent[0] == 0x32  # 16 PUBLISHes (QoS 1), nothing more
        b.sendall(b"\x40\x02" + first.to_bytes(2, "big"))  # one acknowledgement
        for _ in range(100):
            sink._readable()
            if len(lane.backlog) == 3:
                break
            await asyncio.sleep(0.01)
        assert len(lane.window) == 16 and len(lane.backlog) == 3 and first not in lane.window
        assert b.recv(65536).count(b"t/") == 1  # the next one went out at once
    finally:
        sink._detach_socket()
        a.close()
        b.close()


def test_times_are_written_in_utc_with_milliseconds_whatever_the_second() -> None:
    """adapters.mqtt.topics.iso: the text up to the second is kept per second; every instant of a
    second, both ends of it, other offsets and years outside 1970-2096 read as isoformat says."""
    import random
    from datetime import datetime, timedelta, timezone

    from adapters.mqtt.topics import iso

    def reference(ts: datetime) -> str:
        return ts.astimezone(timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"

    rng = random.Random(3)
    base = datetime(2026, 12, 7, 11, 59, 59, tzinfo=timezone.utc)
    cases = [base, base.replace(microsecond=999_999), base + timedelta(microseconds=1_000_000),
             datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone.utc),
             datetime(2096, 1, 1, 0, 0, 0, 999_999, tzinfo=timezone.utc), datetime(9999, 12, 31, 23, 59, 59, 999_999,
                                                                                  tzinfo=timezone.utc),
             datetime(2026, 6, 1, 2, 0, 0, 500, tzinfo=timezone(timedelta(hours=2)))]
    cases += [base + timedelta(microseconds=rng.randrange(-10**13, 10**13)) for _ in range(5000)]
    for ts in cases:
        assert iso(ts) == reference(ts), ts
    assert iso(datetime(2026, 6, 1, 2, 0, 0, 500, tzinfo=timezone(timedelta(hours=2)))) == "2026-06-01T00:00:00.000Z"
    # the last instant's text is kept: the same instant twice, then others, never an earlier text
    for ts in [cases[8], cases[8], cases[9], cases[8], base, base.replace(microsecond=1_000), base]:
        assert iso(ts) == reference(ts), ts


def test_influx_times_are_the_instants_nanoseconds_whichever_came_before() -> None:
    """adapters.influx keeps the last instant's nanoseconds as text (a MeterValues' meter and
    environment records share their time): each line still carries its own record's time."""
    from datetime import datetime, timedelta, timezone

    from adapters.influx import encode
    from gateway.telemetry.records import EnvironmentReading, MeterReading, MeterSample

    def meter(ts: datetime) -> MeterReading:
        return MeterReading(charger_id="CP1", evse=1, connector=1, ts=ts, transaction_id=None, source="MeterValues",
                            samples=(MeterSample("Power.Active.Import", 7200.0, "W", None, "Outlet",
                                                 "Sample.Periodic"),))

    def environment(ts: datetime) -> EnvironmentReading:
        return EnvironmentReading(charger_id="CP1", name="temperature", value=25.0, unit="Celsius", ts=ts,
                                  source="MeterValues")

    base = datetime(2026, 12, 7, 10, 0, 0, tzinfo=timezone.utc)
    times = [base, base, base + timedelta(microseconds=1), base, datetime(1969, 12, 31, 23, 59, 59, tzinfo=timezone.utc)]
    for ts in times:
        want = int((ts - datetime(1970, 1, 1, tzinfo=timezone.utc)) / timedelta(microseconds=1)) * 1000
        for record in (meter(ts), environment(ts), meter(ts)):
            (line,) = encode(record, "site")
            assert line.rsplit(" ", 1)[1] == str(want), (ts, line)
