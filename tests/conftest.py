"""Shared test helpers: tiny hand-built models and an onnxruntime runner."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def make_mlp(opset: int = 17, dynamic_batch: bool = False, seed: int = 0) -> onnx.ModelProto:
    """x[N,8] -> MatMul(W1) -> Add(b1) -> Relu -> Identity -> MatMul(W2) -> y[N,4], with metadata."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2")
    unused = numpy_helper.from_array(np.ones(3, np.float32), "unused")
    batch = "N" if dynamic_batch else 1
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="mm1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="add1"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("Identity", ["h2"], ["h3"], name="id"),
        helper.make_node("MatMul", ["h3", "w2"], ["y"], name="mm2"),
        helper.make_node("Neg", ["h2"], ["dead"], name="dead_node"),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
        [w1, b1, w2, unused],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = 8
    helper.set_model_props(model, {"author": "tests", "labels": "a,b,c,d"})
    return model


@pytest.fixture
def mlp() -> onnx.ModelProto:
    return make_mlp()


@pytest.fixture
def mlp_path(tmp_path, mlp):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp, path)
    return path
