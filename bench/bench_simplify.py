"""Simplifiers side by side: onnxsim, onnxslim, graphsurgeon folding, onnxruntime basic, onnxopt.

    python bench/bench_simplify.py --models /work/models [--repeat 3] [--tools a,b] [--no-light]
                                   [--conformance] [--json out.json]

Models: every ``*.onnx`` in ``--models`` plus the architectures the onnx package bundles
(``onnx/backend/test/data/light/*.onnx``, whose weights are ConstantOfShape fills).
Tools (each run in its own subprocess, ``--repeat`` times, on the in-memory ModelProto):

- ``onnxsim``    ``onnxsim.simplify(model)``
- ``onnxslim``   ``onnxslim.slim(model)``
- ``gs-fold``    graphsurgeon ``fold_constants()`` + ``cleanup()`` (what polygraphy's sanitize does)
- ``ort-basic``  onnxruntime offline optimization (``ORT_ENABLE_BASIC`` + ``optimized_model_filepath``)
- ``onnxopt``    ``onnxopt.optimize(model)``: the default lossless pipeline, validated in onnxruntime
- ``simplify``   the ``simplify`` pass alone on a graphsurgeon graph (no validation, no model checks)

Per model and tool: nodes after (all graphs), **dyn** = nodes that depend on a graph input (they run
every inference; nodes in subgraphs count), wall time (median), peak RSS of the subprocess (MB,
VmHWM; includes the Python + libraries baseline), weights after (MB), and whether the outputs equal the
original's in onnxruntime on two feed sets (the second at other dynamic sizes when the model
allows): ``ok``, ``MISMATCH``, ``invalid`` (checker or onnxruntime refuses it) or ``crash``.
``--conformance`` also runs the ONNX node test cases through every tool (see
tests/test_conformance.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

TOOLS = ["onnxsim", "onnxslim", "gs-fold", "ort-basic", "onnxopt", "simplify"]
ANCHORS = ("onnxsim", "onnxslim")


# --------------------------------------------------------------------------- the tools


def _quiet():
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    return contextlib.redirect_stdout(io.StringIO())


def tool_onnxsim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    out, _ok = onnxsim.simplify(model)
    return out


def tool_onnxslim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(model)


def tool_gs_fold(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup()
    out = gs.export_onnx(graph)
    out.ir_version = max(model.ir_version, 4)  # initializers are no longer listed as inputs
    return out


def tool_ort_basic(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "opt.onnx")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = path
        opts.log_severity_level = 4
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return onnx.load(path)


def tool_onnxopt(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxopt

    return onnxopt.optimize(model).model


def tool_simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnx_graphsurgeon as gs

    from onnxopt.context import PassContext
    from onnxopt.passes import Simplify

    # no whole-model shape inference first: the pass infers shapes on a weight-less skeleton itself
    graph = gs.import_onnx(model)
    Simplify().run(graph, PassContext(model=model))
    out = gs.export_onnx(graph, do_type_check=False)
    out.ir_version = max(model.ir_version, 4)
    del out.opset_import[:]
    out.opset_import.extend(model.opset_import)
    return out


_IMPORTS = {"onnxsim": ("onnxsim",), "onnxslim": ("onnxslim",), "gs-fold": ("onnx_graphsurgeon",),
            "ort-basic": ("onnxruntime",), "onnxopt": ("onnxopt", "onnxopt.passes", "onnxruntime"),
            "simplify": ("onnxopt.passes", "onnx_graphsurgeon")}

TOOL_FNS = {"onnxsim": tool_onnxsim, "onnxslim": tool_onnxslim, "gs-fold": tool_gs_fold,
            "ort-basic": tool_ort_basic, "onnxopt": tool_onnxopt, "simplify": tool_simplify}


# --------------------------------------------------------------------------- measurements


def peak_rss_mb() -> float:
    """Peak RSS of this process image. VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a
    worker started by a big parent would report the parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def count_nodes(graph: onnx.GraphProto) -> int:
    total = 0
    for n in graph.node:
        total += 1
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                total += count_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                total += sum(count_nodes(g) for g in a.graphs)
    return total


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    out = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def _reads(node: onnx.NodeProto) -> set[str]:
    names = {i for i in node.input if i}
    for g in _subgraphs(node):
        local = {i.name for i in g.input} | {t.name for t in g.initializer}
        for n in g.node:
            local |= set(n.output)
        for n in g.node:
            names |= {i for i in _reads(n) if i not in local}
        names |= {o.name for o in g.output if o.name not in local}
    return names


def count_dynamic(graph: onnx.GraphProto, live: set[str]) -> int:
    """Nodes whose value depends on ``live`` names (graph inputs), subgraph bodies included."""
    live = set(live)
    total = 0
    for n in graph.node:
        if _reads(n) & live:
            total += 1
            live |= set(n.output)
            for g in _subgraphs(n):
                total += count_dynamic(g, live | {i.name for i in g.input})
    return total


def graph_inputs(model: onnx.ModelProto) -> set[str]:
    inits = {t.name for t in model.graph.initializer}
    return {i.name for i in model.graph.input if i.name not in inits}


def weights_mb(model: onnx.ModelProto) -> float:
    from onnxopt.model import weight_bytes

    return weight_bytes(model) / 2**20


def make_feed_sets(model: onnx.ModelProto) -> list[tuple[list[dict], list]]:
    """Two feed sets with reference outputs: the product's validation set, and one at other sizes."""
    from onnxopt.data import input_specs
    from onnxopt.feeds import build_validation_set

    first = build_validation_set(model, count=2, seed=0)
    sets = [(first.feeds, first.reference)]
    specs = input_specs(model)
    base = first.shapes
    for batch, other in ((2, 32), (2, 128), (1, 96), (3, 64)):
        shapes = {}
        for s in specs:
            dims = list(base[s.name])
            for axis, d in enumerate(s.shape or ()):
                if not (isinstance(d, int) and d >= 0):
                    dims[axis] = batch if dims[axis] == 1 else other
            shapes[s.name] = tuple(dims)
        if shapes == {k: tuple(v) for k, v in base.items()}:
            break
        try:
            vs = build_validation_set(model, shapes=shapes, count=1, seed=1)
        except Exception:
            continue
        sets.append((vs.feeds, vs.reference))
        break
    return sets


def compare(model: onnx.ModelProto, feed_sets) -> str:
    import onnxruntime as ort

    try:
        if model.ByteSize() < 2**31 - 1:
            onnx.checker.check_model(model)
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        return f"invalid: {str(exc).strip().splitlines()[0][:120]}"
    names = [o.name for o in sess.get_outputs()]
    worst = 0.0
    for feeds, reference in feed_sets:
        for feed, ref in zip(feeds, reference):
            try:
                got = dict(zip(names, sess.run(None, feed)))
            except Exception as exc:
                return f"invalid: runs fail: {str(exc).strip().splitlines()[0][:120]}"
            for k, a in ref.items():
                b = got.get(k)
                if b is None or np.asarray(a).shape != np.asarray(b).shape:
                    return "MISMATCH (shape)"
                a, b = np.asarray(a), np.asarray(b)
                if a.dtype.kind in "fc":
                    if not np.allclose(a, b, rtol=1e-3, atol=1e-4, equal_nan=True):
                        return f"MISMATCH (max|d|={float(np.nanmax(np.abs(a - b))):.2g})"
                    if a.size:
                        worst = max(worst, float(np.nanmax(np.abs(a.astype(np.float64) - b))))
                elif not np.array_equal(a, b):
                    return "MISMATCH (ints)"
    return "ok" if worst == 0 else f"ok ({worst:.1g})"


def worker(tool: str, path: str, repeat: int) -> dict:
    model = onnx.load(path)
    fn = TOOL_FNS[tool]
    for mod in _IMPORTS.get(tool, ()):  # library import time is not the tool's work
        __import__(mod)
    times = []
    out = None
    try:
        with _quiet():
            for _ in range(repeat):
                out = None  # the previous result must not add to this run's peak memory
                work = onnx.ModelProto()
                work.CopyFrom(model)  # some tools edit their input in place
                t0 = time.perf_counter()
                out = fn(work)
                times.append(time.perf_counter() - t0)
                del work
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:150] if str(exc).strip() else ""
        return {"status": f"crash: {type(exc).__name__}: {first}", "rss_mb": peak_rss_mb()}
    rss = peak_rss_mb()
    assert out is not None
    save_dir = os.environ.get("ONNXOPT_BENCH_SAVE")
    if save_dir and out.ByteSize() < 2**31 - 1:  # for --latency: the parent times it against the original
        onnx.save(out, str(Path(save_dir) / f"{tool}.onnx"))
    result = {
        "seconds": statistics.median(times),
        "rss_mb": rss,
        "nodes": count_nodes(out.graph),
        "dyn": count_dynamic(out.graph, graph_inputs(out)),
        "weights_mb": weights_mb(out),
        "file_mb": out.ByteSize() / 2**20,
    }
    try:
        with _quiet():
            feed_sets = make_feed_sets(model)
    except Exception as exc:
        result["status"] = f"original does not run: {str(exc)[:100]}"
        return result
    with _quiet():
        result["status"] = compare(out, feed_sets)
    result["feed_sets"] = len(feed_sets)
    return result


def run_worker(tool: str, path: str, repeat: int, timeout: float, save_dir: str = "") -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", tool, path, "--repeat", str(repeat)]
    env = dict(os.environ, ONNXOPT_BENCH_SAVE=save_dir) if save_dir else None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout ({timeout:.0f}s)"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:150]
        return {"status": f"crash: exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def latency_ratios(path: str, save_dir: str, tools: list[str], repeat: int) -> dict[str, float]:
    """ORT latency of each tool's saved output / the original's, on the product's first validation feed."""
    from common import ort_latency

    model = onnx.load(path)
    with _quiet():
        feed = make_feed_sets(model)[0][0][0]
    candidates = {"original": path}
    candidates.update({t: str(Path(save_dir) / f"{t}.onnx") for t in tools if (Path(save_dir) / f"{t}.onnx").exists()})
    try:
        with _quiet():
            secs = ort_latency(candidates, feed, repeat=repeat)
    except Exception as exc:  # a tool's output that onnxruntime refuses is already reported as invalid
        print(f"  latency not measured: {str(exc)[:120]}", file=sys.stderr)
        return {}
    return {t: secs[t] / secs["original"] for t in candidates if t != "original"}


def original_stats(path: str) -> dict:
    m = onnx.load(path)
    return {"nodes": count_nodes(m.graph), "dyn": count_dynamic(m.graph, graph_inputs(m)),
            "weights_mb": weights_mb(m), "file_mb": m.ByteSize() / 2**20}


# --------------------------------------------------------------------------- conformance


def conformance(tools: list[str]) -> str:
    from tests import test_conformance as tc

    cases = tc.selected_cases(full=True)
    rows = []
    for tool in tools:
        for variant in ("all_const", "first_input"):
            counts: Counter = Counter()
            t0 = time.perf_counter()
            for case in cases:
                counts[_conformance_case(tc, case, variant, tool)] += 1
            rows.append([tool, variant, counts["passed"], counts["not folded"], counts["skipped"],
                         counts["mismatch"], counts["invalid"], counts["crash"], f"{time.perf_counter() - t0:.0f}s"])
    from common import markdown_table

    return markdown_table(["tool", "variant", "passed", "passed, outputs not all constant", "skipped (ORT/types)",
                           "mismatch", "invalid model", "crash", "time"], rows)


def _conformance_case(tc, case, variant: str, tool: str) -> str:
    if tool == "simplify":
        o = tc.run_case(case, variant)
        if o.status == "failed":
            return "mismatch" if "differs" in o.reason else ("crash" if "crash" in o.reason else "invalid")
        if o.status == "passed" and o.reason:
            return "not folded"
        return o.status
    inputs, _ = case.data_sets[0]
    try:
        model, feeds = tc.with_initializers(case.model, list(inputs), variant == "first_input")
        reference = tc._ort_session(model).run(None, feeds)
    except Exception:
        return "skipped"
    if any(not isinstance(r, np.ndarray) for r in reference):
        return "skipped"
    try:
        with _quiet():
            out = TOOL_FNS[tool](model)
    except Exception:
        return "crash"
    try:
        onnx.checker.check_model(out)
        got = tc._ort_session(out).run(None, feeds)
    except Exception:
        return "invalid"
    if any(not tc._same(a, b) for a, b in zip(reference, got)):
        return "mismatch"
    if variant == "all_const":
        produced = {o for n in out.graph.node for o in n.output}
        if any(o.name in produced for o in out.graph.output):
            return "not folded"
    return "passed"


# --------------------------------------------------------------------------- report


def light_models() -> list[Path]:
    return sorted((Path(onnx.__file__).parent / "backend" / "test" / "data" / "light").glob("*.onnx"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="", help="folder of real models (*.onnx)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--no-light", action="store_true", help="skip onnx's bundled light architectures")
    ap.add_argument("--only", default="", help="substring filter on model file names")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--conformance", action="store_true", help="also run the ONNX node test cases")
    ap.add_argument("--conformance-tools", default="simplify,onnxsim,onnxslim,gs-fold,ort-basic")
    ap.add_argument("--json", default="", help="write raw results here")
    ap.add_argument("--latency", type=int, default=0, metavar="N",
                    help="also time every tool's output against the original in onnxruntime (1 thread, N "
                         "interleaved rounds, medians) and report latency / original")
    ap.add_argument("--worker", nargs=2, metavar=("TOOL", "MODEL"), help=argparse.SUPPRESS)
    args, _extra = ap.parse_known_args()

    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.repeat)))
        return 0

    from common import markdown_table, reproduce_line

    tools = [t for t in args.tools.split(",") if t]
    paths = sorted(Path(args.models).glob("*.onnx")) if args.models else []
    if not args.no_light:
        paths += light_models()
    paths = [p for p in paths if args.only in p.name]
    results: dict[str, dict] = {}
    rows = []
    targets: list[list] = []
    pass_targets: list[list] = []
    for p in paths:
        name = p.name
        results[name] = {"original": original_stats(str(p))}
        with tempfile.TemporaryDirectory(prefix="onnxopt-bench-") as save_dir:
            for tool in tools:
                print(f"  {name} / {tool} ...", file=sys.stderr, flush=True)
                results[name][tool] = run_worker(tool, str(p), args.repeat, args.timeout,
                                                 save_dir if args.latency else "")
            lat = latency_ratios(str(p), save_dir, tools, args.latency) if args.latency else {}
        orig = results[name]["original"]
        rows.append([name, "original", orig["nodes"], orig["dyn"], "", "", f"{orig['weights_mb']:.2f}",
                     "1.00" if lat else "", ""])
        for tool in tools:
            r = results[name][tool]
            if tool in lat:
                r["latency_ratio"] = lat[tool]
            lx = f"{lat[tool]:.2f}" if tool in lat else ""
            if "nodes" not in r:
                rows.append([name, tool, "", "", "", f"{r.get('rss_mb', 0):.0f}" if r.get("rss_mb") else "", "",
                             lx, r["status"]])
                continue
            rows.append([name, tool, r["nodes"], r["dyn"], f"{r['seconds']:.2f}", f"{r['rss_mb']:.0f}",
                         f"{r['weights_mb']:.2f}", lx, r["status"]])
        targets.append(_targets(name, results[name], "onnxopt"))
        pass_targets.append(_targets(name, results[name], "simplify"))
    print(markdown_table(["model", "tool", "nodes", "dyn", "time s", "peak RSS MB", "weights MB", "latency x",
                          "outputs"], rows))
    print()
    headers = ["model", "dyn <= min(anchors)", "weights within 10% or 1 MB", "outputs ok", "time <= onnxslim",
               "RSS <= onnxsim"]
    for tool, table in (("onnxopt", targets), ("simplify", pass_targets)):
        if tool in tools:
            print(f"Targets for `{tool}` vs the anchors (dyn = nodes that depend on a graph input):")
            print()
            print(markdown_table(headers, table))
            print()
    if args.conformance:
        print()
        print("ONNX node conformance (all cases; passed = outputs equal onnxruntime's on the original):")
        print()
        print(conformance([t for t in args.conformance_tools.split(",") if t]))
    print()
    print(reproduce_line())
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def _targets(name: str, res: dict, tool: str) -> list:
    me = res.get(tool) or {}
    if "nodes" not in me:
        return [name, "crash", "", "", "", ""]
    anchors = [res[a]["dyn"] for a in ANCHORS if a in res and "dyn" in res[a]]
    best = min(anchors) if anchors else None
    orig_w = res["original"]["weights_mb"]
    dyn_ok = "n/a" if best is None else ("yes" if me["dyn"] <= best else f"NO ({me['dyn']} > {best})")
    w_ok = "yes" if me["weights_mb"] <= max(orig_w * 1.1, orig_w + 1.0) else f"NO ({me['weights_mb']:.1f} MB)"
    out_ok = "yes" if me["status"].startswith("ok") else me["status"]
    slim = res.get("onnxslim", {})
    t_ok = "n/a" if "seconds" not in slim else ("yes" if me["seconds"] <= slim["seconds"] else
                                                f"NO ({me['seconds']:.2f} > {slim['seconds']:.2f})")
    sim = res.get("onnxsim", {})
    m_ok = "n/a" if "rss_mb" not in sim else ("yes" if me["rss_mb"] <= sim["rss_mb"] else
                                              f"NO ({me['rss_mb']:.0f} > {sim['rss_mb']:.0f})")
    return [name, dyn_ok, w_ok, out_ok, t_ok, m_ok]


if __name__ == "__main__":
    sys.exit(main())
