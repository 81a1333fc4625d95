"""The MQTT sink's own framing: the PUBLISH packets it writes on paho's socket and the PUBACKs it
takes off the incoming stream before paho reads it (adapters/mqtt.py). The end-to-end behaviour,
against a real Mosquitto, is in test_sinks.py and test_faults.py; here the byte-level edge cases,
over a real socket pair: packets cut anywhere, long remaining lengths, acknowledgements that belong
to paho, MQTT 5 reason codes."""

from __future__ import annotations

import socket

import pytest

from adapters.mqtt import _BatchedSocket, _remaining_length, publish_packet


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
