"""eliminate-identity: remove nodes that pass their input through unchanged. EXACT.

Rules (each one line of algebra):
- Identity(x)                          -> x
- Dropout(x) in inference mode         -> x      (mask output unused, training_mode absent or false)
- Cast(x, to=dtype(x))                 -> x
- Reshape(x, s) with s == shape(x)     -> x      (static shapes only)
- Transpose(x, perm=[0, 1, ..., n-1])  -> x
Keeps invariant: graph input and output names; a node whose output is a graph output is removed only
when its producer can take over the output name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.context import PassContext
from onnxopt.passes_api import Kind, Pass, PassResult

from .graph_utils import all_graphs, bypass_node, constant_value, tensor_dtype

log = logging.getLogger(__name__)


def _identity(node: gs.Node) -> str | None:
    return None


def _dropout(node: gs.Node) -> str | None:
    if len(node.outputs) > 1 and node.outputs[1].outputs:
        return "mask output is used"
    if len(node.inputs) >= 3 and node.inputs[2].name:
        mode = constant_value(node.inputs[2])
        if mode is None or bool(np.asarray(mode).any()):
            return "training_mode is not a constant false"
    return None


def _cast(node: gs.Node) -> str | None:
    src_dtype = tensor_dtype(node.inputs[0])
    if src_dtype is None:
        return "input dtype unknown"
    to = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))
    return None if to == src_dtype else "casts to another type"


def _static_shape(t: gs.Tensor) -> tuple[int, ...] | None:
    if t.shape is None or not all(isinstance(d, (int, np.integer)) and d >= 0 for d in t.shape):
        return None
    return tuple(int(d) for d in t.shape)


def _reshape(node: gs.Node) -> str | None:
    shape_in = _static_shape(node.inputs[0])
    target = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if shape_in is None or target is None:
        return "shapes not static"
    target = [int(d) for d in np.asarray(target).reshape(-1)]
    allowzero = int(node.attrs.get("allowzero", 0))
    resolved = [shape_in[i] if (d == 0 and not allowzero and i < len(shape_in)) else d for i, d in enumerate(target)]
    if resolved.count(-1) == 1:
        known = int(np.prod([d for d in resolved if d != -1]))
        total = int(np.prod(shape_in))
        if known == 0 or total % known:
            return "cannot resolve -1"
        resolved[resolved.index(-1)] = total // known
    return None if tuple(resolved) == shape_in else "changes the shape"


def _transpose(node: gs.Node) -> str | None:
    perm = node.attrs.get("perm")
    if perm is None:  # default perm reverses the axes: identity only for rank <= 1
        rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
        return None if rank is not None and rank <= 1 else "default perm reverses axes"
    return None if list(perm) == list(range(len(perm))) else "permutes axes"


#: op -> rule returning None when the node is an identity, else the reason it is not
RULES: dict[str, Callable[[gs.Node], str | None]] = {
    "Identity": _identity,
    "Dropout": _dropout,
    "Cast": _cast,
    "Reshape": _reshape,
    "Transpose": _transpose,
}


class EliminateIdentity(Pass):
    """Remove Identity, inference Dropout, same-type Cast, same-shape Reshape and identity Transpose."""

    name = "eliminate-identity"
    kind = Kind.EXACT

    def run(self, graph: gs.Graph, context: PassContext) -> PassResult:
        removed: dict[str, int] = {}
        for g in all_graphs(graph):
            for node in list(g.nodes):
                rule = RULES.get(node.op)
                if rule is None or (node.domain or "") not in ("", "ai.onnx") or not node.inputs or not node.outputs:
                    continue
                reason = rule(node)
                if reason is not None:
                    log.debug("%s %r kept: %s", node.op, node.name, reason)
                    continue
                if bypass_node(g, node):
                    removed[node.op] = removed.get(node.op, 0) + 1
                else:
                    log.debug("%s %r kept: its output is a graph output that cannot be renamed", node.op, node.name)
            if removed:
                g.cleanup(remove_unused_graph_inputs=False)
        return PassResult(modified=bool(removed), stats={"removed": removed})
