"""Long fuzz run: byte-mutated fixture models (and real models with --models) through the default pipeline.

    python bench/bench_fuzz.py --cases 10000 [--models DIR] [--seed 0]

Target (issue 7): 0 unexpected exceptions, 0 hangs, 0 stray outputs. Prints a markdown summary.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import markdown_table, reproduce_line

import fixtures
from onnxopt.fuzzing import FuzzStats, mutate, optimize_bytes, run_case


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--models", default="", help="also mutate real models under 2 MB from this folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=int, default=120)
    args = ap.parse_args()
    seeds = {n: fixtures.get(n).SerializeToString() for n in sorted(fixtures.FIXTURES)}
    if args.models:
        for p in sorted(Path(args.models).glob("*.onnx")):
            if p.stat().st_size < 2 * 2**20:
                seeds[p.stem] = p.read_bytes()
    rng = random.Random(args.seed)
    stats = FuzzStats()
    names = sorted(seeds)
    t0 = time.perf_counter()
    for i in range(args.cases):
        name = rng.choice(names)
        run_case(optimize_bytes, mutate(seeds[name], rng), stats, f"{name}#{i}", time_limit=args.time_limit)
        if (i + 1) % 500 == 0:
            print(f"{i + 1} cases, {len(stats.findings)} findings, {time.perf_counter() - t0:.0f}s",
                  file=sys.stderr, flush=True)
    rows = [[stats.cases, stats.ok, json.dumps(stats.errors), len(stats.findings), f"{time.perf_counter() - t0:.0f}s"]]
    print(markdown_table(["cases", "succeeded", "clean errors", "findings", "time"], rows))
    for f in stats.findings[:20]:
        print("-", f)
    print(reproduce_line())
    return 1 if stats.findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
