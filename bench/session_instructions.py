"""Instructions per relayed call on the session path (`bench.session_path`), counted by valgrind's
callgrind: unlike CPU time they do not move with the machine's load, so a change to the core can be
measured on a busy machine. Each figure is the difference between two runs of one action, with
`--calls` and twice as many round trips (the warm-up of a tenth included), divided by the extra
round trips: start-up, imports and schema compilation cancel out.

    python -m bench.session_instructions                       # Heartbeat, MeterValues; no observers and default
    python -m bench.session_instructions --calls 500 --observers default --actions MeterValues

Needs valgrind. A run takes about 15-30 s per action and observer set (callgrind is ~50x slower).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

from bench._common import REPO

_TOTAL = re.compile(r"Collected : (\d+)")


def count(action: str, calls: int, observers: str) -> int:
    """Instructions of one `bench.session_path --once relay` run."""
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONHASHSEED="0")
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out", sys.executable, "-m",
             "bench.session_path", "--once", "relay", "--action", action, "--calls", str(calls),
             "--observers", observers],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=True)
    found = _TOTAL.search(done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=1000, help="round trips of the shorter run (the longer: twice)")
    ap.add_argument("--actions", default="Heartbeat,MeterValues")
    ap.add_argument("--observers", default="none,default", help="observer sets (bench.session_path --observers)")
    args = ap.parse_args()
    for observers in args.observers.split(","):
        for action in args.actions.split(","):
            short, long = count(action, args.calls, observers), count(action, 2 * args.calls, observers)
            extra = 2 * args.calls + 2 * args.calls // 10 - (args.calls + args.calls // 10)
            print(f"{action:12s} observers={observers:8s} {(long - short) / extra:10.0f} instructions per relayed call",
                  flush=True)


if __name__ == "__main__":
    main()
