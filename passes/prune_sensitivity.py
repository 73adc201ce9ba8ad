"""Sensitivity-aware amounts: where to cut so the same MACs cost the least fidelity.

A uniform ratio takes as many channels from a layer the outputs hinge on as from a redundant one.
Here every prunable group is measured alone: for each kept count it may take (multiples of the
rounding unit, never below the floor), the model's outputs on a few calibration samples are
compared with the original's, giving the group's damage curve (noise-to-signal power at the
outputs, averaged over the float outputs). Then a greedy allocation walks every group down its
curve, always taking the step that costs the least damage per MAC saved, until the model's MACs
reach what the uniform ratio would give. Same MACs, same rounding, damage spent where it is cheap.

Measuring needs no pruned copies: removing channels computes exactly what the unpruned model
computes once those channels' input columns are zeroed in every consumer (the invariant the tests
check), so one onnxruntime session, whose consumer weights are overridable inputs, serves every
measurement: each is one run per sample with a few zeroed weight tensors fed in.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx

from onnxopt.data import Feed

from .prune_graph import ChannelAnalysis
from .prune_importance import Selector, analytic_macs

#: calibration samples the damage curves are measured on
SENS_SAMPLES = 4
#: a group never loses more than this fraction of its channels (2 x the ratio, capped here)
MAX_GROUP_CUT = 0.75
#: measured kept counts per group, around the uniform one (wide groups: a coarser curve)
MAX_LEVELS = 5
#: wall-time budget for the measurements (estimated from the reference runs): beyond it the curves
#: get fewer samples, then fewer levels, then the uniform ratio is used
SENS_SECONDS = 60.0


class _Probe:
    """One onnxruntime session of the original model whose consumer weights can be fed."""

    def __init__(self, model: onnx.ModelProto, weights: set[str], feeds: list[Feed]):
        import onnxruntime as ort

        m = onnx.ModelProto()
        m.CopyFrom(model)
        m.ir_version = max(m.ir_version, 4)
        keep = []
        for n in m.graph.node:  # weights spelled as Constant nodes become initializers
            if n.op_type == "Constant" and n.output[0] in weights and len(n.attribute) == 1 \
                    and n.attribute[0].name == "value":
                t = onnx.TensorProto()
                t.CopyFrom(n.attribute[0].t)
                t.name = n.output[0]
                m.graph.initializer.append(t)
            else:
                keep.append(n)
        if len(keep) != len(m.graph.node):
            del m.graph.node[:]
            m.graph.node.extend(keep)
        inputs = {i.name for i in m.graph.input}
        self.weights = {}
        for t in m.graph.initializer:
            if t.name in weights and t.name not in inputs:
                self.weights[t.name] = onnx.numpy_helper.to_array(t)
                m.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        outs = self.session.get_outputs()
        self.names = [o.name for o in outs if "float" in o.type]
        self.feeds = feeds
        import time

        if feeds:
            self.session.run(self.names, feeds[0])  # warm-up: first-run allocations are not the cost
        t0 = time.perf_counter()
        self.ref = [self.session.run(self.names, f) for f in feeds]
        self.seconds_per_sample = (time.perf_counter() - t0) / max(len(feeds), 1)
        self.power = [max(float(np.mean([np.mean(np.square(r[i], dtype=np.float64)) for r in self.ref])), 1e-30)
                      for i in range(len(self.names))]

    def keep_samples(self, n: int) -> None:
        self.feeds, self.ref = self.feeds[:n], self.ref[:n]
        self.power = [max(float(np.mean([np.mean(np.square(r[i], dtype=np.float64)) for r in self.ref])), 1e-30)
                      for i in range(len(self.names))]

    def damage(self, overrides: dict[str, np.ndarray]) -> float:
        """Mean over float outputs of noise power / signal power (0 = unchanged)."""
        noise = np.zeros(len(self.names))
        for f, r in zip(self.feeds, self.ref):
            got = self.session.run(self.names, {**f, **overrides})
            for i, (a, b) in enumerate(zip(r, got)):
                noise[i] += float(np.mean(np.square(a.astype(np.float64) - b, dtype=np.float64)))
        nsr = noise / len(self.feeds) / np.asarray(self.power)
        nsr = np.where(np.isfinite(nsr), nsr, 1e6)
        return float(np.mean(nsr)) if nsr.size else 0.0


def sensitivity_keeps(analysis: ChannelAnalysis, selector: Selector, model: onnx.ModelProto, feeds: list[Feed],
                      ratio: float, base: dict[int, int]) -> tuple[dict[int, int], dict[str, Any]]:
    """Kept count per group id with the MACs of the uniform ``ratio``, damage-aware; and stats."""
    roots = analysis.uf.roots()
    uniform_removed, decisions = selector.select(ratio)
    goal = analytic_macs(analysis, uniform_removed, base)
    keep_uniform = {d.id: d.keep for d in decisions if not d.blocked}
    by_id = {g["id"]: g for g in selector.prunable}

    # consumer weights per class root (what zeroing a class touches)
    consumers = [m for m in analysis.members if m.role == "consumer"]
    names = {m.node.inputs[m.input_index].name for m in consumers}
    from onnxopt.model import weight_bytes
    from onnxopt.validate import LARGE_MODEL_BYTES

    if weight_bytes(model) > LARGE_MODEL_BYTES:  # the probe holds a second copy of the model and its weights
        return keep_uniform, {"note": "model too large to probe (memory): uniform ratio", "samples": 0}
    probe = _Probe(model, names, feeds)
    touch: dict[int, list] = {}
    for m in consumers:
        wname = m.node.inputs[m.input_index].name
        if wname not in probe.weights or probe.weights[wname].shape[m.axis] != m.info.size:
            continue
        for r in np.unique(roots[m.info.ids]).tolist():
            touch.setdefault(r, []).append(m)

    # candidate levels and damage curves
    levels: dict[int, list[int]] = {}
    curves: dict[int, list[float]] = {}
    order: dict[int, np.ndarray] = {}
    unmeasured = []
    for gid, k_uni in keep_uniform.items():
        g = by_id.get(gid)
        if g is None:
            continue
        classes = g["classes"]
        n = len(classes)
        if n <= selector.min_channels:
            continue
        if not all(int(c) in touch for c in classes):
            unmeasured.append(gid)
            continue
        step = max(selector.round_to, 1)
        low = max(selector.floor(n), math.ceil(n * (1.0 - min(MAX_GROUP_CUT, 2.0 * ratio))), 1)
        ks = sorted({k for k in range(step, n, step) if k >= low} | {n, k_uni}, reverse=True)
        if len(ks) > MAX_LEVELS:  # the uniform count, its neighbours, evenly thinned beyond them
            i = ks.index(k_uni)
            near = set(ks[max(i - 1, 0): i + 2])
            rest = [k for k in ks[1:] if k not in near]
            keep_n = max(MAX_LEVELS - 1 - len(near), 0)
            pick = {rest[round(j * (len(rest) - 1) / max(keep_n - 1, 1))] for j in range(keep_n)} if rest else set()
            ks = sorted({n} | near | pick, reverse=True)
        if len(ks) < 2:
            continue
        order[gid] = classes[np.argsort(-selector.scores[classes], kind="stable")]
        levels[gid] = ks
    # fit the measurements into the time budget: fewer samples, then only the uniform count's neighbours
    evals = sum(len(v) - 1 for v in levels.values())
    per_eval = probe.seconds_per_sample * 1.5  # fed weights defeat some of onnxruntime's prepacking
    while evals * per_eval * len(probe.feeds) > SENS_SECONDS and len(probe.feeds) > 1:
        probe.keep_samples(max(len(probe.feeds) // 2, 1))
    if evals * per_eval * len(probe.feeds) > SENS_SECONDS:
        for gid, ks in levels.items():
            i = ks.index(keep_uniform[gid])
            levels[gid] = sorted({ks[0]} | set(ks[max(i - 1, 0): i + 2]), reverse=True)
        evals = sum(len(v) - 1 for v in levels.values())
    if evals * per_eval * len(probe.feeds) > SENS_SECONDS:
        return keep_uniform, {"note": f"measuring {evals} cuts would take about "
                                      f"{evals * per_eval * len(probe.feeds):.0f} s: uniform ratio",
                              "samples": len(probe.feeds)}
    for gid, ks in levels.items():
        curve = [0.0]
        for k in ks[1:]:
            curve.append(max(curve[-1], probe.damage(_zeroed(probe, touch, roots, order[gid][k:]))))
        curves[gid] = curve

    # greedy: cheapest damage per MAC saved until the uniform MACs are reached
    keep = {gid: (levels[gid][0] if gid in levels else k) for gid, k in keep_uniform.items()}
    for gid in unmeasured:
        keep[gid] = keep_uniform[gid]
    pos = {gid: 0 for gid in levels}

    def removed_for(kp: dict[int, int]) -> np.ndarray:
        rem = np.zeros(roots.size, dtype=bool)
        for gid, k in kp.items():
            g = by_id.get(gid)
            if g is None or k >= len(g["classes"]):
                continue
            o = order.get(gid)
            if o is None:
                c = g["classes"]
                o = c[np.argsort(-selector.scores[c], kind="stable")]
            rem[o[k:]] = True
        return rem

    macs = analytic_macs(analysis, removed_for(keep), base)
    steps = 0
    while macs > goal:
        best = None
        for gid, i in pos.items():
            if i + 1 >= len(levels[gid]):
                continue
            trial = dict(keep)
            trial[gid] = levels[gid][i + 1]
            m2 = analytic_macs(analysis, removed_for(trial), base)
            saved = macs - m2
            if saved <= 0:
                continue
            cost = max(curves[gid][i + 1] - curves[gid][i], 1e-12) / saved
            if best is None or cost < best[0]:
                best = (cost, gid, m2)
        if best is None:
            break
        _, gid, macs = best
        pos[gid] += 1
        keep[gid] = levels[gid][pos[gid]]
        steps += 1
    # the last step may overshoot: give back the steps that fit under the goal, largest damage first
    while True:
        best = None
        for gid, i in pos.items():
            if i == 0:
                continue
            trial = dict(keep)
            trial[gid] = levels[gid][i - 1]
            m2 = analytic_macs(analysis, removed_for(trial), base)
            gain = curves[gid][i] - curves[gid][i - 1]
            if m2 <= goal and (best is None or gain > best[0]):
                best = (gain, gid, m2)
        if best is None:
            break
        _, gid, macs = best
        pos[gid] -= 1
        keep[gid] = levels[gid][pos[gid]]
    stats = {
        "samples": len(feeds), "groups_measured": len(levels), "evaluations": sum(len(v) - 1 for v in levels.values()),
        "macs_goal": int(goal), "macs_reached": int(macs), "reached": bool(macs <= goal),
        "predicted_damage": float(sum(curves[g][pos[g]] for g in pos)),
        "predicted_damage_uniform": float(sum(curves[g][levels[g].index(keep_uniform[g])] for g in levels
                                              if keep_uniform[g] in levels[g])),
    }
    if unmeasured:
        stats["unmeasured_groups"] = len(unmeasured)
    if macs > goal:  # could not reach the uniform MACs within the floors: fall back to uniform
        return keep_uniform, {**stats, "note": "uniform MACs not reachable within the group floors: uniform ratio"}
    if stats["predicted_damage"] >= stats["predicted_damage_uniform"]:
        return keep_uniform, {**stats, "note": "uniform ratio predicted no worse: kept"}
    return keep, stats


def _zeroed(probe: _Probe, touch: dict[int, list], roots: np.ndarray, classes: np.ndarray) -> dict[str, np.ndarray]:
    """Consumer weights with the columns of ``classes`` zeroed (the exact equivalent of removing them)."""
    drop = np.zeros(roots.size, dtype=bool)
    drop[classes] = True
    members = {id(m): m for c in classes.tolist() for m in touch.get(int(c), [])}
    out: dict[str, np.ndarray] = {}
    for m in members.values():
        wname = m.node.inputs[m.input_index].name
        w = out.get(wname)
        if w is None:
            w = out[wname] = probe.weights[wname].copy()
        sl: list[Any] = [slice(None)] * w.ndim
        sl[m.axis] = np.nonzero(drop[roots[m.info.ids]])[0]
        w[tuple(sl)] = 0
    return out


__all__ = ["sensitivity_keeps"]
