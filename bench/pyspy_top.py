"""Summarise a py-spy `--format raw` (collapsed stacks) profile: top functions by self and
by inclusive samples.

    python -m bench.pyspy_top bench/results/profiles/gateway-N1000-closed_Heartbeat.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

from bench._common import REPO

_LINE = re.compile(r"\s*\(([^)]*?)(?::\d+)?\)$")


def frame_key(frame: str) -> str:
    """'send (websockets/asyncio/connection.py:123)' -> 'send (websockets/asyncio/connection.py)'."""
    m = re.match(r"^(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    func, path = m.groups()
    repo = str(REPO) + "/"
    if path.startswith(repo):
        path = path[len(repo):]
    for marker in ("site-packages/", "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{func} ({path})"


def package(key: str) -> str:
    """The top-level package of a frame key: gateway, adapters, websockets, asyncio, ..."""
    m = re.search(r"\((.*)\)$", key)
    path = m.group(1) if m else key
    if path.startswith("<"):
        return path
    return path.split("/", 1)[0] if "/" in path else path


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.pyspy_top", description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    self_c: Counter[str] = Counter()
    by_pkg: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in Path(args.file).read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = [frame_key(f) for f in stack.split(";")]
        self_c[frames[-1]] += count
        by_pkg[package(frames[-1])] += count
        for f in set(frames):
            incl[f] += count
    print(f"{total} samples")
    print("\n-- self samples by package --")
    for name, c in by_pkg.most_common():
        print(f"{100 * c / total:6.1f}%  {name}")
    for title, counter in (("self", self_c), ("inclusive", incl)):
        print(f"\n-- top {args.top} by {title} --")
        for name, c in counter.most_common(args.top):
            print(f"{100 * c / total:6.1f}%  {name}")


if __name__ == "__main__":
    main()
