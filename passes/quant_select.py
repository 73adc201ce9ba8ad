"""Which nodes stay float: the speed guard and automatic mixed precision.

Speed guard. Int8 is not always faster on onnxruntime CPU: depthwise and tiny convolutions, and
int8 islands between float ops (Q/DQ and layout transposes at every boundary) can make a model
several times slower. Rather than trusting a cost model, candidate selections are *measured*:

1. every int8 compute node gets an arithmetic intensity, MACs per activation element it reads and
   writes (from the tensor shapes of one real calibration sample);
2. a few selections are built: all int8, depthwise convs in float, and "keep only the nodes above
   the 25/50/75 % intensity quantile" (elementwise nodes follow their compute neighbours);
3. all of them and the float model are timed in one process, interleaved, medians of repeated
   rounds; the fastest selection wins if it beats fp32 by ``margin``, else nothing is quantized.

Mixed precision. Per-layer sensitivity = output SQNR with only that layer in int8; layers are
ordered by noise per unit of int8 work and the longest prefix that meets the budget (min SQNR /
cosine / top-1 agreement on calibration samples) stays int8, found by binary search; the report
lists every layer kept float with its sensitivity, and every evaluation of the search.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.activations import stream_activations
from onnxopt.data import Feed

from .quant_graph import COMPUTE_ROLES, Plan, _const, is_depthwise
from .quant_speed import interleaved_latency

log = logging.getLogger(__name__)


def tensor_shapes(model: onnx.ModelProto, names: Sequence[str], feed: Feed) -> dict[str, tuple[int, ...]]:
    """Concrete shapes of ``names`` for one feed (one inference with extra outputs)."""
    out: dict[str, tuple[int, ...]] = {}
    for values in stream_activations(model, list(names), [feed], desc="measuring shapes"):
        out = {k: tuple(np.shape(v)) for k, v in values.items()}
    return out


@dataclass
class NodeCost:
    name: str
    macs: float
    elements: float  # activation elements read and written
    depthwise: bool

    @property
    def intensity(self) -> float:
        return self.macs / max(self.elements, 1.0)


def node_costs(graph: gs.Graph, plan: Plan, shapes: dict[str, tuple[int, ...]]) -> dict[str, NodeCost]:
    """MACs and activation traffic of every candidate int8 compute node (unknown shapes: skipped)."""
    by_name = {n.name: n for n in graph.nodes}
    costs: dict[str, NodeCost] = {}
    for name, r in plan.candidates.items():
        if r.role not in COMPUTE_ROLES:
            continue
        node = by_name.get(name)
        if node is None:
            continue
        ys = shapes.get(node.outputs[0].name)
        xs = [shapes.get(node.inputs[i].name) for i in r.acts]
        if ys is None or any(x is None for x in xs):
            continue
        out_el = float(math.prod(ys))
        in_el = float(sum(math.prod(x) for x in xs))  # type: ignore[arg-type]
        if r.role == "conv":
            w = _const(node.inputs[1])
            k = float(math.prod(w.shape[1:])) if w is not None else 1.0
        elif r.role in ("matmul", "gemm"):
            w = _const(node.inputs[1])
            trans = int(node.attrs.get("transB", 0)) if r.role == "gemm" else 0
            k = float(w.shape[1] if trans else w.shape[0]) if w is not None else 1.0
        else:  # matmul2: reduction over the last axis of the first input
            k = float(xs[0][-1]) if xs[0] else 1.0  # type: ignore[index]
        costs[name] = NodeCost(name, out_el * k, in_el + out_el, is_depthwise(node))
    return costs


#: the speed guard's label for the float model after quantize-int8's exact preprocessing rewrites
#: (timed only when one of them may change float speed, such as the PRelu respelling)
PREPARED_FLOAT = "float-prepared"


@dataclass
class Candidate:
    label: str
    float_nodes: set[str]
    model: onnx.ModelProto | None = None
    int8_compute: int = 0
    seconds: float | None = None


@dataclass
class SpeedDecision:
    chosen: str | None  # label of the selection kept, None: int8 loses everywhere
    float_nodes: set[str]
    fp32_seconds: float
    table: list[dict] = field(default_factory=list)

    def stats(self) -> dict:
        return {
            "chosen": self.chosen or "none (float model kept: no int8 selection was faster)",
            "fp32_ms": round(self.fp32_seconds * 1e3, 3),
            "candidates": self.table,
        }


def speed_candidates(costs: dict[str, NodeCost], base_float: set[str]) -> list[tuple[str, set[str]]]:
    """Selections to time: all, depthwise in float, and intensity-quantile cuts."""
    out: list[tuple[str, set[str]]] = [("all", set(base_float))]
    dw = {n for n, c in costs.items() if c.depthwise}
    if dw and len(dw) < len(costs):
        out.append(("no-depthwise", base_float | dw))
    if len(costs) >= 3:
        vals = np.array([c.intensity for c in costs.values()])
        seen: set[frozenset[str]] = {frozenset(s) for _, s in out}
        for q in (25, 50, 75):
            t = float(np.percentile(vals, q))
            low = {n for n, c in costs.items() if c.intensity < t}
            sel = base_float | low
            if low and len(low) < len(costs) and frozenset(sel) not in seen:
                seen.add(frozenset(sel))
                out.append((f"intensity>=p{q}", sel))
    return out


def choose_fastest(
    fp32: onnx.ModelProto,
    candidates: list[Candidate],
    feeds: Sequence[Feed],
    *,
    repeat: int = 25,
    threads: int = 1,
    margin: float = 0.03,
    budget_s: float = 60.0,
) -> SpeedDecision:
    """Time the float model and every candidate interleaved; keep the fastest that beats fp32."""
    models = [fp32] + [c.model for c in candidates]
    for c in candidates:
        c.model = None  # the sessions hold all that timing needs (a huge model is not held twice)
    t0 = time.perf_counter()
    secs = interleaved_latency(models, feeds, repeat=repeat, threads=threads, budget_s=budget_s, release=True)
    log.info("speed guard timing took %.1fs", time.perf_counter() - t0)
    fp = secs[0]
    table = []
    for c, s in zip(candidates, secs[1:]):
        c.seconds = s
        table.append({"selection": c.label, "int8_compute_nodes": c.int8_compute, "ms": round(s * 1e3, 3),
                      "ratio_vs_fp32": round(s / fp, 3)})
    best = min(candidates, key=lambda c: c.seconds if c.seconds is not None else math.inf)
    if best.seconds is not None and best.seconds <= fp * (1.0 - margin):
        return SpeedDecision(best.label, best.float_nodes, fp, table)
    return SpeedDecision(None, set(), fp, table)


# ----------------------------------------------------------------------------- mixed precision


#: mixed precision's top-1 target when the pass is given none: on outputs that hold class scores
#: (``validate.class_probabilities``; near-ties agree) 99% of the rows keep their class. Other outputs
#: have no top-1, so the criterion only binds classifiers (and per-step classifiers such as a CTC
#: recognizer's character probabilities)
CLASSIFIER_TOP1 = 0.99


@dataclass
class Budget:
    min_sqnr: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.min_sqnr, self.min_cosine, self.min_top1))

    def met(self, s: dict) -> bool:
        if self.min_sqnr is not None and s.get("min_sqnr_db", -math.inf) < self.min_sqnr:
            return False
        if self.min_cosine is not None and s.get("min_cosine", -math.inf) < self.min_cosine:
            return False
        return not (self.min_top1 is not None and s.get("min_top1", 1.0) < self.min_top1)


def mixed_precision(
    evaluate: Callable[[set[str]], dict],
    layers: Sequence[str],
    base_float: set[str],
    budget: Budget,
    *,
    solo_evaluate: Callable[[set[str]], dict] | None = None,
    deadline: float | None = None,
    cost: dict[str, float] | None = None,
) -> tuple[set[str], dict, dict]:
    """Float nodes meeting ``budget`` with as many of ``layers`` in int8 as this search finds.

    1. each layer's own damage: the output SQNR with *only* that layer in int8 (``solo_evaluate``,
       a few samples, bias correction included when the pass uses it); its noise power
       10^(-SQNR/10) is what it adds to the output, roughly additively;
    2. layers are ordered by noise per share of the int8 work (``cost``, MACs): cheap-noise,
       expensive layers first (layers not measured before ``deadline`` come last);
    3. binary search for the longest prefix of that order that, in int8 together, meets the budget
       (``evaluate``, all samples); everything after it goes back to float.

    Returns (float nodes, report, fidelity of the result). The report lists every layer kept float
    with its solo SQNR, every evaluation of the search, and whether the budget was met.
    """
    solo = solo_evaluate or evaluate
    layers = list(layers)
    start = evaluate(set(base_float))
    report: dict = {"start": _short(start), "layers": [], "search": [], "met": budget.met(start)}
    if report["met"] or not layers:
        return set(base_float), report, start
    all_float = set(base_float) | set(layers)
    solo_sqnr: dict[str, float] = {}
    for name in layers:
        if deadline is not None and time.perf_counter() > deadline:
            break
        solo_sqnr[name] = float(solo(all_float - {name}).get("min_sqnr_db", -math.inf))
    report["sensitivity_measured"] = len(solo_sqnr)
    total = sum((cost or {}).get(n, 0.0) for n in layers) or 1.0

    def key(n: str) -> float:
        if n not in solo_sqnr:
            return math.inf
        noise = 10.0 ** (-min(solo_sqnr[n], 200.0) / 10.0)
        share = (cost or {}).get(n, 0.0) / total if cost else 1.0 / len(layers)
        return noise / (share + 0.02)

    order = sorted(layers, key=key)
    results: dict[int, dict] = {len(order): start}

    def at(m: int) -> dict:
        if m not in results:
            results[m] = evaluate(all_float - set(order[:m]))
            report["search"].append({"int8_layers": m, **_short(results[m])})
        return results[m]

    lo, hi = 0, len(order)  # int8 prefix length: lo meets the budget (all float), hi does not
    while hi - lo > 1:
        if deadline is not None and time.perf_counter() > deadline + 120:
            break  # keep the (safe) lower bound
        mid = (lo + hi) // 2
        if budget.met(at(mid)):
            lo = mid
        else:
            hi = mid
    kept_float = order[lo:]
    report["met"] = True
    report["layers"] = [{"layer": n, "solo_sqnr_db": round(solo_sqnr[n], 2) if n in solo_sqnr else None}
                        for n in kept_float]
    final = results.get(lo) if lo in results else evaluate(all_float - set(order[:lo]))
    return set(base_float) | set(kept_float), report, final


def _short(s: dict) -> dict:
    out = {}
    for k in ("min_sqnr_db", "min_cosine", "min_top1"):
        if k in s and s[k] is not None:
            out[k] = round(float(s[k]), 4)
    return out


# ----------------------------------------------------------------------------- kernel profiles

#: ops onnxruntime fuses into the kernel of the compute node before them (names follow the last one)
_FUSED_AFTER = ("Relu", "Clip", "HardSigmoid", "HardSwish", "LeakyRelu", "Sigmoid", "Tanh", "Add", "Mul",
                "BatchNormalization")


def kernel_aliases(graph: gs.Graph, names: Sequence[str]) -> dict[str, str]:
    """Names onnxruntime may give the kernel of each compute node in ``names`` -> the node's name:
    the node itself, its output, and the outputs of a chain of single-consumer ops it may absorb."""
    by_name = {n.name: n for n in graph.nodes}
    out: dict[str, str] = {}
    for name in names:
        node = by_name.get(name)
        if node is None:
            continue
        out.setdefault(name, name)
        t = node.outputs[0] if node.outputs else None
        depth = 0
        while t is not None and depth < 3:
            out.setdefault(t.name, name)
            if len(t.outputs) != 1 or t.outputs[0].op not in _FUSED_AFTER or not t.outputs[0].outputs:
                break
            t = t.outputs[0].outputs[0]
            depth += 1
    return out


def profile_candidates(order: Sequence[str], fp32_s: dict[str, float], int8_s: dict[str, float],
                       base_float: set[str], *, margin_s: float = 2e-6) -> list[tuple[str, set[str]]]:
    """Selections from per-node kernel times (onnxruntime's profiler, fp32 model vs all-int8 model).

    A node is *slower* in int8 when its int8 kernel takes longer than its float kernel (by more
    than ``margin_s``): depthwise convs with few or unaligned channels, stems with 3 input channels.
    Keeping a node float adds Q/DQ (and layout changes) at the region's borders, so besides "every
    slower node float" two cautious variants are offered: only runs of consecutive slower nodes
    (``order`` is topological) and only the leading run (the stem). The caller times all of them.
    """
    slower = [n for n in order if n in fp32_s and n in int8_s and int8_s[n] > fp32_s[n] + margin_s
              and n not in base_float]
    if not slower:
        return []
    out: list[tuple[str, set[str]]] = [("kernel-slower", base_float | set(slower))]
    live = [n for n in order if n not in base_float]
    runs: list[list[str]] = []
    for n in live:
        if n in slower and runs and runs[-1] and live.index(n) - live.index(runs[-1][-1]) == 1:
            runs[-1].append(n)
        elif n in slower:
            runs.append([n])
    long_runs = {n for r in runs if len(r) >= 2 or (live and r[0] == live[0]) for n in r}
    if long_runs and long_runs != set(slower):
        out.append(("kernel-slower-runs", base_float | long_runs))
    if live and live[0] in slower:
        lead = set(runs[0])
        if lead != set(slower) and lead != long_runs:
            out.append(("kernel-slower-stem", base_float | lead))
    return out


def prefix_precision(
    evaluate: Callable[[set[str]], dict],
    layers: Sequence[str],
    base_float: set[str],
    budget: Budget,
    *,
    deadline: float | None = None,
) -> tuple[set[str], dict, dict]:
    """The shortest float *prefix* of ``layers`` (topological order) that meets ``budget``.

    Quantization damage concentrates in the first layers of CNNs (stems and early depthwise blocks
    on few-channel, high-resolution maps), which are also where int8 kernels gain least; a float
    prefix has a single Q boundary, where per-layer selection leaves float islands whose Q/DQ and
    layout changes can cost more than their layers. Binary search on the prefix length.
    """
    layers = list(layers)
    report: dict = {"search": []}
    results: dict[int, dict] = {}

    def at(k: int) -> dict:
        if k not in results:
            results[k] = evaluate(set(base_float) | set(layers[:k]))
            report["search"].append({"float_prefix": k, **_short(results[k])})
        return results[k]

    lo, hi = 0, len(layers)  # prefix length: lo does not meet the budget, hi does (all float)
    if budget.met(at(0)):
        hi = 0
    while hi - lo > 1:
        if deadline is not None and time.perf_counter() > deadline:
            break
        mid = (lo + hi) // 2
        if budget.met(at(mid)):
            hi = mid
        else:
            lo = mid
    report["float_prefix"] = hi
    report["layers"] = list(layers[:hi])
    final = results.get(hi) if hi in results else {}
    return set(base_float) | set(layers[:hi]), report, final
