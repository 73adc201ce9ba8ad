"""Damaged packed files read both ways: the one-call C path (onnxopt/packing/_unpack.c) must decline
each file, or give exactly the Python reader's spliced bytes.

    python bench/bench_one_call.py --cases 6000 [--seed 0] [--models DIR]

Seeds: packs the C path reads, of small int8 weight sets built in code (fixtures.builders.int8_weights),
of float32 weights coded as byte planes, and with --models the int8 versions of the real models whose
packs it reads (bench_pack.int8_version). Damage goes behind the trailer's checksum
(onnxopt.fuzzing.mutate_behind_checksums). Any disagreement is a finding (exit 1). To catch memory
errors too, build the module with sanitizers and preload their runtimes (see README, "One-call unpacker").
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import onnx
from bench_pack import int8_version
from common import reproduce_line

from fixtures.builders import int8_weights
from onnxopt.fuzzing import mutate_behind_checksums
from onnxopt.packing import native, pack_model
from onnxopt.packing.pack import reader_verdicts


def seed_packs(models: str) -> dict[str, bytes]:
    packs = {f"int8_weights({s})": pack_model(int8_weights(s)).data for s in range(3)}
    w = (np.random.default_rng(9).standard_normal(20_000) * 0.05).astype(np.float32)
    graph = onnx.helper.make_graph([], "planes", [], [], initializer=[
        onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(w.copy(), "w_again")])
    packs["float32 planes"] = pack_model(onnx.helper.make_model(graph)).data
    for path in sorted(Path(models).glob("*.onnx")) if models else []:
        data = pack_model(int8_version(onnx.load(path))).data
        if isinstance(reader_verdicts(data)[0], bytes):
            packs[f"{path.stem} int8"] = data
    return packs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="", help="folder of real .onnx models (their int8 versions seed too)")
    args = ap.parse_args()
    if not native.available():
        print("the compiled module is not built: nothing to compare", file=sys.stderr)
        return 2
    packs = seed_packs(args.models)
    for name, data in packs.items():
        if not isinstance(reader_verdicts(data)[0], bytes):
            print(f"seed {name}: not read by the one-call path", file=sys.stderr)
            return 1
    rng = random.Random(args.seed)
    outcomes: collections.Counter[str] = collections.Counter()
    findings = []
    names = sorted(packs)
    for case in range(args.cases):
        name = rng.choice(names)
        fast, verdict = reader_verdicts(mutate_behind_checksums(packs[name], rng))
        if isinstance(fast, bytes):
            outcomes["one-call path: bytes, the Python reader's"] += 1
            if fast != verdict:
                findings.append(f"case {case} ({name}): the paths give different bytes")
        elif isinstance(verdict, bytes):
            outcomes[f"declined ({fast}), the Python reader unpacked it"] += 1
        else:
            outcomes[f"declined ({fast}), the Python reader refused it"] += 1
    print(f"# One-call path vs the Python reader: {args.cases} damaged packed files\n")
    print(reproduce_line())
    print(f"\nSeeds: {', '.join(names)}\n")
    print("| outcome | files |\n|---|---|")
    for outcome, n in sorted(outcomes.items()):
        print(f"| {outcome} | {n} |")
    print(f"\nFindings: {len(findings)}")
    for f in findings[:20]:
        print(f"- {f}")
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
