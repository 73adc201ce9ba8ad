"""What onnxruntime really runs, and how fast: kernel counts, interleaved timing, per-node profiles.

- :func:`kernel_counts` opens a session with ``optimized_model_filepath`` and counts the nodes of the
  graph onnxruntime actually executes: int8 kernels (QLinearConv, QGemm, MatMulIntegerToFloat, ...)
  against float compute left and Q/DQ nodes left unfused.
- :func:`interleaved_latency` times several models in the same process, round-robin with the order
  reversed every round, and returns medians (single timings on a shared machine mean nothing).
- :func:`node_times` reads onnxruntime's profiler to get per-node kernel times;
  :func:`compute_kernel_times` maps them back to the compute nodes of the graph that was given to
  onnxruntime (fused, NCHWc and NHWC kernels carry derived names).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from onnxopt.data import Feed
from onnxopt.model import iter_graphs
from onnxopt.validate import make_session

log = logging.getLogger(__name__)

INT8_KERNELS = frozenset({
    "QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat", "QGemm", "QLinearAdd", "QLinearMul",
    "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSigmoid",
    "QLinearLeakyRelu", "QLinearSoftmax", "QLinearWhere", "MatMulInteger", "ConvInteger",
    "DynamicQuantizeMatMul", "QLinearReduceMean", "NhwcMaxPool", "QAttention", "QEmbedLayerNormalization",
})
FLOAT_COMPUTE = frozenset({"Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm", "FusedGemm", "ConvTranspose",
                           "NhwcFusedConv", "NhwcConv", "Attention", "MultiHeadAttention"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def session(model: onnx.ModelProto | str, *, threads: int = 1, optimized_path: str | None = None,
            profile: bool = False, optimize: bool = True):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tempfile.gettempdir(), f"onnxopt-prof-{os.getpid()}")
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # any size: a model past protobuf's 2 GB limit goes through a temp file (timing keeps prepacking on)
    return make_session(model, opts, low_memory=False)


def optimized_graph(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """The graph onnxruntime CPU executes after all its optimizations (None when it cannot be saved)."""
    with tempfile.TemporaryDirectory(prefix="onnxopt-opt-") as d:
        path = str(Path(d) / "optimized.onnx")
        try:
            session(model, optimized_path=path)
            return onnx.load(path)
        except Exception as exc:  # the report says "unknown" rather than failing the pass
            log.debug("cannot save onnxruntime's optimized model: %s", exc)
            return None


def kernel_counts(model: onnx.ModelProto) -> dict:
    """Counts of int8 kernels, float compute and unfused Q/DQ in onnxruntime's optimized graph."""
    opt = optimized_graph(model)
    if opt is None:
        return {"available": False}
    ops: Counter[str] = Counter()
    for g in iter_graphs(opt.graph):
        ops.update(n.op_type for n in g.node)
    int8 = {k: v for k, v in sorted(ops.items()) if k in INT8_KERNELS}
    flt = {k: v for k, v in sorted(ops.items()) if k in FLOAT_COMPUTE}
    qdq = {k: v for k, v in sorted(ops.items()) if k in QDQ_OPS}
    return {
        "available": True,
        "int8_kernels": int8,
        "int8_kernel_total": sum(int8.values()),
        "float_compute": flt,
        "float_compute_total": sum(flt.values()),
        "qdq_left": qdq,
        "nodes_total": sum(ops.values()),
        "other_ops": {k: v for k, v in sorted(ops.items()) if k not in INT8_KERNELS | FLOAT_COMPUTE | QDQ_OPS},
    }


def interleaved_latency(models: list[onnx.ModelProto | str], feeds: Sequence[Feed], *, repeat: int = 20,
                        threads: int = 1, warmup: int = 2, budget_s: float | None = None,
                        release: bool = False) -> list[float]:
    """Median seconds per run of each model, measured round-robin in one process.

    Every round runs each model once on the same feed (feeds cycle across rounds); odd rounds run
    the models in reverse order, so a slow drift of the machine hits all of them alike.
    ``budget_s`` stops early (after at least 5 rounds) once that much wall time was spent.
    ``release`` sets each entry of ``models`` to None once its session exists, so a model nobody
    else holds is freed before the next session is built.
    """
    sessions = []
    for i in range(len(models)):
        sessions.append(session(models[i], threads=threads))
        if release:
            models[i] = None  # type: ignore[index]
    names = [[i.name for i in s.get_inputs()] for s in sessions]
    feeds = list(feeds)
    for _ in range(warmup):
        for s, nm in zip(sessions, names):
            s.run(None, {k: feeds[0][k] for k in nm})
    times: list[list[float]] = [[] for _ in sessions]
    start = time.perf_counter()
    for r in range(repeat):
        feed = feeds[r % len(feeds)]
        order = range(len(sessions)) if r % 2 == 0 else reversed(range(len(sessions)))
        for i in order:
            f = {k: feed[k] for k in names[i]}
            t0 = time.perf_counter()
            sessions[i].run(None, f)
            times[i].append(time.perf_counter() - t0)
        if budget_s is not None and r >= 4 and time.perf_counter() - start > budget_s:
            break
    return [float(np.median(t)) for t in times]


def node_times(model: onnx.ModelProto, feed: Feed, *, runs: int = 10, threads: int = 1,
               median: bool = False) -> dict[str, tuple[str, float]]:
    """Per-node kernel time (seconds; mean, or median with ``median``) from onnxruntime's profiler:
    node name -> (op type, time)."""
    s = session(model, threads=threads, profile=True)
    names = [i.name for i in s.get_inputs()]
    f = {k: feed[k] for k in names}
    s.run(None, f)
    for _ in range(runs):
        s.run(None, f)
    path = s.end_profiling()
    try:
        with open(path) as fh:
            events = json.load(fh)
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)
    acc: dict[str, list] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        op = e.get("args", {}).get("op_name", "?")
        entry = acc.setdefault(name, [op, []])
        entry[1].append(e["dur"] * 1e-6)
    if median:
        return {k: (v[0], float(np.median(v[1][1:] or v[1]))) for k, v in acc.items()}
    return {k: (v[0], float(np.mean(v[1]))) for k, v in acc.items()}


def _ort_base_name(name: str) -> str:
    """The graph name behind an onnxruntime node name (``X_token_12``, ``X_nchwc``, ``X/duplicated``)."""
    for suffix in ("_nchwc",):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    head, sep, tail = name.rpartition("_token_")
    if sep and tail.isdigit():
        name = head
    return name


def compute_kernel_times(model: onnx.ModelProto, feed: Feed, aliases: dict[str, str], *, runs: int = 20,
                         threads: int = 1) -> dict[str, float]:
    """Median kernel seconds per compute node of ``model``, keyed by the names in ``aliases``.

    ``aliases`` maps names onnxruntime may give a kernel (the node's name, its output tensor, the
    output of an activation it absorbed) to the compute node's name. Kernels whose name matches no
    alias are ignored (they are not compute, or onnxruntime renamed them beyond recognition).
    """
    out: dict[str, float] = {}
    for name, (op, sec) in node_times(model, feed, runs=runs, threads=threads, median=True).items():
        if op in QDQ_OPS:
            continue
        key = aliases.get(name) or aliases.get(_ort_base_name(name))
        if key is not None and (op in INT8_KERNELS or op in FLOAT_COMPUTE):
            out[key] = out.get(key, 0.0) + sec
    return out
