"""PRelu after a Conv, spelled so onnxruntime runs it in its blocked NCHWc layout.

onnxruntime's CPU PRelu is a generic broadcasting kernel in plain NCHW: after a Conv that runs in the
NCHWc layout, every PRelu costs a reorder out of NCHWc, the slow PRelu itself and a reorder back.
Profiled (``SessionOptions.enable_profiling``, 1 thread, onnxruntime 1.22) it is the largest cost of
the MTCNN nets: 45% of P-net's node time at 96x96 and 41% of O-net's at batch 16 - more than the
convolutions - and it only shrinks linearly with the channels pruning removes.

The identity used, per channel ``c`` with slope ``a``:

    PRelu(x) = a * x + (1 - a) * Relu(x)

(x > 0: a x + (1 - a) x = x; x <= 0: a x). onnxruntime turns both per-channel Muls into NCHWc
depthwise 1x1 convolutions, runs Relu in NCHWc and fuses the Add into the second one: three passes in
the fast layout instead of reorder + PRelu + reorder. A slope that is the same for every channel
becomes a LeakyRelu, which onnxruntime fuses into the Conv itself. Outputs differ from PRelu's by
float rounding only (a few ulp; 5e-7 max abs on the MTCNN nets).

Only PRelus whose input is a 4-D Conv output and whose slope is a per-channel constant
(``[C, 1, 1]`` / ``[1, C, 1, 1]`` / scalar) are rewritten; everything else is left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .graph_utils import NameGen, constant_value


def _channels(node: gs.Node) -> int | None:
    """Output channels of a Conv with a constant 4-D weight, else None."""
    if node.op != "Conv" or len(node.inputs) < 2:
        return None
    w = constant_value(node.inputs[1])
    if w is None or w.ndim != 4:
        return None
    return int(w.shape[0])


def rewrite_prelu(graph: gs.Graph, names: NameGen | None = None) -> int:
    """Rewrite every eligible Conv -> PRelu in ``graph`` (top level only); returns how many."""
    names = names or NameGen(graph)
    count = 0
    for node in list(graph.nodes):
        if node.op != "PRelu" or len(node.inputs) != 2 or len(node.outputs) != 1:
            continue
        x, slope_t = node.inputs
        if len(x.inputs) != 1:
            continue
        channels = _channels(x.inputs[0])
        slope = constant_value(slope_t)
        if channels is None or slope is None or slope.dtype != np.float32:
            continue
        if slope.size == 1 and slope.ndim <= 4:
            per = np.full(channels, float(slope.reshape(-1)[0]), np.float32)
        elif slope.size == channels and slope.shape in ((channels, 1, 1), (1, channels, 1, 1)):
            per = slope.reshape(-1)
        else:
            continue
        y = node.outputs[0]
        node.outputs.clear()
        node.inputs.clear()
        graph.nodes.remove(node)
        base = node.name or y.name
        if np.all(per == per[0]):
            graph.nodes.append(gs.Node("LeakyRelu", names(f"{base}_leaky"), {"alpha": float(per[0])},
                                       inputs=[x], outputs=[y]))
            count += 1
            continue
        shape = (1, channels, 1, 1)
        a = gs.Constant(names(f"{base}_slope"), np.ascontiguousarray(per.reshape(shape)))
        b = gs.Constant(names(f"{base}_one_minus_slope"), np.ascontiguousarray((1.0 - per).reshape(shape)))
        r = gs.Variable(names(f"{base}_relu"), dtype=np.float32)
        rb = gs.Variable(names(f"{base}_relu_scaled"), dtype=np.float32)
        ax = gs.Variable(names(f"{base}_linear"), dtype=np.float32)
        graph.nodes.extend([
            gs.Node("Relu", names(f"{base}_relu"), inputs=[x], outputs=[r]),
            gs.Node("Mul", names(f"{base}_relu_scale"), inputs=[r, b], outputs=[rb]),
            gs.Node("Mul", names(f"{base}_linear"), inputs=[x, a], outputs=[ax]),
            gs.Node("Add", names(f"{base}_sum"), inputs=[rb, ax], outputs=[y]),
        ])
        count += 1
    if count:
        graph.cleanup(remove_unused_graph_inputs=False)
        graph.toposort()
    return count


__all__ = ["rewrite_prelu"]
