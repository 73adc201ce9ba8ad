"""simplify and its sub-passes: one small model per rule (applies / must not apply), CSE, DCE,
canonicalization, fusions, idempotence, graph interface, and every fixture against onnxruntime."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from passkit import apply, assert_same, model_of, ops, run

from onnxopt.passes import (
    DEFAULT_PIPELINE,
    Canonicalize,
    CommonSubexpressionElimination,
    FuseLinear,
    Simplify,
    SimplifyExact,
)

RNG = np.random.default_rng(0)


def vi(name: str, shape, dtype=T.FLOAT) -> onnx.ValueInfoProto:
    return h.make_tensor_value_info(name, dtype, shape)


def w(name: str, *shape, dtype=np.float32, value=None) -> onnx.TensorProto:
    arr = RNG.standard_normal(shape).astype(dtype) if value is None else np.asarray(value, dtype=dtype)
    return nh.from_array(arr, name)


def i64(name: str, values) -> onnx.TensorProto:
    return nh.from_array(np.asarray(values, dtype=np.int64), name)


def feeds_for(model: onnx.ModelProto, **dims) -> dict:
    out = {}
    for inp in model.graph.input:
        tt = inp.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else dims.get(d.dim_param, 3) for d in tt.shape.dim]
        dt = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        rng = np.random.default_rng(7)
        if np.dtype(dt).kind == "f":
            out[inp.name] = rng.standard_normal(shape).astype(dt)
        else:
            out[inp.name] = rng.integers(0, 4, shape).astype(dt)
    return out


@dataclass
class Case:
    """A model on which ``rule`` fires (``fires``) or must not (``not fires``); ops left afterwards."""

    model: onnx.ModelProto
    rule: str
    fires: bool
    left: dict | None = None
    make_pass: Callable = Simplify
    dims: list = field(default_factory=lambda: [{}])


X4 = vi("x", [1, 4, 5, 5])
Y4 = vi("y", [1, 4, 5, 5])
X2 = vi("x", [3, 4])
Y2 = vi("y", [3, 4])


def _conv(inputs=("x", "W", "B"), out="c", **attrs):
    return h.make_node("Conv", list(inputs), [out], kernel_shape=[3, 3], pads=[1, 1, 1, 1], **attrs)


CONV_W = [w("W", 4, 4, 3, 3), w("B", 4)]
BN = [w("s", 4), w("b", 4), w("m", 4), w("v", 4, value=RNG.uniform(0.5, 2, 4))]


def cases() -> dict[str, Case]:
    c: dict[str, Case] = {}
    # ------------------------------------------------------------------ pass-through
    c["identity"] = Case(model_of([h.make_node("Relu", ["x"], ["r"]), h.make_node("Identity", ["r"], ["y"])],
                                  [X2], [Y2]), "identity", True, {"Relu": 1})
    c["identity_io"] = Case(model_of([h.make_node("Identity", ["x"], ["y"])], [X2], [Y2]), "identity", False,
                            {"Identity": 1})
    c["dropout"] = Case(model_of([h.make_node("Dropout", ["x"], ["d"]), h.make_node("Relu", ["d"], ["y"])],
                                 [X2], [Y2]), "dropout", True, {"Relu": 1})
    c["cast_noop"] = Case(model_of([h.make_node("Cast", ["x"], ["d"], to=T.FLOAT), h.make_node("Relu", ["d"], ["y"])],
                                   [X2], [Y2]), "cast_noop", True, {"Relu": 1})
    c["cast_roundtrip"] = Case(model_of(
        [h.make_node("Cast", ["x"], ["d"], to=T.DOUBLE), h.make_node("Cast", ["d"], ["e"], to=T.FLOAT),
         h.make_node("Relu", ["e"], ["y"])], [X2], [Y2]), "cast_roundtrip", True, {"Relu": 1})
    c["cast_lossy_roundtrip"] = Case(model_of(
        [h.make_node("Cast", ["x"], ["d"], to=T.FLOAT16), h.make_node("Cast", ["d"], ["e"], to=T.FLOAT),
         h.make_node("Relu", ["e"], ["y"])], [X2], [Y2]), "cast_roundtrip", False, {"Cast": 2, "Relu": 1})
    # ------------------------------------------------------------------ reshape family
    c["reshape_noop"] = Case(model_of([h.make_node("Reshape", ["x", "s"], ["r"]), h.make_node("Relu", ["r"], ["y"])],
                                      [X2], [Y2], [i64("s", [3, -1])]), "reshape_noop", True, {"Relu": 1})
    c["reshape_changes"] = Case(model_of(
        [h.make_node("Reshape", ["x", "s"], ["r"]), h.make_node("Relu", ["r"], ["y"])], [X2], [vi("y", [4, 3])],
        [i64("s", [4, 3])]), "reshape_noop", False, {"Reshape": 1, "Relu": 1})
    c["reshape_chain"] = Case(model_of(
        [h.make_node("Reshape", ["x", "s1"], ["r1"]), h.make_node("Reshape", ["r1", "s2"], ["r2"]),
         h.make_node("Relu", ["r2"], ["y"])], [X2], [vi("y", [2, 6])], [i64("s1", [12]), i64("s2", [2, 6])]),
        "reshape_chain", True, {"Reshape": 1, "Relu": 1})
    xd = vi("x", ["N", "S", 8])
    sym_nodes = [h.make_node("Shape", ["x"], ["sh"]),
                 h.make_node("Gather", ["sh", "i0"], ["n"], axis=0), h.make_node("Gather", ["sh", "i1"], ["s"], axis=0),
                 h.make_node("Unsqueeze", ["n", "ax"], ["n1"]), h.make_node("Unsqueeze", ["s", "ax"], ["s1"]),
                 h.make_node("Concat", ["n1", "s1", "h2", "h4"], ["t"], axis=0),
                 h.make_node("Reshape", ["x", "t"], ["y"])]
    c["reshape_symbolic"] = Case(model_of(sym_nodes, [xd], [vi("y", ["N", "S", 2, 4])],
                                          [i64("i0", 0), i64("i1", 1), i64("ax", [0]), i64("h2", [2]), i64("h4", [4])]),
                                 "reshape_symbolic", True, {"Reshape": 1}, dims=[{"N": 1, "S": 5}, {"N": 3, "S": 2}])
    c["expand_noop"] = Case(model_of([h.make_node("Expand", ["x", "s"], ["e"]), h.make_node("Relu", ["e"], ["y"])],
                                     [X2], [Y2], [i64("s", [1, 4])]), "expand_noop", True, {"Relu": 1})
    c["expand_broadcasts"] = Case(model_of(
        [h.make_node("Expand", ["x", "s"], ["e"]), h.make_node("Relu", ["e"], ["y"])], [X2], [vi("y", [2, 3, 4])],
        [i64("s", [2, 1, 4])]), "expand_noop", False, {"Expand": 1, "Relu": 1})
    # ------------------------------------------------------------------ transpose
    c["transpose_noop"] = Case(model_of(
        [h.make_node("Transpose", ["x"], ["t"], perm=[0, 1]), h.make_node("Relu", ["t"], ["y"])], [X2], [Y2]),
        "transpose_noop", True, {"Relu": 1})
    c["transpose_chain"] = Case(model_of(
        [h.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]), h.make_node("Transpose", ["t"], ["u"],
                                                                              perm=[0, 3, 1, 2]),
         h.make_node("Relu", ["u"], ["y"])], [X4], [Y4]), "transpose_chain", True, {"Relu": 1})
    c["transpose_chain_compose"] = Case(model_of(
        [h.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2, 3]), h.make_node("Transpose", ["t"], ["y"],
                                                                              perm=[0, 2, 3, 1])],
        [X4], [vi("y", [4, 5, 5, 1])]), "transpose_chain", True, {"Transpose": 1})
    # ------------------------------------------------------------------ slicing, concat, pad, tile
    c["slice_noop"] = Case(model_of(
        [h.make_node("Slice", ["x", "st", "en", "ax"], ["s"]), h.make_node("Relu", ["s"], ["y"])], [X2], [Y2],
        [i64("st", [0]), i64("en", [2**63 - 1]), i64("ax", [1])]), "slice_noop", True, {"Relu": 1})
    c["slice_part"] = Case(model_of(
        [h.make_node("Slice", ["x", "st", "en", "ax"], ["s"]), h.make_node("Relu", ["s"], ["y"])], [X2],
        [vi("y", [3, 3])], [i64("st", [1]), i64("en", [2**63 - 1]), i64("ax", [1])]), "slice_noop", False,
        {"Slice": 1, "Relu": 1})
    c["concat_single"] = Case(model_of(
        [h.make_node("Concat", ["x"], ["c"], axis=0), h.make_node("Relu", ["c"], ["y"])], [X2], [Y2]),
        "concat_single", True, {"Relu": 1})
    c["pad_noop"] = Case(model_of(
        [h.make_node("Pad", ["x", "p"], ["c"]), h.make_node("Relu", ["c"], ["y"])], [X2], [Y2],
        [i64("p", [0, 0, 0, 0])]), "pad_noop", True, {"Relu": 1})
    c["tile_noop"] = Case(model_of(
        [h.make_node("Tile", ["x", "r"], ["c"]), h.make_node("Relu", ["c"], ["y"])], [X2], [Y2],
        [i64("r", [1, 1])]), "tile_noop", True, {"Relu": 1})
    # ------------------------------------------------------------------ arithmetic identities
    for op, value, pos in (("Mul", 1.0, 1), ("Mul", 1.0, 0), ("Add", 0.0, 1), ("Sub", 0.0, 1), ("Div", 1.0, 1)):
        ins = ["x", "k"] if pos == 1 else ["k", "x"]
        c[f"{op.lower()}_identity_{pos}"] = Case(model_of(
            [h.make_node(op, ins, ["a"]), h.make_node("Relu", ["a"], ["y"])], [X2], [Y2],
            [w("k", 4, value=[value] * 4)]), "arith_identity", True, {"Relu": 1})
    c["add_zero_broadcasts"] = Case(model_of(
        [h.make_node("Add", ["x", "k"], ["a"]), h.make_node("Relu", ["a"], ["y"])], [X2], [vi("y", [2, 3, 4])],
        [w("k", 2, 1, 1, value=np.zeros((2, 1, 1)))]), "arith_identity", False, {"Add": 1, "Relu": 1})
    c["sub_zero_first"] = Case(model_of(
        [h.make_node("Sub", ["k", "x"], ["a"]), h.make_node("Relu", ["a"], ["y"])], [X2], [Y2],
        [w("k", 4, value=[0.0] * 4)]), "arith_identity", False, {"Sub": 1, "Relu": 1})
    c["where_const"] = Case(model_of(
        [h.make_node("Where", ["c", "x", "z"], ["a"]), h.make_node("Relu", ["a"], ["y"])], [X2], [Y2],
        [nh.from_array(np.ones((3, 4), bool), "c"), w("z", 3, 4)]), "where_const", True, {"Relu": 1})
    # ------------------------------------------------------------------ squeeze / unsqueeze
    c["unsqueeze_squeeze"] = Case(model_of(
        [h.make_node("Unsqueeze", ["x", "a"], ["u"]), h.make_node("Squeeze", ["u", "a"], ["q"]),
         h.make_node("Relu", ["q"], ["y"])], [X2], [Y2], [i64("a", [0, 2])]), "squeeze_unsqueeze", True,
        {"Relu": 1})
    c["unsqueeze_chain"] = Case(model_of(
        [h.make_node("Unsqueeze", ["x", "a"], ["u"]), h.make_node("Unsqueeze", ["u", "b"], ["v"]),
         h.make_node("Relu", ["v"], ["y"])], [X2], [vi("y", [1, 3, 1, 4, 1])], [i64("a", [1]), i64("b", [0, -1])]),
        "unsqueeze_chain", True, {"Unsqueeze": 1, "Relu": 1})
    c["squeeze_chain"] = Case(model_of(
        [h.make_node("Squeeze", ["x", "a"], ["u"]), h.make_node("Squeeze", ["u", "b"], ["v"]),
         h.make_node("Relu", ["v"], ["y"])], [vi("x", [1, 3, 1, 4, 1])], [Y2], [i64("a", [2]), i64("b", [0, -1])]),
        "squeeze_chain", True, {"Squeeze": 1, "Relu": 1})
    c["squeeze_other_axes"] = Case(model_of(
        [h.make_node("Unsqueeze", ["x", "a"], ["u"]), h.make_node("Squeeze", ["u", "b"], ["q"]),
         h.make_node("Relu", ["q"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])], [i64("a", [0]), i64("b", [1])]),
        "squeeze_unsqueeze", False, {"Relu": 1})  # different axes, but the static shapes show a no-op
    c["reduce_unit_keepdims"] = Case(model_of(
        [h.make_node("ReduceMean", ["x", "a"], ["r"], keepdims=1), h.make_node("Relu", ["r"], ["y"])],
        [vi("x", [3, 1, 4])], [vi("y", [3, 1, 4])], [i64("a", [1])], opset=18), "reduce_unit", True, {"Relu": 1})
    c["reduce_unit_drop"] = Case(model_of(
        [h.make_node("ReduceMax", ["x", "a"], ["r"], keepdims=0), h.make_node("Relu", ["r"], ["y"])],
        [vi("x", [3, 1, 4])], [Y2], [i64("a", [1])], opset=18), "reduce_unit", True, {"Squeeze": 1, "Relu": 1})
    c["reduce_long_axis"] = Case(model_of(
        [h.make_node("ReduceSum", ["x", "a"], ["r"], keepdims=1), h.make_node("Relu", ["r"], ["y"])],
        [X2], [vi("y", [3, 1])], [i64("a", [1])]), "reduce_unit", False, {"ReduceSum": 1, "Relu": 1})
    c["reduce_keepdims"] = Case(model_of(
        [h.make_node("ReduceMean", ["x"], ["r"], axes=[1], keepdims=0), h.make_node("Unsqueeze", ["r", "a"], ["y"])],
        [vi("x", ["N", 4])], [vi("y", ["N", 1])], [i64("a", [1])]), "reduce_keepdims", True, {"ReduceMean": 1},
        dims=[{"N": 2}, {"N": 5}])
    c["reshape_static_chain"] = Case(model_of(
        [h.make_node("Squeeze", ["x", "a"], ["q"]), h.make_node("Unsqueeze", ["q", "b"], ["y"])],
        [vi("x", [1, 1, 4])], [vi("y", [4, 1])], [i64("a", [0, 1]), i64("b", [1])]), "reshape_static_chain", True,
        {"Reshape": 1})
    # ------------------------------------------------------------------ fusions
    c["bn_into_conv"] = Case(model_of(
        [_conv(), h.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], epsilon=1e-3)],
        [X4], [Y4], CONV_W + BN), "bn_into_conv", True, {"Conv": 1})
    c["bn_conv_shared"] = Case(model_of(
        [_conv(), h.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"]),
         h.make_node("Relu", ["c"], ["y2"])], [X4], [Y4, vi("y2", [1, 4, 5, 5])], CONV_W + BN),
        "bn_into_conv", False, {"Conv": 1, "BatchNormalization": 1, "Relu": 1})
    c["bn_into_conv_transpose"] = Case(model_of(
        [h.make_node("ConvTranspose", ["x", "Wt", "B"], ["c"], kernel_shape=[2, 2], strides=[2, 2]),
         h.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"])],
        [X4], [vi("y", [1, 4, 10, 10])], [w("Wt", 4, 4, 2, 2), w("B", 4)] + BN), "bn_into_conv", True,
        {"ConvTranspose": 1})
    for tb in (0, 1):
        c[f"bn_into_gemm_t{tb}"] = Case(model_of(
            [h.make_node("Gemm", ["x", "G", "gb"], ["g"], transB=tb, alpha=0.5, beta=2.0),
             h.make_node("BatchNormalization", ["g", "s", "b", "m", "v"], ["y"])],
            [vi("x", [2, 3])], [vi("y", [2, 4])], [w("G", *((4, 3) if tb else (3, 4))), w("gb", 4)] + BN),
            "bn_into_conv", True, {"Gemm": 1})
    c["mul_into_conv"] = Case(model_of(
        [_conv(), h.make_node("Mul", ["c", "k"], ["y"])], [X4], [Y4], CONV_W + [w("k", 4, 1, 1)]),
        "mul_into_conv", True, {"Conv": 1})
    c["add_into_conv"] = Case(model_of(
        [_conv(inputs=("x", "W")), h.make_node("Add", ["k", "c"], ["y"])], [X4], [Y4],
        CONV_W[:1] + [w("k", 1, 4, 1, 1)]), "add_into_conv", True, {"Conv": 1})
    c["add_spatial_not_into_conv"] = Case(model_of(
        [_conv(), h.make_node("Add", ["c", "k"], ["y"])], [X4], [Y4], CONV_W + [w("k", 1, 1, 5, 5)]),
        "add_into_conv", False, {"Conv": 1, "Add": 1})
    c["add_into_gemm"] = Case(model_of(
        [h.make_node("Gemm", ["x", "G"], ["g"]), h.make_node("Add", ["g", "k"], ["y"])],
        [vi("x", [2, 3])], [vi("y", [2, 4])], [w("G", 3, 4), w("k", 4)]), "add_into_gemm", True, {"Gemm": 1})
    c["matmul_add_to_gemm"] = Case(model_of(
        [h.make_node("MatMul", ["x", "M"], ["mm"]), h.make_node("Add", ["mm", "k"], ["y"])],
        [vi("x", ["N", 3])], [vi("y", ["N", 4])], [w("M", 3, 4), w("k", 4)]), "matmul_add_to_gemm", True,
        {"Gemm": 1}, dims=[{"N": 1}, {"N": 5}])
    c["matmul3d_add_not_gemm"] = Case(model_of(
        [h.make_node("MatMul", ["x", "M"], ["mm"]), h.make_node("Add", ["mm", "k"], ["y"])],
        [vi("x", [2, 2, 3])], [vi("y", [2, 2, 4])], [w("M", 3, 4), w("k", 4)]), "matmul_add_to_gemm", False,
        {"MatMul": 1, "Add": 1})
    c["affine_into_bn"] = Case(model_of(
        [h.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["n"]), h.make_node("Mul", ["n", "k"], ["p"]),
         h.make_node("Add", ["p", "d"], ["y"])], [X4], [Y4], BN + [w("k", 4, 1, 1), w("d", 4, 1, 1)]),
        "affine_into_bn", True, {"BatchNormalization": 1})
    c["pad_into_conv"] = Case(model_of(
        [h.make_node("Pad", ["x", "p"], ["xp"]), _conv(inputs=("xp", "W", "B"), out="y")], [X4],
        [vi("y", [1, 4, 7, 5])], CONV_W + [i64("p", [0, 0, 2, 1, 0, 0, 0, 0])]), "pad_into_conv", True,
        {"Conv": 1})
    c["pad_batch_not_into_conv"] = Case(model_of(
        [h.make_node("Pad", ["x", "p"], ["xp"]), _conv(inputs=("xp", "W", "B"), out="y")], [X4],
        [vi("y", [2, 4, 5, 5])], CONV_W + [i64("p", [1, 0, 0, 0, 0, 0, 0, 0])]), "pad_into_conv", False,
        {"Pad": 1, "Conv": 1})
    c["pad_into_avgpool"] = Case(model_of(
        [h.make_node("Pad", ["x", "p"], ["xp"]),
         h.make_node("AveragePool", ["xp"], ["y"], kernel_shape=[3, 3])], [X4],
        [vi("y", [1, 4, 5, 5])], [i64("p", [0, 0, 1, 1, 0, 0, 1, 1])]), "pad_into_pool", True,
        {"AveragePool": 1})
    c["pad_into_maxpool_after_relu"] = Case(model_of(
        [h.make_node("Relu", ["x"], ["r"]), h.make_node("Pad", ["r", "p"], ["xp"]),
         h.make_node("MaxPool", ["xp"], ["y"], kernel_shape=[3, 3])], [X4],
        [vi("y", [1, 4, 5, 5])], [i64("p", [0, 0, 1, 1, 0, 0, 1, 1])]), "pad_into_pool", True,
        {"Relu": 1, "MaxPool": 1})
    c["pad_zero_not_into_maxpool"] = Case(model_of(
        [h.make_node("Pad", ["x", "p"], ["xp"]),
         h.make_node("MaxPool", ["xp"], ["y"], kernel_shape=[3, 3])], [X4],
        [vi("y", [1, 4, 5, 5])], [i64("p", [0, 0, 1, 1, 0, 0, 1, 1])]), "pad_into_pool", False,
        {"Pad": 1, "MaxPool": 1})
    return c


CASES = cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule(name):
    case = CASES[name]
    result, out, _ = apply(case.model, case.make_pass())
    fired = result.stats.get("rules", {}).get(case.rule, 0)
    assert bool(fired) == case.fires, (case.rule, result.stats)
    if case.left is not None:
        assert ops(out) == Counter(case.left), ops(out)
    if fired or ops(out) != ops(case.model):
        assert result.modified
    if not result.modified:
        assert len(out.graph.initializer) == len(case.model.graph.initializer)
    for dims in case.dims:
        assert_same(case.model, out, feeds_for(case.model, **dims))
    assert [o.name for o in out.graph.output] == [o.name for o in case.model.graph.output]
    assert [i.name for i in out.graph.input] == [i.name for i in case.model.graph.input]
    again, _, _ = apply(out, case.make_pass())
    assert again.modified is False, again.stats


def test_reshape_symbolic_gives_copy_zeros():
    _, _, graph = apply(CASES["reshape_symbolic"].model, Simplify())
    np.testing.assert_array_equal(graph.nodes[0].inputs[1].values, [0, 0, 2, 4])


def test_transpose_chain_composes_perms():
    _, _, graph = apply(CASES["transpose_chain_compose"].model, Simplify())
    assert graph.nodes[0].attrs["perm"] == [1, 2, 3, 0]


# --------------------------------------------------------------------------- CSE, DCE, canonicalize


def test_cse_merges_identical_nodes_and_keeps_graph_output_names():
    nodes = [h.make_node("Relu", ["x"], ["a"]), h.make_node("Relu", ["x"], ["b"]),
             h.make_node("Add", ["a", "b"], ["y"]), h.make_node("Relu", ["x"], ["z"])]
    m = model_of(nodes, [X2], [Y2, vi("z", [3, 4])])
    result, out, _ = apply(m, CommonSubexpressionElimination())
    assert result.modified and ops(out) == Counter({"Relu": 1, "Add": 1})
    assert [o.name for o in out.graph.output] == ["y", "z"]
    assert_same(m, out, feeds_for(m))
    again, _, _ = apply(out, CommonSubexpressionElimination())
    assert again.modified is False


def test_cse_keeps_nodes_that_both_write_graph_outputs_and_random_ops():
    nodes = [h.make_node("Relu", ["x"], ["y"]), h.make_node("Relu", ["x"], ["z"]),
             h.make_node("RandomNormalLike", ["x"], ["r1"]), h.make_node("RandomNormalLike", ["x"], ["r2"]),
             h.make_node("Add", ["r1", "r2"], ["q"])]
    m = model_of(nodes, [X2], [Y2, vi("z", [3, 4]), vi("q", [3, 4])])
    result, out, _ = apply(m, CommonSubexpressionElimination())
    assert result.modified is False
    assert ops(out) == ops(m)


def test_cse_does_not_merge_different_attributes():
    nodes = [h.make_node("Softmax", ["x"], ["a"], axis=0), h.make_node("Softmax", ["x"], ["b"], axis=1),
             h.make_node("Add", ["a", "b"], ["y"])]
    m = model_of(nodes, [X2], [Y2])
    result, _, _ = apply(m, CommonSubexpressionElimination())
    assert result.modified is False


def test_dead_code_and_unused_weights_go():
    nodes = [h.make_node("Relu", ["x"], ["y"]), h.make_node("Neg", ["x"], ["dead"])]
    m = model_of(nodes, [X2], [Y2], [w("unused", 3)])
    result, out, _ = apply(m, Simplify())
    assert result.modified and ops(out) == Counter({"Relu": 1}) and not out.graph.initializer


def test_canonicalize_dedups_equal_bytes_only():
    inits = [w("a", 4, value=[1, 2, 3, 4]), w("b", 4, value=[1, 2, 3, 4]), w("z", 4, value=[0.0] * 4),
             w("nz", 4, value=[-0.0] * 4)]
    nodes = [h.make_node("Add", ["x", "a"], ["p"]), h.make_node("Add", ["p", "b"], ["q"]),
             h.make_node("Add", ["q", "z"], ["r"]), h.make_node("Mul", ["r", "nz"], ["y"])]
    m = model_of(nodes, [X2], [Y2], inits)
    result, out, _ = apply(m, Canonicalize())
    assert result.modified and result.stats["duplicate_uses_merged"] == 1
    assert sorted(t.name for t in out.graph.initializer) == ["a", "nz", "z"]
    assert_same(m, out, feeds_for(m))
    again, _, _ = apply(out, Canonicalize())
    assert again.modified is False


def test_constant_nodes_become_initializers_with_their_names():
    nodes = [h.make_node("Constant", [], ["c"], value=nh.from_array(np.ones((3, 4), np.float32))),
             h.make_node("Add", ["x", "c"], ["y"])]
    m = model_of(nodes, [X2], [Y2])
    result, out, _ = apply(m, Canonicalize())
    assert result.stats["constants_lifted"] == 1
    assert [t.name for t in out.graph.initializer] == ["c"] and ops(out) == Counter({"Add": 1})


def test_simplify_exact_does_not_fuse():
    case = CASES["bn_into_conv"]
    result, out, _ = apply(case.model, SimplifyExact())
    assert ops(out) == ops(case.model) and result.modified is False


def test_fuse_linear_alone():
    case = CASES["bn_into_conv"]
    result, out, _ = apply(case.model, FuseLinear())
    assert result.modified and ops(out) == Counter({"Conv": 1})
    assert_same(case.model, out, feeds_for(case.model))


def test_lazy_fill_weights_are_fused_without_materializing():
    # the weight is a 4 MB ConstantOfShape fill: BN folds into the conv as a small static Mul
    shape = i64("wshape", [256, 1024, 2, 2])
    nodes = [h.make_node("ConstantOfShape", ["wshape"], ["W"], value=nh.from_array(np.array([0.01], np.float32))),
             h.make_node("Conv", ["x", "W"], ["c"], kernel_shape=[2, 2]),
             h.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"])]
    bn = [w("s", 256), w("b", 256), w("m", 256), w("v", 256, value=RNG.uniform(0.5, 2, 256))]
    m = model_of(nodes, [vi("x", [1, 1024, 3, 3])], [vi("y", [1, 256, 2, 2])], [shape] + bn)
    result, out, _ = apply(m, Simplify())
    assert result.stats["rules"]["bn_into_conv"] == 1
    assert "BatchNormalization" not in ops(out)
    assert out.ByteSize() < 100_000
    assert_same(m, out, feeds_for(m))


def test_default_pipeline_runs_simplify():
    assert DEFAULT_PIPELINE[0] == "simplify"


# --------------------------------------------------------------------------- fixtures


def _fixture_names() -> list[str]:
    try:
        import fixtures
    except ImportError:
        return []
    return sorted(fixtures.FIXTURES)


@pytest.mark.parametrize("name", _fixture_names() or [pytest.param("none", marks=pytest.mark.skip("no fixtures"))])
def test_fixture_against_onnxruntime(name):
    import fixtures

    model = fixtures.FIXTURES[name].build()
    _, out, _ = apply(model, Simplify())
    init_names = {t.name for t in model.graph.initializer}
    feeds = [fixtures.random_feeds(model, seed=s) for s in range(2)] if hasattr(fixtures, "random_feeds") else [
        feeds_for(model)]
    for feed in feeds:
        ref, got = run(model, feed), run(out, feed)
        for a, b in zip(ref, got):
            assert a.dtype == b.dtype and a.shape == b.shape
            if a.dtype.kind == "f":
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
            else:
                np.testing.assert_array_equal(a, b)
    assert [i.name for i in out.graph.input if i.name not in init_names] == [
        i.name for i in model.graph.input if i.name not in init_names]
    assert [o.name for o in out.graph.output] == [o.name for o in model.graph.output]
    assert len(out.graph.node) <= len(model.graph.node)
    again, _, _ = apply(out, Simplify())
    assert again.modified is False, again.stats
