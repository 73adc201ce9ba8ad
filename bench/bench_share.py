"""Weight sharing (share-weights, k-means) on the real models: fidelity and packed size.

    python bench/bench_share.py --models DIR [--bits 4,6,8] [--samples 8]

For each model (after `simplify`, the fp32 reference) and each bit width: k-means sharing against
the baseline it must beat, evenly spaced levels at the same storage ("uniform", linear quantization
of the weights), both measured on real inputs (bench/real_data.py) against the fp32 model: worst
output SQNR and cosine, and top-1 of class-score outputs. Sizes: the `.onnxpack` of the shared
model against the `.onnxpack` of the fp32 model and against zstd-19 of the fp32 `.onnx`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import markdown_table, reproduce_line
from real_data import real_feeds

import onnxopt
from onnxopt.packing import pack_model
from onnxopt.passes.share_weights import ShareWeights
from onnxopt.validate import compare_outputs, run_model, summarize


def _zstd19(data: bytes) -> int:
    import zstandard

    return len(zstandard.ZstdCompressor(level=19).compress(data))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True)
    ap.add_argument("--bits", default="4,6,8")
    ap.add_argument("--samples", type=int, default=8)
    args = ap.parse_args()
    bits_list = [int(b) for b in args.bits.split(",")]
    rows = []
    for path in sorted(Path(args.models).glob("*.onnx")):
        feeds = real_feeds(path, args.samples, seed=7)
        fp32 = onnxopt.optimize(str(path), passes=["simplify"], validate="off").model
        ref = run_model(fp32, feeds)
        fp32_pack = len(pack_model(fp32).data)
        zstd = _zstd19(fp32.SerializeToString())
        for bits in bits_list:
            cells = {}
            for method in ("kmeans", "uniform"):
                res = onnxopt.optimize(fp32, passes=[ShareWeights(bits=bits, method=method)], validate="off")
                if not res.report.passes[0].modified:
                    cells[method] = None
                    continue
                s = summarize(compare_outputs(ref, run_model(res.model, feeds)))
                cells[method] = (res.model, s)
            if cells["kmeans"] is None:
                rows.append([path.stem, bits, "no weight shared", "", "", "", "", ""])
                continue
            model, km = cells["kmeans"]
            uni = cells["uniform"][1] if cells["uniform"] else {}
            packed = len(pack_model(model).data)
            top1 = km.get("min_top1_strict")
            rows.append([
                path.stem, bits,
                f"{km['min_sqnr_db']:.1f} / {uni.get('min_sqnr_db', float('nan')):.1f}",
                f"{km['min_cosine']:.4f} / {uni.get('min_cosine', float('nan')):.4f}",
                "-" if top1 is None else f"{top1:.2f} / {uni.get('min_top1_strict', float('nan')):.2f}",
                f"{packed / 1e3:.0f} KB",
                f"{packed / fp32_pack:.3f}",
                f"{packed / zstd:.3f}",
            ])
            print(rows[-1], file=sys.stderr, flush=True)
    print(markdown_table(["model", "bits", "SQNR dB k-means / uniform", "cosine k-means / uniform",
                          "top-1 k-means / uniform", "packed", "vs fp32 packed", "vs zstd-19 .onnx"], rows))
    print(reproduce_line())
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
