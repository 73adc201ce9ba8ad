"""simplify: fold, canonicalize and rewrite to a fixed point. NUMERIC (plus EXACT sub-passes).

One pass that loops, because each step feeds the others: folding turns computed shapes into
constants, which lets a Reshape rule fire, which leaves a dead Shape chain for DCE, which lets two
identical nodes meet in CSE, and so on. Each round runs, over the graph and every subgraph:

1. canonicalize  - Constant nodes become initializers, identical initializers merge;
2. fold          - :class:`~passes.fold_constants.Folder` (constants, static shapes, If inlining);
3. rules         - the structural rules of :mod:`simplify_rules` (EXACT) and, for ``simplify``,
                   the fusions of :mod:`fuse_linear` and :mod:`fuse_activation` (NUMERIC);
4. CSE           - nodes with the same op, domain, attributes and inputs compute the same thing:
                   one stays (subgraph-carrying and random ops are never merged);
5. DCE           - nodes no output depends on, and unused initializers, go;

then shapes are re-inferred and the next round starts, until a round changes nothing (or
``max_iterations``). Stats count how often each rule fired.

Passes defined here: ``simplify`` (all of it, NUMERIC), ``simplify-exact`` (no folding through
onnxruntime and no fusions: canonicalize, exact numpy folding of shapes only, structural rules,
CSE, DCE; EXACT), ``cse`` (EXACT) and ``fuse-linear`` (the fusions alone, NUMERIC).
Keeps invariant: graph inputs and outputs (names, order, types); results within float
reassociation of the original for NUMERIC, identical for EXACT.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.context import PassContext
from onnxopt.passes_api import Kind, Pass, PassResult

from .canonicalize import dedup_constants, lift_constants
from .fold_constants import Folder, FoldPolicy
from .fuse_activation import ACTIVATION_RULES
from .fuse_linear import FUSE_RULES
from .graph_utils import NameGen, all_graphs
from .simplify_core import (
    Rewriter,
    ShapeInfo,
    SymValues,
    const_value,
    is_default_domain,
    rewire,
    subgraphs_of,
    toposort_graph,
)
from .simplify_rules import RULES, Rule

log = logging.getLogger(__name__)

#: never merged by CSE: two calls give different answers
NONDETERMINISTIC = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                              "Multinomial", "Bernoulli"})


# --------------------------------------------------------------------------- order


def is_sorted(g: gs.Graph) -> bool:
    """True when every node comes after the producers of its inputs (within ``g``)."""
    produced: set[int] = set()
    local = {id(t) for n in g.nodes for t in n.outputs}
    for n in g.nodes:
        for t in n.inputs:
            if id(t) in local and id(t) not in produced:
                return False
        for sub in subgraphs_of(n):
            for sg in all_graphs(sub):
                for m in sg.nodes:
                    for t in m.inputs:
                        if id(t) in local and id(t) not in produced:
                            return False
        produced |= {id(t) for t in n.outputs}
    return True


def ensure_sorted(graph: gs.Graph) -> None:
    """Toposort (stably) only the graphs that need it."""
    for g in list(all_graphs(graph)):
        if not is_sorted(g):
            toposort_graph(g)


# --------------------------------------------------------------------------- CSE and DCE


class _Unhashable(Exception):
    pass


def _attr_key(v: Any) -> Any:
    if isinstance(v, gs.Graph):
        raise _Unhashable
    if isinstance(v, gs.Constant):
        arr = const_value(v)
        if arr is None:
            raise _Unhashable
        return ("T", arr.dtype.str, arr.shape, arr.tobytes())
    if isinstance(v, np.ndarray):
        return ("A", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, (list, tuple)):
        return tuple(_attr_key(x) for x in v)
    if isinstance(v, float):
        return ("f", v)
    if isinstance(v, (int, str, bytes, bool)) or v is None:
        return v
    return ("r", repr(v))


def _node_key(node: gs.Node) -> tuple | None:
    if node.op in NONDETERMINISTIC or subgraphs_of(node) or not node.outputs:
        return None
    try:
        attrs = tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items()))
    except _Unhashable:
        return None
    inputs = tuple(id(t) if t.name else None for t in node.inputs)
    outputs = tuple(bool(t.name) for t in node.outputs)
    return (node.domain or "", node.op, attrs, inputs, outputs)


def cse(graph: gs.Graph) -> int:
    """Merge identical nodes (per graph, in topological order); returns how many were removed."""
    merged = 0
    graphs = list(all_graphs(graph))
    outputs_all = {id(t) for g in graphs for t in g.outputs}
    for g in graphs:
        seen: dict[tuple, gs.Node] = {}
        dead: set[int] = set()
        for node in g.nodes:
            key = _node_key(node)
            if key is None:
                continue
            keep = seen.get(key)
            if keep is None:
                seen[key] = node
                continue
            dup = node
            if any(id(t) in outputs_all for t in dup.outputs):
                if any(id(t) in outputs_all for t in keep.outputs):
                    continue  # both write graph outputs: their names must both survive
                # the duplicate's outputs are graph outputs: it becomes the one kept
                keep, dup = dup, keep
                seen[key] = keep
            for k_out, d_out in zip(keep.outputs, dup.outputs):
                if d_out.name:
                    rewire(d_out, k_out, graphs)
            dup.outputs.clear()
            dup.inputs.clear()
            dead.add(id(dup))
            merged += 1
        if dead:
            g.nodes = [n for n in g.nodes if id(n) not in dead]
            toposort_graph(g)
    return merged


def _census(graph: gs.Graph) -> tuple[int, int]:
    nodes = tensors = 0
    for g in all_graphs(graph):
        nodes += len(g.nodes)
        tensors += len(g.tensors())
    return nodes, tensors


def dce(graph: gs.Graph) -> int:
    """Drop dead nodes and unused initializers; returns how many nodes and tensors went."""
    before = _census(graph)
    graph.cleanup(remove_unused_node_outputs=False, recurse_subgraphs=True, remove_unused_graph_inputs=False)
    after = _census(graph)
    return (before[0] - after[0]) + (before[1] - after[1])


# --------------------------------------------------------------------------- rules


def apply_rules(graph: gs.Graph, rw: Rewriter, tables: Iterable[dict[str, list[tuple[str, Rule]]]],
                stats: Counter[str]) -> int:
    """One sweep of every rule over every node; returns how many rewrites happened."""
    merged: dict[str, list[tuple[str, Rule]]] = {}
    for table in tables:
        for op, rules in table.items():
            merged.setdefault(op, []).extend(rules)
    debug = log.isEnabledFor(logging.DEBUG)
    applied = 0
    rw.new_sweep()
    for g in list(all_graphs(graph)):
        rw.g = g
        changed = False
        for node in list(g.nodes):
            rules = merged.get(node.op)
            if not rules or not node.outputs or not is_default_domain(node):
                continue
            for name, rule in rules:
                if not node.outputs:
                    break
                try:
                    reason = rule(node, rw)
                except (ValueError, TypeError, IndexError, KeyError) as exc:
                    reason = f"rule error {type(exc).__name__}: {exc}"
                if reason is None:
                    stats[name] += 1
                    applied += 1
                    changed = True
                    break
                if debug:
                    log.debug("%s %r: %s not applied: %s", node.op, node.name, name, reason)
        if changed:
            g.nodes = [n for n in g.nodes if n.outputs]
    rw.g = graph
    return applied


# --------------------------------------------------------------------------- the driver


class _Engine:
    """The fixed-point loop shared by the passes below."""

    def __init__(self, *, fold: bool, fuse: bool, policy: FoldPolicy, max_iterations: int,
                 tables: list[dict[str, list[tuple[str, Rule]]]] | None = None, canonical: bool = True,
                 do_cse: bool = True):
        self.fold = fold
        self.fuse = fuse
        self.policy = policy
        self.max_iterations = max_iterations
        self.tables = tables if tables is not None else ([RULES, FUSE_RULES, ACTIVATION_RULES] if fuse else [RULES])
        self.canonical = canonical
        self.do_cse = do_cse

    def run(self, graph: gs.Graph) -> tuple[bool, dict[str, Any]]:
        shapes = ShapeInfo(graph)
        sym = SymValues(shapes)
        names = NameGen(graph)
        folder = Folder(graph, self.policy, shapes=shapes, sym=sym, names=names)
        rw = Rewriter(graph, shapes, sym, names, folder)
        steps: Counter[str] = Counter()
        rules: Counter[str] = Counter()
        rounds = 0
        for _ in range(self.max_iterations):
            rounds += 1
            changed = 0
            if self.canonical:
                n = lift_constants(graph)
                steps["constants_lifted"] += n
                m = dedup_constants(graph)
                steps["duplicate_constants_merged"] += m
                changed += n + m
            if self.fold:
                n = folder.run()
                changed += n
            else:
                n = self._fold_shapes_only(graph, folder)
                changed += n
            n = apply_rules(graph, rw, self.tables, rules)
            changed += n
            if n:
                ensure_sorted(graph)
            if self.do_cse:
                n = cse(graph)
                steps["cse_merged"] += n
                changed += n
            n = dce(graph)
            steps["dead_removed"] += n
            changed += n
            if not changed:
                break
            ensure_sorted(graph)
            shapes.refresh(graph)
        modified = any(v for k, v in steps.items()) or bool(rules) or bool(folder.stats)
        stats: dict[str, Any] = {
            "rounds": rounds,
            "rules": dict(rules),
            "folded": dict(folder.stats),
            "refused_for_size": dict(folder.refused),
            **{k: v for k, v in steps.items() if v},
        }
        return modified, stats

    @staticmethod
    def _fold_shapes_only(graph: gs.Graph, folder: Folder) -> int:
        """EXACT folding: only nodes whose value is known from shapes (no arithmetic evaluated)."""
        before = sum(folder.stats.values())
        folder._outputs = {id(t) for g in all_graphs(graph) for t in g.outputs}
        folder._inputs = {id(t) for g in all_graphs(graph) for t in g.inputs}
        for g in list(all_graphs(graph)):
            ensure_sorted(g)
            removed = set()
            for node in g.nodes:
                if not node.outputs:
                    continue
                folder.sym.visit(node)
                if folder._fold_symbolic(node):
                    removed.add(id(node))
            if removed:
                g.nodes = [n for n in g.nodes if id(n) not in removed]
        return sum(folder.stats.values()) - before


class Simplify(Pass):
    """Fold constants and apply every simplification and fusion rule until nothing changes.

    Options: ``max_bytes``, ``size_limit_ratio``, ``growth_budget`` (the folding size guard, see
    ``fold-constants``), ``fuse`` (False keeps layers as they are), ``max_iterations``.
    """

    name = "simplify"
    kind = Kind.NUMERIC
    needs_shapes = False  # the engine keeps its own ShapeInfo

    def __init__(self, *, max_bytes: int = 4096, size_limit_ratio: float | None = 2.0,
                 growth_budget: int | None = None, fuse: bool = True, max_iterations: int = 10):
        self.engine = _Engine(fold=True, fuse=fuse,
                              policy=FoldPolicy(max_bytes=max_bytes, size_limit_ratio=size_limit_ratio,
                                                growth_budget=growth_budget),
                              max_iterations=max_iterations)

    def run(self, graph: gs.Graph, context: PassContext) -> PassResult:
        modified, stats = self.engine.run(graph)
        return PassResult(modified=modified, stats=stats)


class SimplifyExact(Pass):
    """The structural part of ``simplify`` only: nothing is computed but shapes and comparisons."""

    name = "simplify-exact"
    kind = Kind.EXACT
    needs_shapes = False  # the engine keeps its own ShapeInfo

    def __init__(self, *, max_iterations: int = 10):
        self.engine = _Engine(fold=False, fuse=False, policy=FoldPolicy(), max_iterations=max_iterations)

    def run(self, graph: gs.Graph, context: PassContext) -> PassResult:
        modified, stats = self.engine.run(graph)
        return PassResult(modified=modified, stats=stats)


class CommonSubexpressionElimination(Pass):
    """Merge nodes with the same op, domain, attributes and inputs (then drop what became dead)."""

    name = "cse"
    kind = Kind.EXACT
    needs_shapes = False  # the engine keeps its own ShapeInfo

    def run(self, graph: gs.Graph, context: PassContext) -> PassResult:
        ensure_sorted(graph)
        merged = cse(graph)
        removed = dce(graph) if merged else 0
        return PassResult(modified=bool(merged), stats={"merged": merged, "dead_removed": removed})


class FuseLinear(Pass):
    """BatchNormalization, per-channel Mul/Add and Pad fused into Conv/Gemm/pools; MatMul+Add -> Gemm."""

    name = "fuse-linear"
    kind = Kind.NUMERIC
    needs_shapes = False  # the engine keeps its own ShapeInfo

    def __init__(self, *, max_iterations: int = 10):
        self.engine = _Engine(fold=False, fuse=True, policy=FoldPolicy(), max_iterations=max_iterations,
                              tables=[FUSE_RULES], canonical=False, do_cse=False)

    def run(self, graph: gs.Graph, context: PassContext) -> PassResult:
        modified, stats = self.engine.run(graph)
        return PassResult(modified=modified, stats=stats)
