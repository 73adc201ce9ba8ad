"""How important each prunable channel class is, and how many to remove per group.

Importance is aggregated over every member of a group (Torch-Pruning's group importance): each
member - a producer's output rows, a consumer's input columns, a BatchNorm's gamma, a depthwise
filter - scores the classes it holds; each member's scores are divided by their mean, so every
member counts the same whatever its weight scale, and the class score is the sum.

Criteria: ``l1``/``l2`` magnitude of every member's slices; ``bn`` = |gamma| of the group's
BatchNorms (groups without one fall back to ``l2``); ``activation`` = mean |x| of each channel
over calibration data at every consumer's input times that consumer's column norm, i.e. the
channel's average contribution to the next layer (groups without a consumer fall back to ``l2``).

Amount: ``ratio`` of each group's classes (rounded so the kept count is a multiple of
``round_to``), or a global ranking of group-normalized scores with a per-group floor, or the
smallest ratio that meets a MACs target (bisection over the analytic MAC count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .prune_graph import ChanInfo, ChannelAnalysis

IMPORTANCE = ("l1", "l2", "bn", "activation")


@dataclass
class GroupDecision:
    """What happens to one group."""

    id: int
    labels: list[str]
    channels: int
    keep: int
    blocked: list[str]
    note: str = ""

    def to_dict(self) -> dict:
        d = {"group": self.id, "layers": self.labels[:6] + ([f"+{len(self.labels) - 6} more"]
                                                             if len(self.labels) > 6 else []),
             "channels": self.channels, "kept": self.keep}
        if self.blocked:
            d["blocked"] = self.blocked[:3] + ([f"+{len(self.blocked) - 3} more"] if len(self.blocked) > 3 else [])
        if self.note:
            d["note"] = self.note
        return d


def _slice_norms(w: np.ndarray, axis: int, p: int) -> np.ndarray:
    """L1 or L2 norm of every slice of ``w`` along ``axis`` (float64 accumulation, no float64 copy)."""
    axes = tuple(a for a in range(w.ndim) if a != axis)
    w = np.asarray(w)
    if p == 1:
        return np.abs(w).sum(axis=axes, dtype=np.float64)
    return np.sqrt(np.square(w).sum(axis=axes, dtype=np.float64))


def class_scores(analysis: ChannelAnalysis, roots: np.ndarray, criterion: str,
                 act_means: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """Score per element index (meaningful at class roots) and, per root, the criterion actually used."""
    n = roots.size
    scores = {c: np.zeros(n) for c in ("l1", "l2", "bn", "activation")}
    have = {c: np.zeros(n, dtype=bool) for c in scores}

    def add(kind: str, info: ChanInfo, per_pos: np.ndarray) -> None:
        r = roots[info.ids]
        uniq, inv = np.unique(r, return_inverse=True)
        agg = np.zeros(uniq.size)
        np.add.at(agg, inv, per_pos)
        mean = agg.mean()
        if not np.isfinite(mean) or mean <= 0:
            return
        scores[kind][uniq] += agg / mean
        have[kind][uniq] = True

    for m in analysis.members:
        w = analysis.const(m.node.inputs[m.input_index])
        if w is None or w.shape[m.axis] != m.info.size:
            continue
        if m.role == "bn":
            add("bn", m.info, np.abs(np.asarray(w, dtype=np.float64)))
        if criterion == "l1":
            add("l1", m.info, _slice_norms(w, m.axis, 1))
            continue
        l2 = _slice_norms(w, m.axis, 2)
        add("l2", m.info, l2)
        if m.role == "consumer" and act_means is not None and m.input_name in act_means:
            a = act_means[m.input_name]
            if a is not None and a.size == m.info.size:
                add("activation", m.info, np.asarray(a, dtype=np.float64) * l2)
    used: dict[int, str] = {}
    out = scores["l2"].copy() if criterion in ("bn", "activation") else scores[criterion].copy()
    if criterion in ("bn", "activation"):
        out[have[criterion]] = scores[criterion][have[criterion]]
    for r in np.unique(roots).tolist():
        used[r] = criterion if (criterion in ("l1", "l2") or have[criterion][r]) else "l2"
    return out, used


def round_keep(target: float, n: int, round_to: int, min_channels: int) -> int:
    """Kept channels: nearest multiple of ``round_to`` (ties keep more), at least the floor, at most n."""
    if round_to > 1:
        k = math.floor(target / round_to + 0.5) * round_to
        k = max(k, round_to)
    else:
        k = round(target)
    k = max(k, min_channels, 1)
    return min(k, n)


class Selector:
    """Chooses removed classes from scores; the same call serves ratio, global and MACs-target modes."""

    def __init__(self, analysis: ChannelAnalysis, groups: list[dict], scores: np.ndarray, *,
                 round_to: int, min_channels: int, layer_floor: float, global_ranking: bool):
        self.analysis = analysis
        self.groups = groups
        self.scores = scores
        self.round_to = round_to
        self.min_channels = min_channels
        self.layer_floor = layer_floor
        self.global_ranking = global_ranking
        self.roots = analysis.uf.roots()
        self.prunable = [g for g in groups if not g["blocked"] and len(g["classes"]) > 0]

    def floor(self, n: int) -> int:
        return min(n, max(self.min_channels, math.ceil(self.layer_floor * n), 1))

    def select(self, ratio: float, keep_counts: dict[int, int] | None = None
               ) -> tuple[np.ndarray, list[GroupDecision]]:
        """Removed classes and per-group decisions; ``keep_counts`` (group id -> kept, already rounded)
        overrides the ratio for the groups it names."""
        removed = np.zeros(self.roots.size, dtype=bool)
        decisions = []
        given = dict(keep_counts or {})
        keep_counts = {}
        if self.global_ranking and ratio > 0:
            keep_counts = self._global_counts(ratio)
        for g in self.groups:
            classes = g["classes"]
            n = len(classes)
            if g["blocked"] or n == 0:
                decisions.append(GroupDecision(g["id"], g["labels"], n, n, g["blocked"]))
                continue
            if n <= self.min_channels:
                decisions.append(GroupDecision(g["id"], g["labels"], n, n, [], note=f"only {n} channels"))
                continue
            target = keep_counts.get(g["id"], n * (1.0 - ratio))
            k = round_keep(target, n, self.round_to, self.floor(n))
            if ratio <= 0:
                k = n
            if g["id"] in given:
                k = min(max(int(given[g["id"]]), 1), n)
            if k < n:
                order = np.argsort(-self.scores[classes], kind="stable")
                removed[classes[order[k:]]] = True
            decisions.append(GroupDecision(g["id"], g["labels"], n, k, []))
        return removed, decisions

    def _global_counts(self, ratio: float) -> dict[int, int]:
        entries = []
        for g in self.prunable:
            classes = g["classes"]
            n = len(classes)
            if n <= self.min_channels:
                continue
            s = self.scores[classes]
            mean = s.mean() if s.size and s.mean() > 0 else 1.0
            order = np.argsort(s / mean, kind="stable")
            floor = self.floor(n)
            for rank, idx in enumerate(order[: n - floor]):
                entries.append((float(s[idx] / mean), g["id"], rank))
        total = sum(len(g["classes"]) for g in self.prunable if len(g["classes"]) > self.min_channels)
        budget = round(ratio * total)
        entries.sort()
        removed_per: dict[int, int] = {}
        for _, gid, _ in entries[:budget]:
            removed_per[gid] = removed_per.get(gid, 0) + 1
        return {g["id"]: len(g["classes"]) - removed_per.get(g["id"], 0) for g in self.prunable}


# --------------------------------------------------------------------------- MACs


def base_macs(analysis: ChannelAnalysis) -> tuple[int, dict[int, int]]:
    """MACs of every Conv/ConvTranspose/Gemm/MatMul node at the analysis shapes (by node id)."""
    per: dict[int, int] = {}
    for node in analysis.graph.nodes:
        if node.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        a, w = node.inputs[0], node.inputs[1]
        sa, sw, so = analysis.shape(a), analysis.shape(w), analysis.shape(node.outputs[0])
        if sw is None:
            v = analysis.const(w)
            sw = None if v is None else v.shape
        if sa is None or sw is None or so is None:
            continue
        if node.op == "Conv":
            per[id(node)] = math.prod(so) * math.prod(sw[1:])
        elif node.op == "ConvTranspose":
            per[id(node)] = math.prod(sa) * math.prod(sw[1:])
        elif node.op == "Gemm":
            per[id(node)] = math.prod(so) * (sa[0] if int(node.attrs.get("transA", 0)) else sa[-1])
        else:
            per[id(node)] = math.prod(so) * sa[-1]
    return sum(per.values()), per


def analytic_macs(analysis: ChannelAnalysis, removed: np.ndarray, base: dict[int, int]) -> int:
    """MACs after removing ``removed`` classes, scaling each node by its kept in/out fractions."""
    roots = analysis.uf.roots()

    def frac(info: ChanInfo | None) -> float:
        if info is None or info.size == 0:
            return 1.0
        return float((~removed[roots[info.ids]]).mean())

    scale: dict[int, float] = {}
    for node, kind, i, o, _ in analysis.mac_nodes:
        if kind in ("conv", "gemm", "matmul", "convtranspose"):
            scale[id(node)] = frac(i) * frac(o)
        elif kind in ("depthwise", "matmul-rows"):
            scale[id(node)] = frac(i)
    return int(sum(m * scale.get(k, 1.0) for k, m in base.items()))


def act_channel_means(model, feeds, analysis: ChannelAnalysis) -> dict[str, np.ndarray]:
    """Mean |x| per position along the channel axis at every consumer's input (streamed)."""
    from onnxopt.activations import collect_stats

    names = {}
    for m in analysis.members:
        if m.role == "consumer" and m.input_name:
            names[m.input_name] = m.info.axis
    if not names:
        return {}
    stats = collect_stats(model, list(names), feeds, bins=4, channel_axis=names)
    return {n: s.channel_abs_mean for n, s in stats.items() if s.channel_abs_mean is not None}
