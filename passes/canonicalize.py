"""canonicalize: Constant nodes become initializers; identical initializers become one. EXACT.

- ``lift_constants``: a ``Constant`` node (Paddle and some PyTorch exports keep every weight in one)
  becomes an initializer with the node's output name; a Constant node whose output is a subgraph
  output is kept (some runtimes want a producer there).
- ``dedup_constants``: initializers with the same dtype, shape and bytes are merged into the first
  one met (its name survives), per graph; a subgraph's nodes may use an outer one. Comparison is on
  bytes, so ``0.0`` and ``-0.0`` or different NaN payloads are never merged.

Keeps invariant: graph inputs and outputs, every value every node computes.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.context import PassContext
from onnxopt.passes_api import Kind, Pass, PassResult

from .graph_utils import all_graphs
from .simplify_core import const_bytes, const_dtype, const_shape, is_default_domain, is_plain, peek

log = logging.getLogger(__name__)


def constant_node_value(node: gs.Node) -> np.ndarray | None:
    """The value a Constant node produces, or None for forms we leave alone (sparse, strings)."""
    attrs = node.attrs
    if "value" in attrs and isinstance(attrs["value"], gs.Constant):
        if not is_plain(attrs["value"]):
            return None
        return peek(attrs["value"])  # may be LazyValues: loaded only when needed
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(list(attrs["value_floats"]), dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(list(attrs["value_ints"]), dtype=np.int64)
    return None  # sparse_value, value_string(s): graphsurgeon cannot store strings as initializers


def lift_constants(graph: gs.Graph) -> int:
    """Turn Constant nodes into initializers (in every graph); returns how many were lifted."""
    lifted = 0
    for g in all_graphs(graph):
        keep = []
        for node in g.nodes:
            if node.op != "Constant" or not is_default_domain(node) or len(node.outputs) != 1:
                keep.append(node)
                continue
            out = node.outputs[0]
            value = constant_node_value(node)
            if value is None:
                log.debug("Constant %r kept: sparse, string or exotic element type", node.name)
                keep.append(node)
                continue
            if g is not graph and any(t is out for t in g.outputs):
                log.debug("Constant %r kept: its output is a subgraph output", node.name)
                keep.append(node)
                continue
            node.outputs.clear()
            out.to_constant(value)
            lifted += 1
        if len(keep) != len(g.nodes):
            g.nodes = keep
    return lifted


def _key(t: gs.Constant) -> tuple | None:
    if not is_plain(t):
        return None
    return (const_dtype(t).str, const_shape(t))


def dedup_constants(graph: gs.Graph) -> int:
    """Make nodes use one initializer per distinct (dtype, shape, bytes); returns inputs rewired."""
    rewired = 0
    for g in all_graphs(graph):
        consts: list[gs.Constant] = []
        seen: set[int] = set()
        for node in g.nodes:
            for t in node.inputs:
                if isinstance(t, gs.Constant) and id(t) not in seen:
                    seen.add(id(t))
                    consts.append(t)
        groups: dict[tuple, list[gs.Constant]] = defaultdict(list)
        for t in consts:
            k = _key(t)
            if k is not None:
                groups[k].append(t)
        canonical: dict[int, gs.Constant] = {}
        for members in groups.values():
            if len(members) < 2:
                continue
            # values are read one at a time and not kept: a model's weights are never all copied
            by_hash: dict[bytes, list[gs.Constant]] = defaultdict(list)
            for t in members:
                raw = const_bytes(t)
                by_hash[hashlib.blake2b(raw, digest_size=16).digest()].append(t)
            for same in by_hash.values():
                if len(same) < 2:
                    continue
                first = same[0]
                first_raw = const_bytes(first)
                for t in same[1:]:
                    if const_bytes(t) == first_raw:
                        canonical[id(t)] = first
        if not canonical:
            continue
        for node in g.nodes:
            for i, t in enumerate(node.inputs):
                c = canonical.get(id(t))
                if c is not None:
                    node.inputs[i] = c
                    rewired += 1
    return rewired


class Canonicalize(Pass):
    """Lift Constant nodes to initializers and merge identical initializers (names of the first kept)."""

    name = "canonicalize"
    kind = Kind.EXACT

    def run(self, graph: gs.Graph, context: PassContext) -> PassResult:
        lifted = lift_constants(graph)
        rewired = dedup_constants(graph)
        if lifted or rewired:
            graph.cleanup(remove_unused_node_outputs=False, recurse_subgraphs=True, remove_unused_graph_inputs=False)
        return PassResult(modified=bool(lifted or rewired),
                          stats={"constants_lifted": lifted, "duplicate_uses_merged": rewired})
