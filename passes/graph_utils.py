"""Small graph-surgery helpers every pass shares (onnx-graphsurgeon graphs).

graphsurgeon tensors compare equal by name and are unhashable: everything here keys by ``id()``.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.model import gs_graphs

#: ``graph`` and every nested subgraph (If/Loop/Scan bodies), each graph before those nested in it;
#: the framework's walk (iterative, so hostile nesting depth cannot exhaust Python's recursion limit)
all_graphs = gs_graphs


def tensor_dtype(tensor: gs.Tensor) -> np.dtype | None:
    """A tensor's element type as a numpy dtype, or None when unknown."""
    dt = tensor.dtype
    if dt is None:
        return None
    if isinstance(dt, (int, np.integer)):
        import onnx

        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(dt)))
    try:
        return np.dtype(dt)
    except TypeError:
        return None


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs)


def peek_values(const: gs.Constant) -> np.ndarray:
    """A constant's value without caching it in the graph.

    ``Constant.values`` replaces graphsurgeon's lazy reference to the model's TensorProto with a numpy
    copy for good, which doubles the weight memory of a large model and makes export copy it again.
    Read-only passes should peek instead.
    """
    from onnx_graphsurgeon.ir.tensor import LazyValues

    values = const._values
    return values.load() if type(values) is LazyValues else np.asarray(values)


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a gs.Constant, or of a variable produced by a Constant node; else None (not cached)."""
    if isinstance(tensor, gs.Constant):
        return peek_values(tensor)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        attrs = tensor.inputs[0].attrs
        if "value" in attrs and isinstance(attrs["value"], gs.Constant):
            return peek_values(attrs["value"])
    return None


def replace_all_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every consumer of ``old`` (and any graph output slot holding it) use ``new`` instead.

    Consumers in nested subgraphs reach ``old`` by name through the outer scope, so they are
    rewired too.
    """
    for g in all_graphs(graph):
        for node in g.nodes:
            for i, t in enumerate(node.inputs):
                if t is old:
                    node.inputs[i] = new
    for i, t in enumerate(graph.outputs):
        if t is old:
            graph.outputs[i] = new


def bypass_node(graph: gs.Graph, node: gs.Node, keep_input: int = 0) -> bool:
    """Remove a node whose output equals its ``keep_input``-th input, rewiring consumers.

    When the node's output is a graph output, the output name is part of the model's interface:
    the producer of the input is renamed to keep it, or the bypass is refused (returns False)
    when that is not possible (the input is a graph input, a constant, or used elsewhere).
    """
    src = node.inputs[keep_input]
    out = node.outputs[0]
    if is_graph_output(graph, out):
        if (
            isinstance(src, gs.Constant)
            or any(t is src for t in graph.inputs)
            or is_graph_output(graph, src)
            or len(src.inputs) != 1
            or len(src.outputs) > 1
            or _used_in_subgraph_by_name(graph, src)
        ):
            return False
        # rename: the producer of src now writes the graph output directly
        producer = src.inputs[0]
        for consumer in list(src.outputs):
            if consumer is node:
                continue
            for i, t in enumerate(consumer.inputs):
                if t is src:
                    consumer.inputs[i] = out
        for i, t in enumerate(producer.outputs):
            if t is src:
                producer.outputs[i] = out
        node.outputs.clear()
        node.inputs.clear()
        return True
    replace_all_uses(graph, out, src)
    node.outputs.clear()
    node.inputs.clear()
    return True


def _used_in_subgraph_by_name(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    for g in itertools.islice(all_graphs(graph), 1, None):
        for node in g.nodes:
            if any(t is tensor for t in node.inputs):
                return True
    return False


class NameGen:
    """Unique tensor/node names with a readable prefix (graphsurgeon only warns on duplicates)."""

    def __init__(self, graph: gs.Graph):
        self.used = {t for g in all_graphs(graph) for t in g.tensors()}
        self.used |= {n.name for g in all_graphs(graph) for n in g.nodes if n.name}

    def __call__(self, base: str) -> str:
        name = base
        i = 1
        while name in self.used:
            name = f"{base}_{i}"
            i += 1
        self.used.add(name)
        return name
