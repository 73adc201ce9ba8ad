"""Weight sharing (share-weights) on the real models: fidelity and packed size.

    python bench/bench_share.py --models DIR [--bits 4,6,8] [--samples 8] [--only NAME,...]

For each model (after `simplify`, the fp32 reference) and each bit width: `share-weights` as users get
it (method "auto": k-means or uniform levels, with or without the per-channel offset, chosen on 8
selection samples given as validation data) against the baseline, per-channel linear quantization of the
weights at the same storage (evenly spaced levels, one scale per channel, no offset). Fidelity is measured
on other real samples (bench/real_data.py, another seed) against the fp32 model: worst output SQNR and
cosine, and strict top-1 of class-score outputs. Sizes: the `.onnxpack` of the shared model against the
`.onnxpack` of the fp32 model and against zstd-19 of the fp32 `.onnx`.
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
from onnxopt.validate import Budget, compare_outputs, run_model, summarize

#: the bench measures the loss itself: the run's own validation accepts any
ANY_LOSS = Budget(min_cosine=-1.0, min_sqnr_db=-1e9, min_top1=0.0, min_agreement=0.0)


def _zstd19(data: bytes) -> int:
    import zstandard

    return len(zstandard.ZstdCompressor(level=19).compress(data))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True)
    ap.add_argument("--bits", default="4,6,8")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--only", default="", help="comma-separated substrings of the model file names to bench")
    args = ap.parse_args()
    bits_list = [int(b) for b in args.bits.split(",")]
    rows = []
    only = [o for o in args.only.split(",") if o]
    for path in sorted(Path(args.models).glob("*.onnx")):
        if only and not any(o in path.name for o in only):
            continue
        select = real_feeds(path, args.samples, seed=7)
        feeds = real_feeds(path, args.samples, seed=11)
        fp32 = onnxopt.optimize(str(path), passes=["simplify"], validate="off").model
        ref = run_model(fp32, feeds)
        fp32_pack = len(pack_model(fp32).data)
        zstd = _zstd19(fp32.SerializeToString())
        for bits in bits_list:
            cells = {}
            for label, p in (("auto", ShareWeights(bits=bits)),
                             ("uniform", ShareWeights(bits=bits, method="uniform", offset=False))):
                res = onnxopt.optimize(fp32, passes=[p], validation_data=select, budget=ANY_LOSS)
                entry = res.report.passes[0]
                if not entry.modified:
                    cells[label] = None
                    continue
                cells[label] = (res.model, summarize(compare_outputs(ref, run_model(res.model, feeds))),
                                entry.stats.get("variant"))
            if cells["auto"] is None:
                rows.append([path.stem, bits, "no weight shared", "", "", "", "", "", ""])
                continue
            model, km, variant = cells["auto"]
            uni = cells["uniform"][1] if cells["uniform"] else {}
            packed = len(pack_model(model).data)
            top1 = km.get("min_top1_strict")
            rows.append([
                path.stem, bits, variant,
                f"{km['min_sqnr_db']:.1f} / {uni.get('min_sqnr_db', float('nan')):.1f}",
                f"{km['min_cosine']:.4f} / {uni.get('min_cosine', float('nan')):.4f}",
                "-" if top1 is None else f"{top1:.2f} / {uni.get('min_top1_strict', float('nan')):.2f}",
                f"{packed / 1e3:.0f} KB",
                f"{packed / fp32_pack:.3f}",
                f"{packed / zstd:.3f}",
            ])
            print(rows[-1], file=sys.stderr, flush=True)
    print(markdown_table(["model", "bits", "chosen", "SQNR dB onnxopt / uniform", "cosine onnxopt / uniform",
                          "top-1 (strict) onnxopt / uniform", "packed", "vs fp32 packed", "vs zstd-19 .onnx"],
                         rows))
    print(reproduce_line())
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
