"""Long fuzz run: byte-mutated fixture models (and real models with --models) through the default pipeline,
and byte-mutated packed files (.onnxpack made from the same models) through `onnxopt unpack`.

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
from onnxopt.fuzzing import FuzzStats, mutate, optimize_bytes, packed_seeds, run_case, unpack_bytes


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--models", default="", help="also mutate real models under 2 MB from this folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=int, default=120)
    ap.add_argument("--packed", type=float, default=0.3,
                    help="fraction of cases that mutate packed files (.onnxpack) through `onnxopt unpack`")
    args = ap.parse_args()
    seeds = {n: fixtures.get(n).SerializeToString() for n in sorted(fixtures.FIXTURES)}
    if args.models:
        for p in sorted(Path(args.models).glob("*.onnx")):
            if p.stat().st_size < 2 * 2**20:
                seeds[p.stem] = p.read_bytes()
    packed = packed_seeds(seeds)
    rng = random.Random(args.seed)
    stats = FuzzStats()
    packed_stats = FuzzStats()
    names, packed_names = sorted(seeds), sorted(packed)
    t0 = time.perf_counter()
    for i in range(args.cases):
        if rng.random() < args.packed:
            name = rng.choice(packed_names)
            run_case(unpack_bytes, mutate(packed[name], rng), packed_stats, f"{name}#{i}",
                     time_limit=args.time_limit)
            continue
        name = rng.choice(names)
        run_case(optimize_bytes, mutate(seeds[name], rng), stats, f"{name}#{i}", time_limit=args.time_limit)
        if (i + 1) % 500 == 0:
            print(f"{i + 1} cases, {len(stats.findings)} findings, {time.perf_counter() - t0:.0f}s",
                  file=sys.stderr, flush=True)
    rows = [[what, st.cases, st.ok, json.dumps(st.errors), len(st.findings)]
            for what, st in (("models -> optimize", stats), ("packed files -> unpack", packed_stats))]
    print(markdown_table(["target", "cases", "succeeded", "clean errors", "findings"], rows))
    print(f"\ntotal {stats.cases + packed_stats.cases} cases in {time.perf_counter() - t0:.0f}s")
    findings = stats.findings + packed_stats.findings
    for f in findings[:20]:
        print("-", f)
    print(reproduce_line())
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
