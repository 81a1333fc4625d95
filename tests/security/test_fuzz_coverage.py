"""A bounded coverage-guided fuzz run (atheris / libFuzzer) of the OCPP-J frame parser and the SOAP
codec: 5 s each, seeded with well-formed frames and envelopes (targets in fuzz_targets.py). A
failure leaves the crashing input in the test's temporary directory and its traceback in the output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.soap import codec
from adapters.soap.contract import CS, contract
from tests.harness import REPO
from tests.security.conftest import FIGURES

pytest.importorskip("atheris", reason="atheris (coverage-guided fuzzing) is not installed for this Python")
# 5 s: both readers reach the edge coverage of a 10 s run within it (measured: frames 70 edges by
# ~5 s, SOAP 101 edges by ~3 s; a 10 s run adds inputs and features, no new edges)
SECONDS = 5

FRAME_SEEDS = [
    '[2,"1","BootNotification",{"chargePointVendor":"ACME","chargePointModel":"M1"}]',
    '[2,"2","Heartbeat",{}]',
    '[3,"2",{"currentTime":"2026-01-01T00:00:00Z"}]',
    '[4,"3","NotImplemented","",{}]',
    '[2,"4","MeterValues",{"connectorId":1,"meterValue":[{"timestamp":"2026-01-01T00:00:00Z",'
    '"sampledValue":[{"value":"1.5","measurand":"Power.Active.Import","unit":"kW"}]}]}]',
    '[6,"5","NotifyEVChargingNeeds",{"evseId":1}]',
    '[2,"6","DataTransfer-Signed",{"payload":"x"}]',
]


def soap_seeds() -> list[bytes]:
    c = contract(CS, "1.6")
    out = []
    for action, payload in (("Heartbeat", {}), ("Authorize", {"idTag": "TAG1"}),
                            ("BootNotification", {"chargePointVendor": "ACME", "chargePointModel": "M1"}),
                            ("StatusNotification", {"connectorId": 1, "status": "Available", "errorCode": "NoError"})):
        op = c.operations[action]
        env = codec.encode(CS, "1.6", op, False, payload)
        codec.add_headers(env, c.namespace, action=op.action, message_id="urn:uuid:1", identity="CP1",
                          from_address="http://192.0.2.1:8080/")
        out.append(codec.to_bytes(env))
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", ["frames", "soap"])
def test_coverage_guided_fuzzing(target: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seeds = [b"\x00" + s.encode() for s in FRAME_SEEDS] if target == "frames" else soap_seeds()
    for i, seed in enumerate(seeds):
        (corpus / f"seed{i}").write_bytes(seed)
    result = subprocess.run(
        [sys.executable, "-m", "tests.security.fuzz_targets", target, f"-max_total_time={SECONDS}",
         "-rss_limit_mb=2048", "-timeout=10", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1", str(corpus)],
        cwd=REPO, capture_output=True, text=True, timeout=SECONDS + 90)
    done = re.findall(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+)", result.stderr)
    runs, cov, features = done[-1] if done else ("?", "?", "?")
    FIGURES.append(f"coverage-guided fuzzing of the {target} reader: {runs} inputs in {SECONDS} s, "
                   f"{cov} edges covered, corpus grew to {len(list(corpus.iterdir()))} inputs")
    assert result.returncode == 0, result.stderr[-4000:]
    assert done, result.stderr[-2000:]
