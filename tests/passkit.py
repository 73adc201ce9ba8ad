"""Helpers for pass unit tests: build a tiny model, run one pass on it, compare in onnxruntime."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import helper as h

from onnxopt.context import PassContext

RTOL, ATOL = 1e-5, 1e-6


def model_of(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    """A checked IR-8 model of the given nodes, value infos and initializers."""
    m = h.make_model(h.make_graph(nodes, "g", inputs, outputs, list(inits)),
                     opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def apply(model: onnx.ModelProto, p) -> tuple[object, onnx.ModelProto, gs.Graph]:
    """Run pass ``p`` on a shape-inferred import of ``model``; returns (result, checked export, graph)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = gs.import_onnx(inferred)
    result = p.run(graph, PassContext(model=inferred))
    out = gs.export_onnx(graph, do_type_check=False)
    out.ir_version = model.ir_version
    del out.opset_import[:]
    out.opset_import.extend(model.opset_import)
    onnx.checker.check_model(out)
    return result, out, graph


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_same(a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict) -> None:
    """Same outputs in onnxruntime: dtypes and shapes equal, values within RTOL/ATOL."""
    for x, y in zip(run(a, feeds), run(b, feeds)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL)


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)
