"""Spelled-out hard activations fused into onnxruntime's kernels (passes/fuse_activation.py)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from passkit import apply, assert_same, model_of, ops

from onnxopt.passes import Simplify

X = {"x": np.linspace(-8, 8, 2 * 4 * 5 * 5, dtype=np.float32).reshape(2, 4, 5, 5)}


def _consts(three: float = 3.0, six: float = 6.0) -> list:
    return [nh.from_array(np.array(v, np.float32), n) for n, v in
            (("three", three), ("zero", 0.0), ("six", six), ("sixth", 1 / 6))]


def _io(outputs=("y",)) -> tuple[list, list]:
    return ([h.make_tensor_value_info("x", T.FLOAT, [2, 4, 5, 5])],
            [h.make_tensor_value_info(o, T.FLOAT, [2, 4, 5, 5]) for o in outputs])


def _relu6_chain() -> list:
    return [h.make_node("Add", ["x", "three"], ["a"]), h.make_node("Clip", ["a", "zero", "six"], ["c"])]


@pytest.mark.parametrize("opset, fused", [(11, {"HardSigmoid": 1, "Mul": 1}), (14, {"HardSwish": 1})])
@pytest.mark.parametrize("tail", ["div", "mul_sixth", "gate_first"])
def test_hard_swish(opset, fused, tail):
    if tail == "div":
        nodes = [*_relu6_chain(), h.make_node("Mul", ["x", "c"], ["m"]), h.make_node("Div", ["m", "six"], ["y"])]
    elif tail == "mul_sixth":
        nodes = [*_relu6_chain(), h.make_node("Mul", ["c", "x"], ["m"]), h.make_node("Mul", ["sixth", "m"], ["y"])]
    else:  # x * (Clip(x + 3, 0, 6) / 6): the gate is a HardSigmoid, then x * HardSigmoid(x)
        nodes = [*_relu6_chain(), h.make_node("Div", ["c", "six"], ["g"]), h.make_node("Mul", ["x", "g"], ["y"])]
    model = model_of(nodes, *_io(), _consts(), opset=opset)
    _, out, _ = apply(model, Simplify())
    assert dict(ops(out)) == fused
    assert_same(model, out, X)
    assert [o.name for o in out.graph.output] == ["y"]


def test_hard_sigmoid_alone():
    nodes = [*_relu6_chain(), h.make_node("Div", ["c", "six"], ["y"])]
    model = model_of(nodes, *_io(), _consts(), opset=11)
    _, out, _ = apply(model, Simplify())
    assert dict(ops(out)) == {"HardSigmoid": 1}
    (node,) = out.graph.node
    assert {a.name: round(a.f, 6) for a in node.attribute} == {"alpha": round(1 / 6, 6), "beta": 0.5}
    assert_same(model, out, X)


@pytest.mark.parametrize("case", ["plus_two", "clip_to_five", "shared_clip", "other_operand"])
def test_lookalikes_are_left_alone(case):
    consts = _consts(three=2.0) if case == "plus_two" else _consts(six=5.0) if case == "clip_to_five" else _consts()
    nodes = [*_relu6_chain(), h.make_node("Mul", ["x", "c"], ["m"]), h.make_node("Div", ["m", "six"], ["y"])]
    outputs = ("y",)
    if case == "clip_to_five":  # Clip max 5 (the Div by 6 stays a plain division)
        nodes[1] = h.make_node("Clip", ["a", "zero", "five"], ["c"])
        consts.append(nh.from_array(np.array(5.0, np.float32), "five"))
    if case == "shared_clip":  # the Clip output is a graph output too
        outputs = ("y", "c")
    if case == "other_operand":  # z * Clip(x + 3, 0, 6) / 6 is not a HardSwish
        nodes[2] = h.make_node("Mul", ["x2", "c"], ["m"])
        nodes.insert(0, h.make_node("Neg", ["x"], ["x2"]))
    model = model_of(nodes, *_io(outputs), consts, opset=14)
    _, out, _ = apply(model, Simplify())
    assert "HardSwish" not in ops(out)
    assert_same(model, out, X)
