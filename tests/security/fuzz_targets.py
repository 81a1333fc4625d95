"""Coverage-guided fuzz targets (atheris, i.e. libFuzzer) for the OCPP-J frame parser and the SOAP
codec, run for a bounded time by tests/security/test_fuzz_coverage.py:

    python -m tests.security.fuzz_targets frames|soap [libFuzzer flags, e.g. -max_total_time=15 CORPUS]

Only the project's own modules are instrumented, so the fuzzer steers towards new branches of
`gateway/protocol/frames.py` and `adapters/soap/codec.py`. The properties are those of the
hypothesis tests: whatever arrives, the parser returns a frame or raises FrameError (whose reply is a
well-formed CALLERROR), and the SOAP reader returns a payload or raises SoapError; anything else
(another exception, a crash, a hang) stops the run with the input that caused it.
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-untyped]  # no type stubs

with atheris.instrument_imports(include=["gateway.protocol", "adapters.soap"]):
    import orjson

    from adapters.soap import codec
    from adapters.soap.codec import SoapError
    from adapters.soap.contract import CS
    from gateway.protocol import frames as F
    from gateway.protocol.frames import FrameError, OcppVersion

VERSIONS = list(OcppVersion)


def frames(data: bytes) -> None:
    if not data:
        return
    version = VERSIONS[data[0] % len(VERSIONS)]
    try:
        text = data[1:].decode("utf-8")
    except UnicodeDecodeError:
        return  # websockets closes the connection with 1007 before the parser sees it
    try:
        frame = F.parse(text, version)
    except FrameError as exc:
        if exc.reply is not None:
            reply = orjson.loads(exc.reply)
            assert reply[0] == 4 and isinstance(reply[1], str) and len(reply[1]) <= F.MAX_MESSAGE_ID_LENGTH
        return
    assert frame.raw == text


def soap(data: bytes) -> None:
    try:
        env = codec.parse_envelope(data)
        codec.read_headers(env)
        c, op, is_response, _ = codec.lookup(CS, env)
        payload = codec.decode(CS, c.version, op, is_response, env)
    except SoapError as exc:
        assert exc.code in ("Sender", "Receiver", "VersionMismatch")
        return
    assert isinstance(payload, dict)


def main() -> None:
    target = {"frames": frames, "soap": soap}[sys.argv[1]]
    codec.warm_up()  # zeep loads the contracts once, before the clock starts
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
