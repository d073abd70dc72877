"""Shares of CPU by function from a ``sitecustomize.py`` sample file: self (the innermost
frame) and inclusive (anywhere on the stack), each sample 5 ms of CPU.

    .venv/bin/python bench/pipeline/cpuprof/report.py FILE [--top 30] [--under PREFIX]

``--under PREFIX`` shows the direct callees of the frames starting with PREFIX, e.g.
``--under "process (engine.py"``.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--under", default=None)
    args = parser.parse_args()
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    callees: collections.Counter[str] = collections.Counter()
    total = 0.0
    for line in args.file.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        count, frames = float(n), stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            anywhere[frame] += count
        if args.under:
            at = next((i for i, f in enumerate(frames) if f.startswith(args.under)), None)
            if at is not None:
                callees[frames[at + 1] if at + 1 < len(frames) else "<self>"] += count
    print(f"{total:.0f} samples = {total * 0.005:.1f} CPU-seconds")
    tables = [("self", own), ("inclusive", anywhere)]
    if args.under:
        tables.append((f"called by {args.under}", callees))
    for title, counter in tables:
        print(f"-- {title}")
        for name, count in counter.most_common(args.top):
            print(f"{100 * count / total:5.1f}%  {name[:140]}")


if __name__ == "__main__":
    main()
