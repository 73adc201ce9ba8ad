"""Empirical bias correction (Nagel et al. 2019, section 4.2, measured rather than analytic).

Quantization noise is not zero-mean after a convolution: rounding the weights shifts each output
channel's expected value, and so does clipping the input range. For every int8 Conv / Gemm, the
per-channel mean of (int8 model output - float model output) over the calibration samples is
measured in one streamed pass (running sums only, never the samples) and subtracted from the
layer's bias in the float model the QDQ model is built from. All layers are corrected at once;
``iterations`` > 1 repeats the measurement on the corrected model, which picks up the effect of
upstream corrections on downstream layers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import onnx

from onnxopt.activations import with_outputs
from onnxopt.data import Feed
from onnxopt.model import to_graph, to_model
from onnxopt.validate import OrtRunner

from .quant_graph import _const

log = logging.getLogger(__name__)


def local_errors(fp32: onnx.ModelProto, q: onnx.ModelProto, layers: dict[str, int],
                 feeds: Sequence[Feed]) -> dict[str, np.ndarray]:
    """Per-channel mean of each int8 layer's own error, one streamed pass for all layers.

    In a copy of the QDQ model every int8 Conv/Gemm gets a float twin reading the same dequantized
    input (float weights from ``fp32``): (layer output - twin output) is the error the layer itself
    adds through its weight rounding, free of upstream errors, so all layers can be corrected at
    once without counting an upstream shift twice. (The input's own rounding shows up as a shift of
    the upstream layer's output, which that layer's correction does not see; it is left alone.)
    """
    fnodes = {n.name: n for n in fp32.graph.node}
    finits = {t.name: t for t in fp32.graph.initializer}
    m = onnx.ModelProto()
    m.CopyFrom(q)
    g = m.graph
    pairs: dict[str, tuple[str, str]] = {}
    extra_nodes, extra_inits = [], []
    for node in list(g.node):
        if node.name not in layers or node.name not in fnodes or not node.output:
            continue
        fn = fnodes[node.name]
        if any(i and i not in finits for i in fn.input[1:]):
            continue  # weights not plain initializers in the float model
        twin = onnx.NodeProto()
        twin.CopyFrom(fn)
        twin.name = f"{node.name}__bias_twin"
        twin.input[0] = node.input[0]  # the same dequantized input: only the layer's own error remains
        del twin.output[:]
        twin.output.append(f"{node.name}__bias_twin_out")
        for j in range(1, len(fn.input)):
            if fn.input[j]:
                init = onnx.TensorProto()
                init.CopyFrom(finits[fn.input[j]])
                init.name = f"{node.name}__bias_twin_in{j}"
                extra_inits.append(init)
                twin.input[j] = init.name
        extra_nodes.append(twin)
        pairs[node.name] = (node.output[0], twin.output[0])
    if not pairs:
        return {}
    g.node.extend(extra_nodes)
    g.initializer.extend(extra_inits)
    names = [t for pr in pairs.values() for t in pr]
    runner = OrtRunner(with_outputs(m, names))
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    try:
        for feed in feeds:
            out = runner.run(feed)
            for n, (a, b) in pairs.items():
                y, t = np.asarray(out[a], np.float64), np.asarray(out[b], np.float64)
                if y.shape != t.shape or y.ndim == 0:
                    continue
                ax = layers[n] % y.ndim
                axes = tuple(i for i in range(y.ndim) if i != ax)
                sums[n] = sums.get(n, 0.0) + (y - t).sum(axis=axes)
                counts[n] = counts.get(n, 0) + y.size // y.shape[ax]
    finally:
        runner.close()
    return {n: sums[n] / counts[n] for n in sums if counts.get(n)}


def apply_corrections(prepared: onnx.ModelProto, deltas: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, int]:
    """Copy of the float model with ``bias -= delta`` on each named Conv/Gemm (a bias is added if absent)."""
    g = to_graph(prepared)
    by_name = {n.name: n for n in g.nodes}
    import onnx_graphsurgeon as gs

    done = 0
    for name, d in deltas.items():
        node = by_name.get(name)
        if node is None or node.op not in ("Conv", "Gemm"):
            continue
        if node.op == "Gemm" and float(node.attrs.get("beta", 1.0)) != 1.0:
            continue
        has_bias = len(node.inputs) > 2 and node.inputs[2].name
        b = _const(node.inputs[2]) if has_bias else np.zeros(d.shape[0], np.float32)
        if b is None:
            continue
        b = np.asarray(b, np.float64).reshape(-1)
        if b.size == 1 and d.size > 1:
            b = np.full(d.size, b[0])
        if b.size != d.size:
            continue
        new = gs.Constant(f"{name}_bias_corrected", (b - d).astype(np.float32))
        if has_bias:
            node.inputs[2] = new
        else:
            node.inputs.append(new)
        done += 1
    return to_model(g, like=prepared), done


def bias_correct(
    prepared: onnx.ModelProto,
    build: Callable[[onnx.ModelProto], onnx.ModelProto],
    layers: dict[str, int],
    feeds: Sequence[Feed],
    *,
    iterations: int = 1,
) -> tuple[onnx.ModelProto, dict]:
    """Return the float model with corrected biases, and a report (mean |shift| removed per pass)."""
    report: dict = {"layers": 0, "mean_abs_shift": []}
    current = prepared
    for _ in range(max(1, iterations)):
        q = build(current)
        deltas = local_errors(current, q, layers, feeds)
        if not deltas:
            break
        current, n = apply_corrections(current, deltas)
        report["layers"] = n
        report["mean_abs_shift"].append(round(float(np.mean([np.abs(d).mean() for d in deltas.values()])), 6))
    return current, report
