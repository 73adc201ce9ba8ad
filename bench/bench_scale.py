"""Scale: a synthetic model past protobuf's 2 GB limit (external data) through onnxopt, per stage.

    python bench/bench_scale.py [--gb 3] [--workdir DIR] [--stages "default --validate end,pack"]

Builds a MatMul stack with random float32 weights (saved with external data), then runs each stage of
`onnxopt` in its own subprocess and reports wall time and peak RSS as a multiple of the model size
(target, issue 7: <= 2.5x).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, reproduce_line, run_measured

STAGES = {
    "default (validate each)": [],
    "default --validate end": ["--validate", "end"],
    "default --validate off": ["--validate", "off"],
    "pack": ["--pack", "--validate", "off"],
    "pack --validate end": ["--pack", "--validate", "end"],
    "quantize int8 --validate end": ["--quantize", "int8", "--validate", "end"],
}


def build(path: Path, gb: float, dim: int = 8192) -> int:
    """MatMul -> Relu stack of dim x dim float32 weights totalling about ``gb`` GB, with external data.

    Weights are generated one layer at a time straight into the data file: building the model never
    holds more than one layer in memory.
    """
    layers = max(1, round(gb * 2**30 / (dim * dim * 4)))
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    prev = "x"
    data = path.with_name(path.name + ".data")
    with open(data, "wb") as f:
        for i in range(layers):
            w = (rng.standard_normal((dim, dim), dtype=np.float32) / np.sqrt(dim)).astype(np.float32)
            offset = f.tell()
            f.write(w.tobytes())
            t = onnx.TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[dim, dim],
                                 data_location=TensorProto.EXTERNAL)
            for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(w.nbytes))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            inits.append(t)
            nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
            nodes.append(helper.make_node("Identity", [f"m{i}"], [f"i{i}"]))  # something for the pipeline to do
            nodes.append(helper.make_node("Relu", [f"i{i}"], [f"r{i}"] if i < layers - 1 else ["y"]))
            prev = f"r{i}"
            del w
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return layers * dim * dim * 4


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=3.0)
    ap.add_argument("--workdir", default="")
    ap.add_argument("--stages", default="", help="comma-separated subset of: " + ", ".join(STAGES))
    ap.add_argument("--reuse", action="store_true",
                    help="keep WORKDIR/big.onnx if it is already there with the weights of this size")
    ap.add_argument("--models", default="", help="ignored (bench/run.py passes it to every benchmark)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="onnxopt-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "big.onnx"
    layers = max(1, round(args.gb * 2**30 / (8192 * 8192 * 4)))
    data = src.with_name(src.name + ".data")
    if args.reuse and src.is_file() and data.is_file() and data.stat().st_size == layers * 8192 * 8192 * 4:
        size = data.stat().st_size
    else:
        size = build(src, args.gb)
    print(f"model: {size / 2**30:.2f} GiB of weights in {src}", file=sys.stderr)
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()] or list(STAGES)
    rows = []
    for stage in wanted:
        extra = STAGES[stage]
        out = work / ("out.onnxpack" if "--pack" in extra else "out.onnx")
        res = run_measured([sys.executable, "-m", "onnxopt", str(src), str(out), "-q", *extra])
        ok = "ok" if res["rc"] == 0 else f"exit {res['rc']}: {res['stderr'].strip().splitlines()[-1:]}"
        rows.append([stage, f"{res['seconds']:.0f}s", f"{res['rss_mb'] / 1024:.2f} GiB",
                     f"{res['rss_mb'] * 2**20 / size:.2f}x", ok])
        for p in work.glob("out.*"):
            p.unlink()
    print(markdown_table(["stage", "wall", "peak RSS", "RSS / model size", "result"], rows))
    print(reproduce_line())
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
