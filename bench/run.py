"""Run every benchmark (bench/bench_*.py) on one models folder and collect their markdown tables.

    python bench/run.py --models DIR [--only simplify,pack] [--out bench/results.md] [extra args...]

Each benchmark runs its candidates side by side with its anchor in one process and prints a table
of ratios (medians of repeated runs) followed by the command that reproduces it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="folder made by ../shared/real-models/fetch.sh")
    ap.add_argument("--only", default="", help="comma-separated benchmark names (e.g. simplify,pack)")
    ap.add_argument("--out", default="", help="also write all tables to this markdown file")
    args, extra = ap.parse_known_args()
    wanted = {s.strip() for s in args.only.split(",") if s.strip()}
    sections = []
    for script in sorted(HERE.glob("bench_*.py")):
        name = script.stem.removeprefix("bench_")
        if wanted and name not in wanted:
            continue
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(script), "--models", args.models, *extra], text=True,
                              capture_output=True)
        print(proc.stdout)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
        sections.append(f"## {name} ({time.perf_counter() - t0:.0f}s, exit {proc.returncode})\n\n{proc.stdout}")
    if args.out:
        Path(args.out).write_text("\n\n".join(sections))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
