"""fold-constants: what folds, what never does, size guard, If inlining, symbolic shapes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from passkit import apply, assert_same, model_of, ops, run

from onnxopt.passes import FoldConstants, Simplify
from onnxopt.passes.fold_constants import Evaluator, Folder, FoldPolicy


def check_idempotent(out: onnx.ModelProto, make_pass) -> None:
    result, _, _ = apply(out, make_pass())
    assert result.modified is False, result.stats


X = h.make_tensor_value_info("x", T.FLOAT, [2, 3])
Y = h.make_tensor_value_info("y", T.FLOAT, [2, 3])
FEED = {"x": np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5}


def test_folds_a_constant_chain_and_keeps_the_rest():
    a = nh.from_array(np.full((3,), 2.0, np.float32), "a")
    b = nh.from_array(np.array([1.0, 2.0, 3.0], np.float32), "b")
    m = model_of([h.make_node("Add", ["a", "b"], ["ab"]), h.make_node("Sqrt", ["ab"], ["s"]),
                  h.make_node("Mul", ["x", "s"], ["y"])], [X], [Y], [a, b])
    result, out, _ = apply(m, FoldConstants())
    assert result.modified
    assert ops(out) == Counter({"Mul": 1})
    assert result.stats["folded"] == {"Add": 1, "Sqrt": 1}
    assert_same(m, out, FEED)
    check_idempotent(out, FoldConstants)


def test_nothing_to_do_is_not_modified():
    m = model_of([h.make_node("Relu", ["x"], ["r"]), h.make_node("Neg", ["r"], ["y"])], [X], [Y])
    result, _, _ = apply(m, FoldConstants())
    assert result.modified is False
    result, _, _ = apply(m, Simplify())
    assert result.modified is False


def test_constant_nodes_are_lifted_and_folded():
    nodes = [h.make_node("Constant", [], ["c"], value=nh.from_array(np.ones(3, np.float32))),
             h.make_node("Constant", [], ["k"], value_float=2.0),
             h.make_node("Mul", ["c", "k"], ["ck"]), h.make_node("Add", ["x", "ck"], ["y"])]
    m = model_of(nodes, [X], [Y])
    result, out, _ = apply(m, FoldConstants())
    assert ops(out) == Counter({"Add": 1})
    assert result.stats["constants_lifted"] == 2
    assert_same(m, out, FEED)


def test_folded_graph_output_keeps_its_name():
    a = nh.from_array(np.array([1, 2, 3], np.int64), "a")
    m = model_of([h.make_node("Neg", ["a"], ["z"]), h.make_node("Relu", ["x"], ["y"])], [X],
                 [Y, h.make_tensor_value_info("z", T.INT64, [3])], [a])
    _, out, graph = apply(m, FoldConstants())
    assert [o.name for o in out.graph.output] == ["y", "z"]
    assert isinstance(graph.outputs[1], gs.Constant)
    assert_same(m, out, FEED)


def test_integer_division_truncates_like_onnxruntime():
    a = nh.from_array(np.array([-7, 7, -7, 7, 0], np.int64), "a")
    b = nh.from_array(np.array([2, -2, -2, 2, 3], np.int64), "b")
    m = model_of([h.make_node("Div", ["a", "b"], ["z"])], [], [h.make_tensor_value_info("z", T.INT64, [5])],
                 [a, b])
    reference = run(m, {})[0]
    _, _, graph = apply(m, FoldConstants())
    np.testing.assert_array_equal(graph.outputs[0].values, reference)


@pytest.mark.parametrize("op", ["DequantizeLinear", "QuantizeLinear"])
def test_qdq_is_never_folded(op):
    if op == "DequantizeLinear":
        q = nh.from_array(np.array([1, -2, 3], np.int8), "q")
        nodes = [h.make_node(op, ["q", "s", "zp"], ["d"]), h.make_node("Add", ["x", "d"], ["y"])]
        zp = nh.from_array(np.array(0, np.int8), "zp")
    else:
        q = nh.from_array(np.array([1.0, -2.0, 3.0], np.float32), "q")
        nodes = [h.make_node(op, ["q", "s", "zp"], ["qq"]), h.make_node("DequantizeLinear", ["qq", "s", "zp"], ["d"]),
                 h.make_node("Add", ["x", "d"], ["y"])]
        zp = nh.from_array(np.array(0, np.int8), "zp")
    s = nh.from_array(np.array(0.5, np.float32), "s")
    m = model_of(nodes, [X], [Y], [q, s, zp])
    _, out, _ = apply(m, Simplify())
    assert ops(out)["DequantizeLinear"] == 1
    assert_same(m, out, FEED)


def test_random_ops_are_never_folded():
    m = model_of([h.make_node("RandomUniform", [], ["r"], shape=[2, 3], seed=1.0),
                  h.make_node("Add", ["x", "r"], ["y"])], [X], [Y])
    _, out, _ = apply(m, Simplify())
    assert ops(out)["RandomUniform"] == 1


def test_training_dropout_is_never_folded():
    c = nh.from_array(np.ones((2, 3), np.float32), "c")
    ratio = nh.from_array(np.array(0.5, np.float32), "ratio")
    mode = nh.from_array(np.array(True), "mode")
    m = model_of([h.make_node("Dropout", ["c", "ratio", "mode"], ["d"], seed=0),
                  h.make_node("Add", ["x", "d"], ["y"])], [X], [Y], [c, ratio, mode])
    _, out, _ = apply(m, Simplify())
    assert ops(out)["Dropout"] == 1


def test_size_guard_keeps_big_fills_lazy_but_folds_their_small_readers():
    shape = nh.from_array(np.array([512, 1024], np.int64), "shape")
    nodes = [h.make_node("ConstantOfShape", ["shape"], ["big"], value=nh.from_array(np.array([0.5], np.float32))),
             h.make_node("ReduceSum", ["big"], ["s"], keepdims=0), h.make_node("Add", ["x", "s"], ["y"]),
             h.make_node("Mul", ["x2", "big"], ["y2"])]
    m = model_of(nodes, [X, h.make_tensor_value_info("x2", T.FLOAT, [512, 1024])],
                 [Y, h.make_tensor_value_info("y2", T.FLOAT, [512, 1024])], [shape])
    feeds = {**FEED, "x2": np.ones((512, 1024), np.float32)}
    result, out, _ = apply(m, FoldConstants())
    # the 2 MB fill is never stored; ReduceSum of it (4 bytes) is
    assert "ConstantOfShape" in result.stats["refused_for_size"]
    assert result.stats["folded"] == {"ReduceSum": 1}
    assert ops(out) == Counter({"ConstantOfShape": 1, "Add": 1, "Mul": 1})
    assert out.ByteSize() < 10_000
    assert_same(m, out, feeds)
    check_idempotent(out, FoldConstants)
    # asked explicitly: everything folds
    result, out, _ = apply(m, FoldConstants(size_limit_ratio=None))
    assert ops(out) == Counter({"Add": 1, "Mul": 1})
    assert_same(m, out, feeds)


def test_growth_budget_caps_copies_of_shared_weights():
    wt = nh.from_array(np.arange(64 * 64, dtype=np.float32).reshape(64, 64), "wt")  # 16 KB, read 5 times
    nodes = [h.make_node("MatMul", ["x64", "wt"], ["keep"])]
    outs = [h.make_tensor_value_info("keep", T.FLOAT, [64, 64])]
    for i in range(4):
        nodes.append(h.make_node("Transpose", ["wt"], [f"t{i}"], perm=[1, 0]))
        nodes.append(h.make_node("Add", ["x64", f"t{i}"], [f"y{i}"]))
        outs.append(h.make_tensor_value_info(f"y{i}", T.FLOAT, [64, 64]))
    m = model_of(nodes, [h.make_tensor_value_info("x64", T.FLOAT, [64, 64])], outs, [wt])
    result, out, _ = apply(m, FoldConstants(growth_budget=40_000, inline_if=True))
    assert result.stats["folded"].get("Transpose", 0) == 2  # 2 x 16 KB fit in 40 KB
    assert_same(m, out, {"x64": np.ones((64, 64), np.float32)})


def test_shape_of_static_tensor_folds_but_dynamic_dims_stay_symbolic():
    xin = h.make_tensor_value_info("x", T.FLOAT, ["N", 3, 4])
    inits = [nh.from_array(np.array(i, np.int64), f"i{i}") for i in range(3)]
    inits.append(nh.from_array(np.array([0], np.int64), "ax"))
    nodes = [h.make_node("Shape", ["x"], ["s"]),
             h.make_node("Gather", ["s", "i0"], ["n"]), h.make_node("Gather", ["s", "i1"], ["c"]),
             h.make_node("Gather", ["s", "i2"], ["w"]), h.make_node("Mul", ["c", "w"], ["cw"]),
             h.make_node("Unsqueeze", ["n", "ax"], ["n1"]), h.make_node("Unsqueeze", ["cw", "ax"], ["cw1"]),
             h.make_node("Concat", ["n1", "cw1"], ["t"], axis=0), h.make_node("Reshape", ["x", "t"], ["y"])]
    m = model_of(nodes, [xin], [h.make_tensor_value_info("y", T.FLOAT, ["N", 12])], inits)
    result, out, _ = apply(m, FoldConstants())
    assert result.modified
    assert ops(out)["Mul"] == 0  # 3 * 4 is known
    assert ops(out)["Shape"] == 1  # N is not
    for n in (1, 5):  # the batch dim must not be baked in
        feed = {"x": np.random.default_rng(n).standard_normal((n, 3, 4)).astype(np.float32)}
        assert_same(m, out, feed)
    # simplify goes further: the target becomes the constant [0, 12] (0 copies N at run time)
    _, out, graph = apply(m, Simplify())
    assert ops(out) == Counter({"Reshape": 1})
    np.testing.assert_array_equal(graph.nodes[0].inputs[1].values, [0, 12])
    for n in (1, 5):
        feed = {"x": np.random.default_rng(n).standard_normal((n, 3, 4)).astype(np.float32)}
        assert_same(m, out, feed)


def _branch(name: str, op: str, out: str) -> onnx.GraphProto:
    return h.make_graph([h.make_node("Relu", ["x"], ["t1"]), h.make_node(op, ["t1"], [out])], name, [],
                        [h.make_tensor_value_info(out, T.FLOAT, [2, 3])])


def test_if_with_constant_condition_is_inlined():
    inits = [nh.from_array(np.array(True), "cond"), nh.from_array(np.array(False), "cond2")]
    # both Ifs use the name t1 inside their branches (legal: sibling scopes); inlined, they would clash
    nodes = [h.make_node("If", ["cond"], ["y"], then_branch=_branch("a", "Neg", "a_out"),
                         else_branch=_branch("b", "Sigmoid", "b_out")),
             h.make_node("If", ["cond2"], ["y2"], then_branch=_branch("c", "Neg", "c_out"),
                         else_branch=_branch("d", "Exp", "d_out")),
             h.make_node("Add", ["y", "y2"], ["z"])]
    m = model_of(nodes, [X], [Y, h.make_tensor_value_info("z", T.FLOAT, [2, 3])], inits)
    result, out, _ = apply(m, FoldConstants())
    assert result.stats["folded"]["If(inlined)"] == 2
    assert ops(out) == Counter({"Relu": 2, "Neg": 1, "Exp": 1, "Add": 1})
    assert [o.name for o in out.graph.output] == ["y", "z"]
    assert_same(m, out, FEED)
    check_idempotent(out, FoldConstants)


def test_if_branch_forwarding_an_outer_value_keeps_the_output_name():
    cond = nh.from_array(np.array(False), "cond")
    then = h.make_graph([h.make_node("Relu", ["x"], ["t_out"])], "then", [],
                        [h.make_tensor_value_info("t_out", T.FLOAT, [2, 3])])
    other = h.make_graph([h.make_node("Identity", ["x"], ["e_out"])], "else", [],
                         [h.make_tensor_value_info("e_out", T.FLOAT, [2, 3])])
    m = model_of([h.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)], [X], [Y], [cond])
    _, out, _ = apply(m, Simplify())
    assert [o.name for o in out.graph.output] == ["y"]
    assert ops(out) == Counter({"Identity": 1})  # x -> y: a graph input cannot be renamed to an output
    assert_same(m, out, FEED)


def test_folds_inside_subgraphs_with_outer_constants():
    c = nh.from_array(np.array([1.0, 2.0, 3.0], np.float32), "c")
    then = h.make_graph([h.make_node("Neg", ["c"], ["nc"]), h.make_node("Add", ["x", "nc"], ["t_out"])], "then", [],
                        [h.make_tensor_value_info("t_out", T.FLOAT, [2, 3])])
    other = h.make_graph([h.make_node("Exp", ["c"], ["ec"]), h.make_node("Mul", ["x", "ec"], ["e_out"])], "else",
                         [], [h.make_tensor_value_info("e_out", T.FLOAT, [2, 3])])
    cond_in = h.make_tensor_value_info("cond", T.BOOL, [])
    m = model_of([h.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)], [X, cond_in], [Y], [c])
    result, out, graph = apply(m, FoldConstants())
    assert result.stats["folded"] == {"Neg": 1, "Exp": 1}
    body_ops = [n.op for n in graph.nodes[0].attrs["then_branch"].nodes + graph.nodes[0].attrs["else_branch"].nodes]
    assert sorted(body_ops) == ["Add", "Mul"]
    for flag in (True, False):
        assert_same(m, out, {**FEED, "cond": np.array(flag)})


def test_loop_with_constant_inputs_folds():
    body = h.make_graph(
        [h.make_node("Identity", ["cond_in"], ["cond_out"]), h.make_node("Add", ["acc", "one"], ["acc_out"])],
        "body",
        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cond_in", T.BOOL, []),
         h.make_tensor_value_info("acc", T.FLOAT, [1])],
        [h.make_tensor_value_info("cond_out", T.BOOL, []), h.make_tensor_value_info("acc_out", T.FLOAT, [1])])
    inits = [nh.from_array(np.array(4, np.int64), "trip"), nh.from_array(np.array(True), "c0"),
             nh.from_array(np.zeros(1, np.float32), "a0"), nh.from_array(np.ones(1, np.float32), "one")]
    m = model_of([h.make_node("Loop", ["trip", "c0", "a0"], ["acc_final"], body=body),
                  h.make_node("Add", ["x", "acc_final"], ["y"])], [X], [Y], inits)
    _, out, _ = apply(m, FoldConstants())
    assert ops(out) == Counter({"Add": 1})
    assert_same(m, out, FEED)


def test_evaluator_reuses_sessions_per_signature():
    graph = gs.Graph(opset=17)
    ev = Evaluator.for_graph(graph)
    for k in range(3):
        a = gs.Constant(f"a{k}", np.full((2,), k, np.float32))
        node = gs.Node("Exp", inputs=[a], outputs=[gs.Variable(f"o{k}")])
        out = ev.run(node, [np.asarray(a.values)])[0]
        np.testing.assert_allclose(out, np.exp(np.full((2,), k, np.float32)), rtol=1e-6)
    assert ev.stats["ort_sessions"] == 1 and ev.stats["ort"] == 3


def test_folder_reports_refusals():
    graph = gs.import_onnx(model_of([h.make_node("Relu", ["x"], ["y"])], [X], [Y]))
    folder = Folder(graph, FoldPolicy())
    assert folder.run() == 0
    assert folder.try_fold(graph.nodes[0]) == "depends on a non-constant input"
