"""gateway/security.py without sockets: password forms, Basic parsing, certificate names, buckets;
and the `ocpp-gateway hash-password` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.protocol.frames import OcppVersion
from gateway.security import (FailureLimiter, TokenBucket, certificate_matches, hash_password, parse_basic,
                              password_matches, password_problems)
from tests.harness import REPO

V16, V201 = OcppVersion.V16, OcppVersion.V201
KEY = "0001020304050607FFFFFFFFFFFFFFFFFFFFFFFF"


def test_plain_and_hashed_passwords() -> None:
    assert password_matches("correct-horse-battery", b"correct-horse-battery", V201)
    assert not password_matches("correct-horse-battery", b"correct-horse-batter", V201)
    assert not password_matches("", b"", V201)  # no password configured: nothing matches
    stored = hash_password(b"correct-horse-battery", iterations=1000)
    assert stored.startswith("pbkdf2_sha256$1000$")
    assert password_matches(stored, b"correct-horse-battery", V201)
    assert not password_matches(stored, stored.encode(), V201)
    assert not password_matches("pbkdf2_sha256$1000$broken", b"pbkdf2_sha256$1000$broken", V201)  # malformed: never


def test_16_authorization_key_semantics() -> None:
    raw = bytes.fromhex(KEY)
    assert password_matches(KEY, raw, V16)  # the decoded bytes (J16 §6.2.2)
    assert password_matches(KEY, KEY.lower().encode(), V16)  # the hex text itself
    assert not password_matches(KEY, raw, V201)  # 2.x: the configured string as UTF-8
    assert password_matches("not-hex-but-a-password", b"not-hex-but-a-password", V16)
    stored = hash_password(raw, iterations=1000)
    assert password_matches(stored, raw, V16) and password_matches(stored, KEY.encode(), V16)


def test_password_rules() -> None:
    assert password_problems("short") and password_problems("x" * 41)
    assert not password_problems("x" * 16) and not password_problems(KEY)
    assert password_problems("00" * 21)
    assert not password_problems(hash_password(b"x", iterations=1000))


def test_basic_parsing() -> None:
    assert parse_basic("Basic QUwxMDAwOgABAgMEBQYH////////////////") == (b"AL1000", bytes.fromhex(KEY))
    assert parse_basic("basic Q1A6YTpi") == (b"CP", b"a:b")  # split at the first ':' only
    for bad in (None, "", "Bearer x", "Basic !!", "Basic Q1A=", "Basic " + "A" * 2000):
        assert parse_basic(bad) is None


def test_certificate_names() -> None:
    cert = {"subject": ((("organizationName", "CPO"),), (("commonName", "CP3"),)),
            "subjectAltName": (("DNS", "CP3-alt"), ("IP Address", "10.0.0.1"))}
    assert certificate_matches(cert, "CP3") and certificate_matches(cert, "CP3-alt")
    assert not certificate_matches(cert, "CP") and not certificate_matches(cert, "10.0.0.1")
    assert not certificate_matches(None, "CP3") and not certificate_matches({}, "CP3")


def test_buckets() -> None:
    b = TokenBucket(rate=2.0, burst=3)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.wait_time(0.0) == pytest.approx(0.5)
    assert b.take(0.5) and not b.take(0.5)
    lim = FailureLimiter(burst=2, window=10.0, max_addresses=3)
    lim.failed("a", 0.0)
    assert lim.blocked("a", 0.0) == 0
    lim.failed("a", 0.0)
    assert lim.blocked("a", 0.0) == pytest.approx(5.0)
    assert lim.blocked("a", 5.0) == 0 and lim.blocked("b", 0.0) == 0
    for addr in "bcdefg":
        lim.failed(addr, 6.0)
    assert len(lim.buckets) <= 3  # bounded


def run_cli(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "hash-password", *args], input=stdin, text=True,
                          capture_output=True, cwd=REPO, timeout=30)


def test_hash_password_command() -> None:
    out = run_cli("--iterations", "10000", stdin="correct-horse-battery\n")
    assert out.returncode == 0 and out.stderr == ""
    stored = out.stdout.strip()
    assert password_matches(stored, b"correct-horse-battery", V201) and "correct-horse" not in stored
    out = run_cli("--hex", "--iterations", "10000", stdin=KEY + "\n")
    assert out.returncode == 0 and password_matches(out.stdout.strip(), bytes.fromhex(KEY), V16)
    assert run_cli("--hex", stdin="xyz\n").returncode == 2
    weak = run_cli("--iterations", "10000", stdin="short\n")
    assert weak.returncode == 0 and "16-40" in weak.stderr


def test_check_config_warns_about_security_problems(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[websocket]\nsecurity_profile = 2\n[upstream]\nurl = "ws://csms.example/ocpp"\n'
                   '[chargers.CP1]\npassword = "weak-pw"\nupstream_password = "up-secret-value-123"\n'
                   '[chargers.CP2]\nsecurity_profile = 3\n[chargers.CP3]\n')
    out = subprocess.run([sys.executable, "-m", "gateway", "check-config", "-c", str(cfg)], cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    json.loads(out.stdout.split("\n", 1)[1])  # stdout stays the JSON after the comment line
    for expected in ("without tls_cert/tls_key", "without websocket.tls_ca", "chargers.CP1.password: should be 16-40",
                     "upstream passwords are set", "chargers.CP3: security profile 2 but no password"):
        assert expected in out.stderr, expected
    assert "weak-pw" not in out.stderr + out.stdout and "up-secret-value-123" not in out.stderr + out.stdout


def test_a_verified_hash_is_not_recomputed() -> None:
    import time

    stored = hash_password(b"correct-horse-battery", iterations=300_000)
    t = time.perf_counter()
    assert password_matches(stored, b"correct-horse-battery", V201)
    first = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(10):
        assert password_matches(stored, b"correct-horse-battery", V201)
    assert time.perf_counter() - t < first  # ten remembered checks cost less than one real one
    assert not password_matches(stored, b"correct-horse-batterY", V201)  # failures are never remembered
