"""cleanup: remove dead nodes and unused weights. EXACT.

Keeps invariant: graph inputs and outputs (the model's interface) stay, in order, with their names;
every node that contributes to an output stays.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxopt.context import PassContext
from onnxopt.passes_api import Kind, Pass, PassResult

from .graph_utils import all_graphs


def _census(graph: gs.Graph) -> tuple[int, int]:
    nodes = tensors = 0
    for g in all_graphs(graph):
        nodes += len(g.nodes)
        tensors += len(g.tensors())
    return nodes, tensors


class Cleanup(Pass):
    """Dead-code elimination: drop nodes no output depends on, and tensors nothing uses."""

    name = "cleanup"
    kind = Kind.EXACT

    def run(self, graph: gs.Graph, context: PassContext) -> PassResult:
        nodes_before, tensors_before = _census(graph)
        graph.cleanup(remove_unused_node_outputs=False, recurse_subgraphs=True, remove_unused_graph_inputs=False)
        nodes_after, tensors_after = _census(graph)
        return PassResult(
            modified=(nodes_after, tensors_after) != (nodes_before, tensors_before),
            stats={"nodes_removed": nodes_before - nodes_after, "tensors_removed": tensors_before - tensors_after},
        )
