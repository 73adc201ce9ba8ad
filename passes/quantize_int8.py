"""quantize-int8: static int8 quantization by QDQ insertion that onnxruntime's CPU kernels fuse.

Kind: LOSSY. What it keeps invariant: graph inputs/outputs (names, dtypes, shapes), every float
output still float; opset >= 13 (the manager upgrades first).

Steps (each reported in the stats):
1. preprocessing (``quant_prep``): Constant-node weights to initializers, inference no-ops out,
   BatchNorm and affine Mul/Add folded into Conv, Gemm alpha/beta folded, MatMul + bias -> Gemm,
   Conv -> PRelu respelled ``a*x + (1-a)*Relu(x)``;
2. optional cross-layer equalization (``quant_equalize``), data-driven, for Conv -> [Relu] -> Conv;
3. placement (``quant_graph``): which nodes run int8 and where Q/DQ go, following onnxruntime's
   QDQ selectors; Relu/Clip absorbed, Mul/Div by constants folded into DQ scales, embedding tables
   stored uint8; tiny layers (squeeze-excite convs, heads) stay float;
4. calibration (``quant_calib``): one streamed pass, histograms only, range by minmax /
   percentile / entropy / mse;
5. speed guard (``quant_select``): a few selections (all, no depthwise, intensity cuts) timed
   against fp32 in this process, interleaved; the fastest that beats fp32 wins, else no change
   (when step 1 respelled PRelus, the float model with that rewrite competes too, and may be the output);
6. emission: uint8 activations, int8 symmetric per-channel weights stored quantized behind a
   DequantizeLinear, int32 biases at ``s_x * s_w``; sequential empirical bias correction
   (``quant_bias``) of every int8 Conv/Gemm;
7. mixed precision (``quant_select``): per-layer damage, then the most int8 layers that still meet
   ``min_sqnr`` / ``min_cosine`` / ``min_top1`` (binary search; top-1 0.99 on class-score outputs
   unless told otherwise), reported layer by layer;
8. proof: onnxruntime's optimized graph counted (int8 kernels vs float compute left), latency
   int8 vs fp32 interleaved (and the model kept float if int8 no longer wins), fidelity on the
   run's validation samples, which are held apart from calibration when the run has them.
"""

from __future__ import annotations

import gc
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.activations import collect_stats
from onnxopt.context import PassContext
from onnxopt.errors import PassError, UsageError
from onnxopt.model import load, save, structure_copy, to_graph, to_model
from onnxopt.passes_api import Kind, Pass, PassResult
from onnxopt.validate import compare_outputs, run_model, summarize

from .quant_bias import correct_biases
from .quant_calib import METHODS, QParams, compute_range, qparams_u8
from .quant_equalize import equalize, intermediate_tensors
from .quant_graph import (
    COMPUTE_ROLES,
    ELEMENTWISE_ROLES,
    EmitOptions,
    Plan,
    calibration_tensors,
    consumer_bounds,
    emit,
    is_depthwise,
    make_plan,
    name_nodes,
)
from .quant_prep import prepare
from .quant_select import (
    CLASSIFIER_TOP1,
    PREPARED_FLOAT,
    Candidate,
    choose_fastest,
    kernel_aliases,
    mixed_precision,
    node_costs,
    prefix_precision,
    profile_candidates,
    speed_candidates,
    tensor_shapes,
)
from .quant_select import Budget as MPBudget
from .quant_speed import compute_kernel_times, interleaved_latency, kernel_counts

log = logging.getLogger(__name__)


#: a tensor whose calibrated range is wider than this (or not finite) is never quantized: masks of
#: -1e4 / float-min, unbounded intermediate values; 8 bits across such a range carry nothing
MAX_SPAN = 1e5
#: calibration samples the pass keeps in memory for timing, bias correction and mixed-precision
#: fidelity: up to HELD_SAMPLES, fewer (never under HELD_MIN) when they would take more than
#: HELD_BYTES. Many: the SQNR of a 4-class classifier is decided by its few ambiguous inputs (the
#: aggregate over 8 held images ran 3 dB above the one over 16 held-out images, and per-sample SQNR
#: of a VAD probability spreads over 15 dB), so mixed precision needs as many samples as it can get
HELD_SAMPLES = 32
HELD_MIN = 8
HELD_BYTES = 256 * 2**20
#: mixed precision aims this much above min_sqnr on calibration samples, so that held-out
#: validation samples (which the run checks) still meet the budget
MP_MARGIN_DB = 1.0
#: bias correction inside the mixed-precision search uses this many of the held samples (the model the
#: pass outputs is corrected on all of them): its per-channel means run over every spatial position, so
#: a few images estimate them, and the search corrects dozens of candidates (most of PP-OCR det's time)
BC_SEARCH_SAMPLES = 8
#: int8 must beat fp32 by this fraction of the fp32 latency to be kept
SPEED_MARGIN = 0.03
#: a small gain (int8 latency above this fraction of fp32) is not worth a thin fidelity margin (SQNR
#: on the calibration samples less than THIN_SQNR_DB above ``min_sqnr``): held-out data drifts
#: further than that (silero's openvino VAD: 21 dB on calibration chunks, 19.5 dB on other speech)
SMALL_GAIN_RATIO = 0.90
THIN_SQNR_DB = 2.5
#: when the speed guard picked a selection that keeps more nodes float than "all" but timed within
#: this fraction of it, the float-prefix search for the fidelity budget also starts from "all": the two
#: are a tie on a shared machine, and the extra float nodes can cost fidelity instead of buying it
#: (silero's openvino VAD: all-int8 except the STFT conv meets 20 dB on calibration chunks at ~0.75x
#: fp32; with the speed guard's extra float encoder conv, the search had to keep three convs float
#: and the result timed 0.99x)
ALT_BASE_MARGIN = 0.10
#: timing rounds for comparing selections and for the final int8 vs fp32 check: at least
#: MIN_TIMING_ROUNDS, and on small models as many as fit in TIMING_TARGET_S (up to
#: MAX_TIMING_ROUNDS). 15 rounds of a 0.15 ms model are 5 ms of timing: the same silero file timed
#: 0.82x and 0.90x in two such checks, 0.75-0.77x over 3 x 400 rounds
MIN_TIMING_ROUNDS = 15
MAX_TIMING_ROUNDS = 400
TIMING_TARGET_S = 0.5


def _usable(r: tuple[float, float] | None) -> bool:
    return r is not None and bool(np.isfinite(r[0]) and np.isfinite(r[1])) and (r[1] - r[0]) <= MAX_SPAN


def shape_annotations(model: onnx.ModelProto | None) -> set[str]:
    """Names of the intermediate tensors whose shape ``model`` states (its value_info with a shape)."""
    if model is None:
        return set()
    return {vi.name for vi in model.graph.value_info if vi.type.tensor_type.HasField("shape")}


def drop_new_shapes(model: onnx.ModelProto, keep: set[str]) -> int:
    """Clear the shape of every value_info entry not named in ``keep`` (dtypes stay); returns how many.

    The pass works on a graph with inferred shapes, and exporting it would state the shape of every
    intermediate tensor. onnxruntime then knows every dim, and some of its fusions only fire then -
    Add -> LayerNormalization becomes SkipLayerNormalization, whose CPU kernel (onnxruntime 1.32) is
    3-6x slower than the Add and LayerNormalization it replaces ([1, 16, 384]: 39 vs 14 us; [1, 512,
    768]: 2.1 vs 0.58 ms). The float model the user gave does not state those shapes, so the int8
    model does not either: onnxruntime infers what it can, as it does for the original.
    """
    n = 0
    for vi in model.graph.value_info:
        if vi.name not in keep and vi.type.tensor_type.HasField("shape"):
            vi.type.tensor_type.ClearField("shape")
            n += 1
    return n


def float_macs(nodes: set[str], macs: dict[str, float]) -> float:
    """MACs of the compute nodes in ``nodes`` (tables and unknown nodes count 0)."""
    return float(sum(macs.get(n, 0.0) for n in nodes))


def timing_rounds(fp32_seconds: float | None, models: int) -> int:
    """Interleaved rounds for timing ``models`` models of about ``fp32_seconds`` each (see
    TIMING_TARGET_S): small models get more rounds, large ones MIN_TIMING_ROUNDS."""
    if not fp32_seconds or fp32_seconds <= 0:
        return MIN_TIMING_ROUNDS
    n = int(TIMING_TARGET_S / (fp32_seconds * max(1, models)))
    return int(min(MAX_TIMING_ROUNDS, max(MIN_TIMING_ROUNDS, n)))


def fastest_selection(seconds: Sequence[float], macs: Sequence[float], margin: float = SPEED_MARGIN) -> int:
    """Index of the selection to keep among several that meet the budget: the fastest, except that
    selections within ``margin`` of it are a tie, which goes to the one keeping fewer MACs float.

    A shared machine does not tell 1% apart: MiniLM's per-layer selection (one embedding table float:
    no compute) and its 5-Gemm float prefix timed 1.45 vs 1.44 ms once, and the prefix won by that
    noise (0.40x instead of 0.34x in the same run's speed guard).
    """
    best = int(np.argmin(seconds))
    ties = [i for i, t in enumerate(seconds) if t * (1.0 - margin) <= seconds[best]]
    return min(ties, key=lambda i: (macs[i], seconds[i]))


def _replace_graph(graph: gs.Graph, new: gs.Graph) -> None:
    """Make ``graph`` hold ``new``'s nodes and interface (the manager exports the object it gave us)."""
    graph.nodes = new.nodes
    graph.inputs = new.inputs
    graph.outputs = new.outputs
    graph.opset = max(graph.opset or 0, new.opset or 0)


class QuantizeInt8(Pass):
    """Static int8 quantization in QDQ form (see the module docstring).

    Options:
      method            activation calibration: "minmax", "percentile", "entropy", "mse"
      percentile        tail kept by "percentile" (99.999)
      per_channel       int8 weights per output channel (True) or per tensor
      weight_method     "minmax" (max |w|) or "mse" (per-channel clipping minimizing squared error)
      exclude           node names or op types kept in float ("depthwise": every depthwise Conv);
                        a comma-separated string is accepted
      matmul_activations quantize MatMul between two activations (attention)
      elementwise       quantize Add/Mul/Concat/pooling/Sigmoid/Softmax when it saves Q/DQ
      speed_guard       time int8 against fp32 and keep in float the regions where int8 loses
      equalize          cross-layer equalization of consecutive Convs (depthwise-separable nets)
      bias_correction   sequential empirical bias correction of every int8 Conv/Gemm
      min_sqnr, min_cosine, min_top1   fidelity budget for automatic mixed precision (defaults: the
                        run's own default budget, 20 dB and 0.99; None switches a criterion off, except
                        min_top1: None is 0.99 top-1 agreement on class-score outputs, 0 switches it off)
      mp_budget_s       time allowed for the per-layer sensitivity measurements
      min_macs          compute nodes below this many MACs (and under 2% of the model's) stay float
      tables            store constant embedding tables read by Gather as uint8
      calibration_samples   use at most this many calibration samples (None: all)
      bins              histogram bins per tensor (memory per tensor = 8 x bins bytes)
      reduce_range      7-bit weights, for CPUs without VNNI
      threads           onnxruntime threads for timing (1 is the steadiest on a shared machine)
    """

    name = "quantize-int8"
    kind = Kind.LOSSY
    min_opset = 13
    releases_input = True  # large models: the prepared copy replaces the model it was given

    def __init__(
        self,
        method: str = "percentile",
        percentile: float = 99.999,
        per_channel: bool = True,
        weight_method: str = "minmax",
        exclude: Sequence[str] = (),
        matmul_activations: bool = True,
        elementwise: bool = True,
        speed_guard: bool = True,
        equalize: bool = False,
        bias_correction: bool = True,
        min_sqnr: float | None = 20.0,
        min_cosine: float | None = 0.99,
        min_top1: float | None = None,
        calibration_samples: int | None = None,
        bins: int = 4096,
        reduce_range: bool = False,
        threads: int = 1,
        mp_budget_s: float = 300.0,
        min_macs: float = 2**18,
        tables: bool = True,
    ):
        if method not in METHODS:
            raise UsageError(f"quantize-int8: unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if weight_method not in ("minmax", "mse"):
            raise UsageError(f"quantize-int8: weight_method must be minmax or mse, got {weight_method!r}")
        if not 50.0 < float(percentile) <= 100.0:
            raise UsageError(f"quantize-int8: percentile must be in (50, 100], got {percentile}")
        if bins < 256 or bins % 4:
            raise UsageError(f"quantize-int8: bins must be a multiple of 4 and >= 256, got {bins}")
        if calibration_samples is not None and calibration_samples < 1:
            raise UsageError(f"quantize-int8: calibration_samples must be >= 1, got {calibration_samples}")
        if isinstance(exclude, str):
            exclude = [e for e in exclude.split(",") if e]
        self.method = method
        self.percentile = float(percentile)
        self.per_channel = bool(per_channel)
        self.weight_method = weight_method
        self.exclude = tuple(exclude)
        self.matmul_activations = bool(matmul_activations)
        self.elementwise = bool(elementwise)
        self.speed_guard = bool(speed_guard)
        self.equalize = bool(equalize)
        self.bias_correction = bool(bias_correction)
        self.min_sqnr = min_sqnr
        self.min_cosine = min_cosine
        self.min_top1 = min_top1
        self.calibration_samples = calibration_samples
        self.bins = int(bins)
        self.reduce_range = bool(reduce_range)
        self.threads = int(threads)
        self.mp_budget_s = float(mp_budget_s)
        self.min_macs = float(min_macs)
        self.tables = bool(tables)
        self._ref_means: dict = {}  # float reference means for bias correction, one run's worth
        self._annotated: set[str] = set()  # intermediate tensors whose shape the input model states

    # ------------------------------------------------------------------ helpers

    def _exclusions(self, graph: gs.Graph) -> tuple[set[str], set[str]]:
        names = {n.name for n in graph.nodes}
        ops = {n.op for n in graph.nodes}
        float_nodes, float_ops = set(), set()
        for e in self.exclude:
            if e == "depthwise":
                float_nodes |= {n.name for n in graph.nodes if is_depthwise(n)}
            elif e in names:
                float_nodes.add(e)
            elif e in ops or e[:1].isupper():
                float_ops.add(e)
            else:
                raise UsageError(f"quantize-int8: exclude names {e!r}, which is neither a node nor an op type here")
        return float_nodes, float_ops

    def _calibration_feeds(self, context: PassContext):
        source = context.calibration_feeds()
        if context.calibration is None and not context.validation_feeds:
            source = iter(self._synthetic(context))
        for n, feed in enumerate(source):
            if self.calibration_samples is not None and n >= self.calibration_samples:
                return
            yield feed

    def _synthetic(self, context: PassContext) -> list:
        """Seeded synthetic feeds when the run has neither calibration nor validation data."""
        key = "quantize-int8:synthetic-feeds"
        if key not in context.cache:
            from onnxopt.feeds import build_validation_set

            vs = build_validation_set(context.model, shapes=context.input_shapes or None, count=8,
                                      seed=context.seed)
            context.cache[key] = vs.feeds
        return context.cache[key]

    def qparams(self, stats: dict, bounds: dict[str, tuple[float, float]] | None = None
                ) -> tuple[dict[str, QParams], list[str], dict[str, tuple[float, float]]]:
        """Quantization parameters per calibrated tensor, tensors never seen, and the ranges.

        ``bounds`` (from :func:`consumer_bounds`) clip a range where every reader ignores the values
        beyond (a HardSwish input below -3)."""
        out: dict[str, QParams] = {}
        ranges: dict[str, tuple[float, float]] = {}
        unseen: list[str] = []
        for name, st in stats.items():
            try:
                lo, hi = compute_range(st, self.method, percentile=self.percentile)
            except ValueError:
                unseen.append(name)
                ranges[name] = (np.nan, np.nan)
                continue
            if bounds and name in bounds:
                blo, bhi = bounds[name]
                lo, hi = max(lo, blo), min(hi, bhi)
                if lo > hi:  # every value beyond one bound: the reader sees a constant
                    lo = hi = bhi if lo >= bhi else blo
            ranges[name] = (lo, hi)
            if _usable((lo, hi)):
                out[name] = qparams_u8(lo, hi)
        return out, unseen, ranges

    def plan(self, graph: gs.Graph, float_nodes: set[str], float_ops: set[str],
             ranges: dict[str, tuple[float, float]] | None) -> tuple[Plan, set[str]]:
        """Placement for ``graph``; nodes that would need an unusable range are forced to float.

        Returns the plan and the nodes forced to float (beyond ``float_nodes``).
        """
        forced: set[str] = set()
        while True:
            plan = make_plan(graph, float_nodes=float_nodes | forced, exclude_ops=float_ops,
                             matmul_activations=self.matmul_activations, elementwise=self.elementwise,
                             ranges=ranges, tables=self.tables)
            if ranges is None:
                return plan, forced
            bad = {root for root in plan.roots if not _usable(ranges.get(root))}
            if not bad:
                return plan, forced
            culprits = plan.nodes_touching(bad)
            if not culprits - forced:
                raise PassError(f"quantize-int8: cannot place Q/DQ around tensors {sorted(bad)[:3]}")
            forced |= culprits

    def build(self, prepared: onnx.ModelProto, qp: dict[str, QParams], ranges: dict[str, tuple[float, float]],
              float_nodes: set[str], float_ops: set[str], correct_on: list | None = None
              ) -> tuple[onnx.ModelProto, Plan, dict]:
        """The QDQ model for one selection (a fresh import of the prepared float model); with
        ``correct_on`` (calibration feeds) its biases are corrected against ``prepared``."""
        g = to_graph(prepared)
        plan, forced = self.plan(g, float_nodes, float_ops, ranges)
        by_name = {n.name: n for n in g.nodes}
        layers = {n: (1 if by_name[n].op == "Conv" else -1) for n in plan.int8_nodes(("conv", "gemm"))}
        counts = emit(g, plan, qp, EmitOptions(self.per_channel, self.weight_method, self.reduce_range,
                                                add_bias=self.bias_correction))
        counts["forced_float_by_range"] = sorted(forced)
        model = to_model(g, like=prepared)
        del g, by_name
        gc.collect()  # the graph is a cycle holding the quantized weights again: free it now, not later
        if correct_on:
            counts["bias_correction"] = correct_biases(model, prepared, layers, correct_on, cache=self._ref_means)
        drop_new_shapes(model, self._annotated)  # what onnxruntime sees: timed and output alike
        return model, plan, counts

    # ------------------------------------------------------------------ run

    def run(self, graph: gs.Graph, context: PassContext) -> PassResult:
        t0 = time.perf_counter()
        self._ref_means = {}
        self._annotated = shape_annotations(context.model)
        stats: dict[str, Any] = {"method": self.method}
        if context.calibration is None:
            stats["synthetic_calibration"] = True
            stats["warning"] = ("no calibration data: calibrated on synthetic validation feeds; "
                                "ranges (and fidelity) say little about real inputs")
            log.warning("quantize-int8: no calibration data given; calibrating on synthetic feeds")
        else:
            stats["synthetic_calibration"] = False
            stats["calibration_source"] = context.calibration_source
        name_nodes(graph)
        stats["preprocessing"] = prepare(graph)
        float_nodes, float_ops = self._exclusions(graph)
        base = context.model
        prepared = to_model(graph, like=base)
        if self.equalize:
            inter = intermediate_tensors(graph)
            if inter:
                cst = collect_stats(prepared, inter, self._calibration_feeds(context), bins=256,
                                    channel_axis=dict.fromkeys(inter, 1))
                means = {n: s.channel_abs_mean for n, s in cst.items() if s.channel_abs_mean is not None}
                stats["equalization"] = equalize(graph, means)
                prepared = to_model(graph, like=base)
        released = context.model_releasable
        if released:
            # a large model: one copy of the weights, not two. The graph now reads the prepared model's
            # tensors and the model the pass was given goes (the manager keeps it on disk); float
            # timings then use the prepared model as the reference (the same weights after step 1)
            _replace_graph(graph, to_graph(prepared, infer=True))
            base = prepared
            if context.calibration is None and not context.validation_feeds:
                self._synthetic(context)  # made from the model: before it goes (then cached)
            context.model = None
            gc.collect()  # graphsurgeon graphs are cycles
        plan0, _ = self.plan(graph, float_nodes, float_ops, None)
        if not plan0.int8_nodes(COMPUTE_ROLES + ELEMENTWISE_ROLES):
            stats["reason"] = "no quantizable Conv/MatMul/Gemm in the main graph"
            return PassResult(False, stats)

        # calibration: one streamed pass over the calibration set, histograms only
        names = calibration_tensors(graph, plan0)
        t1 = time.perf_counter()
        reservoir: list[tuple[int, Any]] = []
        rng = context.rng(salt=4)

        def keep_some(feeds):
            # a uniform sample of the calibration set (reservoir sampling), for timing, bias correction
            # and mixed precision: spread over the whole set, not its first samples
            cap = HELD_MIN
            for i, feed in enumerate(feeds):
                if i == 0:
                    nbytes = max(1, sum(np.asarray(v).nbytes for v in feed.values()))
                    cap = int(min(HELD_SAMPLES, max(HELD_MIN, HELD_BYTES // nbytes)))
                if len(reservoir) < cap:
                    reservoir.append((i, feed))
                else:
                    j = int(rng.integers(0, i + 1))
                    if j < cap:
                        reservoir[j] = (i, feed)
                yield feed

        tstats = collect_stats(prepared, names, keep_some(self._calibration_feeds(context)), bins=self.bins)
        if max((s.count for s in tstats.values()), default=0) == 0:
            raise PassError("quantize-int8: no calibration samples (the calibration set is empty)",
                            advice="give --calibration with at least one sample")
        bounds = consumer_bounds(graph)
        qp, unseen, ranges = self.qparams(tstats, bounds)
        stats["calibration"] = {
            "tensors": len(names), "seconds": round(time.perf_counter() - t1, 3), "bins": self.bins,
            "histogram_bytes": int(sum(s.hist.nbytes for s in tstats.values())),
            "tensors_without_values": len(unseen),
            "ranges_clipped_by_readers": len([n for n in bounds if n in tstats]),
        }
        del tstats
        held = [f for _, f in sorted(reservoir, key=lambda t: t[0])]
        timing_feeds = held[:2]
        shapes = tensor_shapes(prepared, names, held[0]) if held else {}
        costs = node_costs(graph, plan0, shapes)
        total_macs = sum(c.macs for c in costs.values())
        by_name = {n.name: n for n in graph.nodes}

        def no_spatial_work(name: str) -> bool:
            # a conv writing a 1x1 map (squeeze-excite, heads after global pooling) or a Gemm/MatMul;
            # small convs inside the feature trunk stay int8: a float island there costs more than it saves
            node = by_name.get(name)
            if node is None or node.op != "Conv":
                return True
            ys = shapes.get(node.outputs[0].name)
            return ys is None or int(np.prod(ys[2:])) <= 1

        tiny = {n for n, c in costs.items()
                if c.macs < self.min_macs and c.macs < 0.02 * total_macs and n not in float_nodes
                and no_spatial_work(n)}
        if tiny:
            # tiny compute (squeeze-excite convs on 1x1 maps, classifier heads): no speed to gain,
            # and their few-channel, mostly-idle activations quantize badly
            stats["tiny_kept_float"] = len(tiny)
            float_nodes = float_nodes | tiny

        # speed guard: measured selections, the fastest one that beats fp32
        chosen_float = set(float_nodes)
        final_timing: dict[str, Any] | None = None
        alt_base: set[str] | None = None  # the "all" selection, when it tied with the speed guard's choice
        fp32_seconds: float | None = None
        if self.speed_guard:
            cands = []
            live = {n: c for n, c in costs.items() if n not in float_nodes}
            order = [n for n in costs if n in live]
            aliases = kernel_aliases(graph, order)

            def kernel_times(model: onnx.ModelProto) -> dict[str, float]:
                if not timing_feeds:
                    return {}
                try:
                    return compute_kernel_times(model, timing_feeds[0], aliases, threads=self.threads)
                except Exception as exc:  # profiling is an aid, never a reason to fail
                    log.debug("kernel profiling failed: %s", exc)
                    return {}

            # per-node kernel times, float model vs all-int8 model: where int8 kernels lose. The float
            # profile comes first, while no candidate model is held (peak memory of huge models)
            f_s = kernel_times(prepared)
            for label, fl in speed_candidates(live, set(float_nodes)):
                model, plan, _ = self.build(prepared, qp, ranges, fl, float_ops)
                cands.append(Candidate(label, fl, model, len(plan.int8_nodes(COMPUTE_ROLES))))
            if cands and timing_feeds:
                q_s = kernel_times(cands[0].model) if f_s else {}
                f_s = f_s if q_s else {}
                stats["kernel_profile"] = {n: {"fp32_us": round(f_s[n] * 1e6, 1), "int8_us": round(q_s[n] * 1e6, 1)}
                                           for n in order if n in f_s and n in q_s}
                seen = {frozenset(c.float_nodes) for c in cands}
                for label, fl in profile_candidates(order, f_s, q_s, set(float_nodes)):
                    if frozenset(fl) in seen:
                        continue
                    seen.add(frozenset(fl))
                    model, plan, _ = self.build(prepared, qp, ranges, fl, float_ops)
                    cands.append(Candidate(label, fl, model, len(plan.int8_nodes(COMPUTE_ROLES))))
            if stats["preprocessing"].get("prelu_respelled"):
                # step 1's exact PRelu respelling alone speeds float up (MTCNN): int8 has to beat that too
                cands.append(Candidate(PREPARED_FLOAT, set(costs) | set(float_nodes), prepared, 0))
            # the float reference is the model as the pass received it: the rewrites of step 1 may
            # cost float speed, and int8 has to beat what the user would run without it
            model = plan = None  # the last candidate built: only ``cands`` may hold it (choose_fastest frees it)
            parked = None
            if released:
                # a huge model: the float weights wait on disk while onnxruntime times them, so memory
                # holds the float session's own (prepacked) copy and not Python's as well
                parked = tempfile.TemporaryDirectory(prefix="onnxopt-float-")
                float_path = os.path.join(parked.name, "float.onnx")
                save(prepared, float_path, external_data=True)
                _replace_graph(graph, to_graph(structure_copy(prepared)))
                for c in cands:
                    if c.model is prepared:
                        c.model = float_path  # type: ignore[assignment]
                base = prepared = by_name = None  # type: ignore[assignment]  (by_name: the old graph's nodes)
                gc.collect()
            decision = choose_fastest(float_path if parked else base, cands, timing_feeds, threads=self.threads,
                                      margin=SPEED_MARGIN)
            if parked is not None:
                base = prepared = load(float_path, check=False)
                _replace_graph(graph, to_graph(prepared, infer=True))
                parked.cleanup()
            stats["speed_guard"] = decision.stats()
            if decision.chosen == PREPARED_FLOAT:
                # the prepared float model is the output: exact rewrites, float rounding only; like an
                # int8 output it states no intermediate shapes the input did not (see drop_new_shapes)
                drop_new_shapes(prepared, self._annotated)
                _replace_graph(graph, to_graph(prepared))
                sec = next(c.seconds for c in cands if c.label == PREPARED_FLOAT) or 0.0
                stats["latency"] = {"fp32_ms": round(decision.fp32_seconds * 1e3, 3), "float_prepared_ms":
                                    round(sec * 1e3, 3), "ratio": round(sec / decision.fp32_seconds, 3),
                                    "threads": self.threads}
                stats["reason"] = ("no int8 selection beat the float model with the exact rewrites of step 1 "
                                   f"({stats['preprocessing']}); that float model is the output, no int8")
                stats["seconds"] = round(time.perf_counter() - t0, 3)
                return PassResult(True, stats)
            if decision.chosen is None:
                stats["reason"] = "int8 was not faster than fp32 on this machine for any selection; model kept float"
                return PassResult(False, stats)
            chosen_float = decision.float_nodes
            best = next(c for c in cands if c.label == decision.chosen)
            everything = next((c for c in cands if c.label == "all"), None)
            if (everything is not None and everything.seconds is not None and best.seconds is not None
                    and everything.float_nodes < chosen_float
                    and everything.seconds <= best.seconds * (1.0 + ALT_BASE_MARGIN)):
                alt_base = set(everything.float_nodes)
            fp32_seconds = decision.fp32_seconds
            final_timing = {"fp32_ms": round(decision.fp32_seconds * 1e3, 3),
                            "int8_ms": round((best.seconds or 0.0) * 1e3, 3),
                            "ratio": round((best.seconds or 0.0) / decision.fp32_seconds, 3)}
            del cands, best, everything  # each holds a whole candidate model

        bc_feeds = held if self.bias_correction else None  # bias correction on the calibration samples
        held_sqnr = None

        # mixed precision: fewest layers back in float to meet the fidelity budget
        top1 = CLASSIFIER_TOP1 if self.min_top1 is None else self.min_top1 or None
        budget = MPBudget(None if self.min_sqnr is None else self.min_sqnr + MP_MARGIN_DB, self.min_cosine, top1)
        if budget.active and held:
            refs = run_model(prepared, held)
            quick_feeds = held[:2]
            quick_refs = refs[:2]
            bc_search = bc_feeds[:BC_SEARCH_SAMPLES] if bc_feeds else None

            def evaluate(fl: set[str], feeds=held, ref=refs, correct=bc_search) -> dict:
                m, _, _ = self.build(prepared, qp, ranges, fl, float_ops, correct_on=correct)
                return summarize(compare_outputs(ref, run_model(m, feeds)))

            plan_now, _ = self.plan(graph, chosen_float, float_ops, ranges)
            layers = plan_now.int8_nodes(COMPUTE_ROLES + ("table",))
            before = set(chosen_float)
            chosen_float, mp, mp_final = mixed_precision(
                evaluate, layers, chosen_float, budget,
                solo_evaluate=lambda fl: evaluate(fl, quick_feeds, quick_refs, quick_feeds if bc_feeds else None),
                deadline=time.perf_counter() + self.mp_budget_s, cost={n: c.macs for n, c in costs.items()})
            mp["budget"] = {"min_sqnr_db": self.min_sqnr, "min_cosine": self.min_cosine, "min_top1": top1,
                            "sqnr_margin_db": MP_MARGIN_DB if self.min_sqnr is not None else None,
                            "samples": len(held), "data": "calibration samples"}
            mp["float_layers"] = sorted(chosen_float - before)
            if chosen_float != before and timing_feeds:
                # the same budget met by a float prefix instead (one Q boundary, no islands), from the
                # speed guard's selection and, when "all" tied with it, from "all" too: keep whichever
                # selection that meets the budget runs fastest
                macs = {n: c.macs for n, c in costs.items()}
                options = [("mixed_precision", chosen_float, mp_final, before)]
                pf, pre, pre_final = prefix_precision(evaluate, layers, before, budget,
                                                      deadline=time.perf_counter() + self.mp_budget_s)
                if pf != chosen_float and pre_final and budget.met(pre_final):
                    options.append(("prefix", pf, pre_final, before))
                if alt_base is not None:
                    plan_all, _ = self.plan(graph, alt_base, float_ops, ranges)
                    layers_all = plan_all.int8_nodes(COMPUTE_ROLES + ("table",))
                    pf2, pre2, pre2_final = prefix_precision(evaluate, layers_all, alt_base, budget,
                                                             deadline=time.perf_counter() + self.mp_budget_s)
                    if pre2_final and budget.met(pre2_final) and all(pf2 != o[1] for o in options):
                        options.append(("prefix_from_all", pf2, pre2_final, alt_base))
                    mp["prefix_from_all"] = pre2
                if len(options) > 1:
                    built = [self.build(prepared, qp, ranges, o[1], float_ops, correct_on=bc_feeds)[0]
                             for o in options]
                    secs = interleaved_latency(built, timing_feeds, threads=self.threads,
                                               repeat=timing_rounds(fp32_seconds, len(built)))
                    del built
                    fmacs = [float_macs(o[1], macs) for o in options]
                    pick = fastest_selection(secs, fmacs)
                    mp["selections"] = [{"selection": o[0], "ms": round(t * 1e3, 3), "float_macs": m}
                                        for o, t, m in zip(options, secs, fmacs)]
                    if options[1][0] == "prefix":
                        pre["ms"], pre["mixed_precision_ms"] = round(secs[1] * 1e3, 3), round(secs[0] * 1e3, 3)
                    pre["chosen"] = options[pick][0] == "prefix"
                    if pick:
                        label, chosen_float, mp_final, from_base = options[pick]
                        mp["chosen"] = label
                        mp["float_layers"] = sorted(chosen_float - from_base)
                        solo = {x["layer"]: x["solo_sqnr_db"] for x in mp["layers"]}
                        mp["layers"] = [{"layer": n, "solo_sqnr_db": solo.get(n)}
                                        for n in (pre if label == "prefix" else pre2)["layers"]]
                        if from_base is not before:
                            mp["float_layers_from_all"] = mp["float_layers"]
                mp["prefix"] = pre
            stats["mixed_precision"] = mp
            if chosen_float != before:
                final_timing = None
            held_sqnr = mp_final.get("min_sqnr_db")

        model, plan, counts = self.build(prepared, qp, ranges, chosen_float, float_ops, correct_on=bc_feeds)
        if not plan.int8_nodes():
            stats["reason"] = "every quantizable layer was kept float (excluded, tiny, or for the fidelity budget)"
            stats["float_nodes"] = sorted(chosen_float)
            return PassResult(False, stats)
        stats["emitted"] = counts
        stats["int8_nodes"] = {"compute": len(plan.int8_nodes(COMPUTE_ROLES)), "total": len(plan.int8_nodes()),
                               "compute_candidates": len([r for r in plan.candidates.values()
                                                          if r.role in COMPUTE_ROLES])}
        stats["float_nodes"] = sorted(chosen_float)
        stats["kernels"] = kernel_counts(model)
        if final_timing is None and timing_feeds:
            fp, q = interleaved_latency([base, model], timing_feeds, repeat=timing_rounds(fp32_seconds, 2),
                                        threads=self.threads)
            final_timing = {"fp32_ms": round(fp * 1e3, 3), "int8_ms": round(q * 1e3, 3), "ratio": round(q / fp, 3)}
        if final_timing is not None:
            final_timing["threads"] = self.threads
            stats["latency"] = final_timing
            if self.speed_guard and final_timing["ratio"] >= 1.0 - SPEED_MARGIN:
                stats["reason"] = ("after keeping layers float for fidelity, int8 is no longer faster than fp32; "
                                   "model kept float")
                return PassResult(False, stats)
            if (self.speed_guard and self.min_sqnr is not None and held_sqnr is not None
                    and final_timing["ratio"] > SMALL_GAIN_RATIO and held_sqnr < self.min_sqnr + THIN_SQNR_DB):
                stats["reason"] = (f"int8 gains only {100 * (1 - final_timing['ratio']):.0f}% latency with a thin "
                                   f"fidelity margin ({held_sqnr:.1f} dB on calibration samples, budget "
                                   f"{self.min_sqnr:g} dB); model kept float")
                return PassResult(False, stats)
        if context.validation_feeds:
            val = list(context.validation_feeds)[:HELD_SAMPLES]
            stats["fidelity"] = {
                "data": "validation samples (held apart from calibration)" if context.calibration is not None
                else "synthetic validation samples (also used for calibration)",
                **summarize(compare_outputs(run_model(prepared, val), run_model(model, val))),
            }
        _replace_graph(graph, to_graph(model))
        stats["seconds"] = round(time.perf_counter() - t0, 3)
        return PassResult(True, stats)


def fidelity(reference: onnx.ModelProto, candidate: onnx.ModelProto, feeds) -> dict:
    """Worst-case cosine / SQNR / top-1 of ``candidate`` against ``reference`` on ``feeds``."""
    return summarize(compare_outputs(run_model(reference, feeds), run_model(candidate, feeds)))


__all__ = ["QuantizeInt8", "fidelity"]
