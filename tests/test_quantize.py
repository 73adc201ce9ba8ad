"""quantize-int8: QDQ placement onnxruntime fuses, calibration methods, accuracy tools, contract.

Structure is asserted on onnxruntime's *optimized* graph (which nodes became QLinearConv, QGemm,
...), never on timings.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fixtures
import onnxopt
from onnxopt.activations import TensorStats, collect_stats
from onnxopt.errors import OnnxOptError, UsageError
from onnxopt.model import to_graph, to_model
from onnxopt.passes.quant_calib import compute_range, qparams_u8, quantize_weight, weight_scales
from onnxopt.passes.quant_equalize import equalize, intermediate_tensors
from onnxopt.passes.quant_speed import kernel_counts
from onnxopt.passes.quantize_int8 import QuantizeInt8
from onnxopt.validate import OrtRunner, compare_outputs, summarize


def _calib(model: onnx.ModelProto, path, n: int = 10, seed: int = 100) -> str:
    feeds = [fixtures.random_feeds(model, seed=seed + i) for i in range(n)]
    np.savez(path, **{k: np.stack([f[k] for f in feeds]) for k in feeds[0]})
    return str(path)


def _quantize(model, tmp_path, **opts):
    """Quantize with calibration data; speed guard and mixed precision off unless asked for."""
    opts.setdefault("speed_guard", False)
    opts.setdefault("min_sqnr", None)
    opts.setdefault("min_cosine", None)
    opts.setdefault("min_top1", 0)  # 0: off (None is the pass's default, 0.99 on class-score outputs)
    calib = _calib(model, tmp_path / "calib.npz", n=opts.pop("calibration_count", 10))
    res = onnxopt.optimize(model, passes=[QuantizeInt8(**opts)], calibration=calib, validate="off")
    return res.model, res.report.passes[0]


def _fidelity(a, b, model, seeds=range(200, 204)):
    feeds = [fixtures.random_feeds(model, seed=s) for s in seeds]
    return summarize(compare_outputs(OrtRunner(a).run_all(feeds), OrtRunner(b).run_all(feeds)))


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


# --------------------------------------------------------------------------- placement


@pytest.mark.parametrize("name,kernels", [
    ("conv_bn_relu", {"QLinearConv": 2}),
    ("residual_add", {"QLinearConv": 6, "QLinearAdd": 2}),
    ("concat_branches", {"QLinearConv": 8, "QLinearConcat": 2}),
    ("depthwise_separable", {"QLinearConv": 7}),
    ("flatten_gemm", {"QLinearConv": 2, "QGemm": 1}),
])
def test_cnn_runs_int8_kernels(name, kernels, tmp_path):
    model = fixtures.get(name)
    q, entry = _quantize(model, tmp_path, min_macs=0)
    onnx.checker.check_model(q, full_check=True)
    kc = kernel_counts(q)
    for op, n in kernels.items():
        assert kc["int8_kernels"].get(op, 0) >= n, (op, kc)
    assert kc["float_compute_total"] == 0, kc
    assert entry.stats["kernels"]["int8_kernels"] == kc["int8_kernels"]
    s = _fidelity(model, q, model)
    assert s["min_sqnr_db"] > 25 and s["min_cosine"] > 0.995, s
    assert [o.name for o in q.graph.output] == [o.name for o in model.graph.output]
    assert [i.name for i in q.graph.input] == [i.name for i in model.graph.input if i.name not in _inits(model)]


def test_weights_int8_per_channel_bias_int32_at_input_times_weight_scale(tmp_path):
    model = fixtures.get("conv_bn_relu")
    q, _ = _quantize(model, tmp_path, min_macs=0)
    inits = _inits(q)
    producers = {o: n for n in q.graph.node for o in n.output}
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2
    for conv in convs:
        x_dq, w_dq, b_dq = (producers[i] for i in conv.input)
        assert all(n.op_type == "DequantizeLinear" for n in (x_dq, w_dq, b_dq))
        w = inits[w_dq.input[0]]
        assert w.dtype == np.int8 and w.ndim == 4  # stored quantized, behind a DQ only
        w_scale = inits[w_dq.input[1]]
        assert w_scale.shape == (w.shape[0],)  # per output channel
        assert helper.get_attribute_value(w_dq.attribute[0]) == 0  # axis 0
        assert np.abs(w).max() <= 127 and np.all(inits[w_dq.input[2]] == 0)  # symmetric
        b = inits[b_dq.input[0]]
        assert b.dtype == np.int32
        x_scale = float(inits[x_dq.input[1]])
        np.testing.assert_allclose(inits[b_dq.input[1]], x_scale * w_scale, rtol=1e-6)
        assert inits[x_dq.input[2]].dtype == np.uint8  # u8 activations
    # no float weights left
    assert not [k for k, v in inits.items() if v.dtype == np.float32 and v.size > 64]


def test_relu_absorbed_into_q_range(tmp_path):
    model = fixtures.get("conv_bn_relu")
    q, entry = _quantize(model, tmp_path, min_macs=0)
    assert entry.stats["emitted"].get("absorbed_Relu", 0) == 2
    assert not [n for n in q.graph.node if n.op_type == "Relu"]
    inits = _inits(q)
    for n in q.graph.node:
        if n.op_type == "QuantizeLinear" and "Relu" in n.input[0]:
            assert int(inits[n.input[2]]) == 0


def test_clip_absorbed_and_mul_folded_into_scale(tmp_path):
    # conv -> Clip(0, 6) -> Mul(0.5) -> MaxPool -> conv: the Clip is absorbed, the Mul becomes a DQ
    # scale, the MaxPool runs on uint8
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), "w2")
    lo = numpy_helper.from_array(np.array(0.0, np.float32), "lo")
    hi = numpy_helper.from_array(np.array(6.0, np.float32), "hi")
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="clip1"),
        helper.make_node("Mul", ["r1", "half"], ["m1"], name="mul1"),
        helper.make_node("MaxPool", ["m1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Conv", ["p1", "w2"], ["y"], pads=[1, 1, 1, 1], name="conv2"),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
                          [w1, w2, lo, hi, half])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    q, entry = _quantize(model, tmp_path, min_macs=0)
    assert entry.stats["emitted"]["scale_folded"] == 1 and entry.stats["emitted"]["absorbed_Clip"] == 1
    assert not [n for n in q.graph.node if n.op_type in ("Clip", "Mul")]
    inits = _inits(q)
    qnode = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0].startswith("r1"))
    s_r1 = float(inits[qnode.input[1]])
    assert 255 * s_r1 <= 6.0 + 1e-5 and int(inits[qnode.input[2]]) == 0
    dq_m1 = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == "m1")
    assert dq_m1.input[0] == qnode.output[0]
    np.testing.assert_allclose(float(inits[dq_m1.input[1]]), 0.5 * s_r1, rtol=1e-6)
    kc = kernel_counts(q)
    assert kc["int8_kernels"]["QLinearConv"] == 2 and kc["int8_kernels"].get("NhwcMaxPool", 0) == 1, kc
    assert _fidelity(model, q, model)["min_sqnr_db"] > 25


def _hardswish_se_model() -> onnx.ModelProto:
    """conv -> HardSwish -> conv -> squeeze-excite (GAP, 1x1 convs, HardSigmoid, Mul) -> conv."""
    rng = np.random.default_rng(1)

    def w(name, *shape, s=0.3):
        return numpy_helper.from_array(rng.normal(0, s, shape).astype(np.float32), name)

    inits = [w("w1", 16, 3, 3, 3), w("w2", 16, 16, 3, 3), w("se1", 4, 16, 1, 1), w("se2", 16, 4, 1, 1),
             w("w3", 16, 16, 1, 1), w("b1", 16, s=0.5)]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("HardSwish", ["c1"], ["h1"], name="hswish1"),
        helper.make_node("Conv", ["h1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="gap"),
        helper.make_node("Conv", ["g", "se1"], ["s1"], name="se_conv1"),
        helper.make_node("Relu", ["s1"], ["s1r"], name="se_relu"),
        helper.make_node("Conv", ["s1r", "se2"], ["s2"], name="se_conv2"),
        helper.make_node("HardSigmoid", ["s2"], ["hs"], alpha=1.0 / 6, beta=0.5, name="hsig"),
        helper.make_node("Mul", ["c2", "hs"], ["m"], name="se_mul"),
        helper.make_node("Conv", ["m", "w3"], ["y"], name="conv3"),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_hardswish_hardsigmoid_and_global_pool_run_int8(tmp_path):
    # HardSwish between two int8 convs becomes a uint8 Clip + QLinearMul (no float island), the
    # global pool of an int8 tensor runs QLinearGlobalAveragePool even though float SE convs read it
    model = _hardswish_se_model()
    q, entry = _quantize(model, tmp_path, min_macs=2**12)
    onnx.checker.check_model(q, full_check=True)
    assert entry.stats["emitted"].get("hardswish_int8") == 1
    assert not [n for n in q.graph.node if n.op_type == "HardSwish"]
    kc = kernel_counts(q)
    assert kc["int8_kernels"].get("QLinearConv", 0) == 3, kc  # the SE convs are tiny: float
    assert kc["int8_kernels"].get("QLinearGlobalAveragePool", 0) == 1, kc
    assert kc["int8_kernels"].get("QLinearMul", 0) >= 2 and kc["other_ops"].get("Clip", 0) == 1, kc
    assert kc["other_ops"].get("HardSwish", 0) == 0, kc
    s = _fidelity(model, q, model)
    assert s["min_sqnr_db"] > 25 and s["min_cosine"] > 0.995, s


def test_hardsigmoid_clip_is_the_output_q_saturation(tmp_path):
    # with every conv int8 the SE HardSigmoid becomes DQ(x, s / 6) -> QLinearAdd(0.5): its clip to
    # [0, 1] is the output Q's saturation, so inputs far beyond the calibrated range still clip
    model = _hardswish_se_model()
    q, _ = _quantize(model, tmp_path, min_macs=0)
    assert not [n for n in q.graph.node if n.op_type in ("HardSwish", "HardSigmoid")]
    hs = OrtRunner(model, extra_outputs=["hs"])
    hq = OrtRunner(q, extra_outputs=["hs"])
    for scale in (1.0, 20.0):
        feed = {"x": (fixtures.random_feeds(model, seed=7)["x"] * scale).astype(np.float32)}
        a, b = hs.run(feed)["hs"], hq.run(feed)["hs"]
        assert b.min() >= 0.0 and b.max() <= 1.0 + 1e-6
        if scale == 1.0:
            assert np.abs(a - b).max() < 0.05, np.abs(a - b).max()


def test_ranges_stop_where_hardswish_readers_stop_caring(tmp_path):
    # a conv output read only by HardSwish (or by the spelled-out x * Clip(x + 3, 0, 6)) needs no
    # levels below -3; one also read by something else keeps its calibrated range
    from onnxopt.passes.quant_graph import consumer_bounds

    three = numpy_helper.from_array(np.array(3.0, np.float32), "three")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    six = numpy_helper.from_array(np.array(6.0, np.float32), "six")
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Neg", ["x"], ["b"]),
        helper.make_node("Neg", ["x"], ["c"]),
        helper.make_node("HardSwish", ["a"], ["ha"]),
        helper.make_node("Add", ["b", "three"], ["b3"]),
        helper.make_node("Clip", ["b3", "zero", "six"], ["bc"]),
        helper.make_node("Mul", ["b", "bc"], ["hb"]),
        helper.make_node("HardSigmoid", ["c"], ["hc"], alpha=0.25, beta=0.5),
        helper.make_node("Relu", ["c"], ["rc"]),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("ha", "hb", "hc", "rc")],
                          [three, zero, six])
    bounds = consumer_bounds(to_graph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])))
    assert bounds["a"] == (-3.0, np.inf)
    assert bounds["b"] == (-3.0, np.inf)
    assert "c" not in bounds and "x" not in bounds

    # and the int8 model is better for it: a conv whose output spans [-30, 20] before a HardSwish
    model = _hardswish_se_model()
    q, entry = _quantize(model, tmp_path, min_macs=0)
    assert entry.stats["calibration"]["ranges_clipped_by_readers"] >= 1
    inits = _inits(q)
    qn = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0].startswith("c1"))
    lo = -float(inits[qn.input[1]]) * int(inits[qn.input[2]])
    assert lo >= -3.0 - 0.05, lo


def test_profile_candidates_keep_slow_int8_kernels_float():
    from onnxopt.passes.quant_select import profile_candidates

    order = ["stem", "dw1", "pw1", "dw2", "pw2", "dw3", "dw4", "pw3"]
    fp32 = dict.fromkeys(order, 10e-6)
    int8 = {"stem": 30e-6, "dw1": 20e-6, "pw1": 4e-6, "dw2": 15e-6, "pw2": 4e-6, "dw3": 14e-6, "dw4": 14e-6,
            "pw3": 4e-6}
    cands = dict(profile_candidates(order, fp32, int8, set()))
    assert cands["kernel-slower"] == {"stem", "dw1", "dw2", "dw3", "dw4"}
    assert cands["kernel-slower-runs"] == {"stem", "dw1", "dw3", "dw4"}  # the lone dw2 would be an island
    assert cands["kernel-slower-stem"] == {"stem", "dw1"}
    assert profile_candidates(order, fp32, dict.fromkeys(order, 5e-6), set()) == []


def test_transformer_block_matmuls_and_gemms(tmp_path):
    model = fixtures.get("attention_block")
    q, entry = _quantize(model, tmp_path, min_macs=0)
    kc = kernel_counts(q)
    int8 = kc["int8_kernels"]
    assert int8.get("QGemm", 0) + int8.get("QLinearMatMul", 0) + int8.get("MatMulIntegerToFloat", 0) >= 6, kc
    assert kc["float_compute"].get("MatMul", 0) == 0 and kc["float_compute"].get("Gemm", 0) == 0, kc
    assert entry.stats["preprocessing"].get("matmul_bias_to_gemm", 0) >= 1
    s = _fidelity(model, q, model)
    assert s["min_cosine"] > 0.99, s


def _skip_ln_model() -> onnx.ModelProto:
    """MatMul+bias -> Reshape to a computed shape -> MatMul+bias -> residual Add -> LayerNormalization,
    dynamic [batch, seq, 32]: onnxruntime cannot tell the Reshape's dims, ONNX data propagation can."""
    rng = np.random.default_rng(3)
    d = 32
    inits = [numpy_helper.from_array(rng.normal(0, 0.2, (d, d)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.1, (d,)).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.2, (d, d)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(0, 0.1, (d,)).astype(np.float32), "b2"),
             numpy_helper.from_array(np.ones(d, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(d, np.float32), "beta"),
             numpy_helper.from_array(np.array([0], np.int64), "s0"),
             numpy_helper.from_array(np.array([2], np.int64), "s2"),
             numpy_helper.from_array(np.array([d], np.int64), "dim")]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
        helper.make_node("Add", ["m1", "b1"], ["h1"], name="bias1"),
        helper.make_node("Shape", ["x"], ["xs"], name="shape"),
        helper.make_node("Slice", ["xs", "s0", "s2"], ["lead"], name="lead"),
        helper.make_node("Concat", ["lead", "dim"], ["target"], axis=0, name="target"),
        helper.make_node("Reshape", ["h1", "target"], ["r1"], name="reshape"),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="mm2"),
        helper.make_node("Add", ["m2", "b2"], ["h2"], name="bias2"),
        helper.make_node("Add", ["h2", "r1"], ["res"], name="residual"),
        helper.make_node("LayerNormalization", ["res", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5, name="ln"),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", d])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", d])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_output_states_no_shapes_the_input_did_not(tmp_path):
    # with every intermediate shape stated, onnxruntime fuses the residual Add + LayerNormalization
    # into SkipLayerNormalization, 3-6x slower on CPU than the two ops (MiniLM: 46 vs ~17 us per layer)
    model = _skip_ln_model()
    assert "SkipLayerNormalization" not in kernel_counts(model)["other_ops"]
    q, _ = _quantize(model, tmp_path, min_macs=0)
    assert not [v.name for v in q.graph.value_info if v.type.tensor_type.HasField("shape")]
    kc = kernel_counts(q)
    assert kc["int8_kernels"].get("QGemm", 0) == 2, kc
    assert "SkipLayerNormalization" not in kc["other_ops"] and kc["other_ops"].get("LayerNormalization") == 1, kc
    assert _fidelity(model, q, model)["min_cosine"] > 0.99
    # shapes the input model states are kept
    annotated = onnx.shape_inference.infer_shapes(model)
    names = {v.name for v in annotated.graph.value_info}
    q2, _ = _quantize(annotated, tmp_path)
    kept = {v.name for v in q2.graph.value_info if v.type.tensor_type.HasField("shape")}
    assert kept and kept <= names


def test_attention_mask_add_stays_float(tmp_path):
    # scores (~N(0,1)) + mask (0 / -10000): quantizing the Add would crush the scores
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.normal(0, 0.2, (16, 16)).astype(np.float32), "w")
    w2 = numpy_helper.from_array(rng.normal(0, 0.2, (16, 16)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["s"], name="mm"),
        helper.make_node("Add", ["s", "mask"], ["sm"], name="mask_add"),
        helper.make_node("Softmax", ["sm"], ["p"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["p", "w2"], ["y"], name="mm2"),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16]),
                                       helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16])], [w, w2])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    feeds = []
    for i in range(8):
        m = np.zeros((1, 1, 16), np.float32)
        m[..., 10 + i % 4:] = -10000.0
        feeds.append({"x": rng.standard_normal((1, 8, 16)).astype(np.float32), "mask": m})
    np.savez(tmp_path / "c.npz", x=np.stack([f["x"] for f in feeds]), mask=np.stack([f["mask"] for f in feeds]))
    res = onnxopt.optimize(model, passes=[QuantizeInt8(speed_guard=False, min_macs=0)],
                           calibration=str(tmp_path / "c.npz"), validate="off")
    q = res.model
    add = next(n for n in q.graph.node if n.name == "mask_add")
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    assert producers.get(add.output[0]) == "Add" and all(producers.get(i) != "DequantizeLinear" for i in add.input[1:])
    out = summarize(compare_outputs(OrtRunner(model).run_all(feeds), OrtRunner(q).run_all(feeds)))
    assert out["min_cosine"] > 0.99, out


def test_embedding_table_stored_uint8(tmp_path):
    rng = np.random.default_rng(5)
    table = numpy_helper.from_array(rng.normal(0, 0.1, (1000, 16)).astype(np.float32), "emb")
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], axis=0, name="lookup"),
             helper.make_node("ReduceMean", ["e"], ["y"], axes=[1], keepdims=0, name="pool")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], [table])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    feeds = [{"ids": rng.integers(0, 1000, (1, 8)).astype(np.int64)} for _ in range(6)]
    np.savez(tmp_path / "c.npz", ids=np.stack([f["ids"] for f in feeds]))
    res = onnxopt.optimize(model, passes=[QuantizeInt8(speed_guard=False, min_sqnr=None, min_cosine=None)],
                           calibration=str(tmp_path / "c.npz"), validate="off")
    q, entry = res.model, res.report.passes[0]
    # a table alone is not worth the pass (no int8 compute): it reports unchanged
    assert not entry.modified
    # with a compute node behind it, the table is stored uint8 and gathered as uint8
    w = numpy_helper.from_array(rng.normal(0, 0.3, (16, 64)).astype(np.float32), "w")
    nodes.append(helper.make_node("MatMul", ["y", "w"], ["z"], name="proj"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 8])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 64])], [table, w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    res = onnxopt.optimize(model, passes=[QuantizeInt8(speed_guard=False, min_sqnr=None, min_cosine=None)],
                           calibration=str(tmp_path / "c.npz"), validate="off")
    q, entry = res.model, res.report.passes[0]
    assert entry.stats["emitted"]["tables_uint8"] == 1
    gather = next(n for n in q.graph.node if n.op_type == "Gather")
    dq = next(n for n in q.graph.node if n.output[0] == gather.input[0])
    assert _inits(q)[dq.input[0]].dtype == np.uint8
    assert q.ByteSize() < 0.4 * model.ByteSize()
    s = summarize(compare_outputs(OrtRunner(model).run_all(feeds), OrtRunner(q).run_all(feeds)))
    assert s["min_cosine"] > 0.99, s


def test_old_opset9_model(tmp_path):
    model = fixtures.get("old_opset")
    assert model.opset_import[0].version == 9
    calib = _calib(model, tmp_path / "c.npz", n=10)
    res = onnxopt.optimize(model, passes=[QuantizeInt8(speed_guard=False, min_macs=0)], calibration=calib)
    assert res.report.ok, res.report.to_text()
    q = res.model
    onnx.checker.check_model(q, full_check=True)
    assert max(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) >= 13
    assert kernel_counts(q)["int8_kernels"].get("QLinearConv", 0) == 2


def test_validated_run_reports_proof(tmp_path):
    model = fixtures.get("residual_add")
    calib = _calib(model, tmp_path / "c.npz", n=12)
    res = onnxopt.optimize(model, passes=[QuantizeInt8(speed_guard=False, min_macs=0)], calibration=calib)
    entry = res.report.passes[0]
    assert entry.status == "applied" and entry.modified
    st = entry.stats
    assert st["synthetic_calibration"] is False
    assert st["kernels"]["int8_kernel_total"] > 0 and "float_compute_total" in st["kernels"]
    assert {"fp32_ms", "int8_ms", "ratio"} <= set(st["latency"])
    assert "held apart" in st["fidelity"]["data"] and st["fidelity"]["min_sqnr_db"] > 20


def test_no_calibration_data_is_loud(tmp_path):
    model = fixtures.get("conv_bn_relu")
    for validate in ("each", "off"):  # with validation off there are no feeds at all: synthetic ones are made
        res = onnxopt.optimize(model, passes=[QuantizeInt8(speed_guard=False, min_macs=0)], samples=4,
                               validate=validate)
        entry = res.report.passes[0]
        assert entry.modified and entry.stats["synthetic_calibration"] is True
        assert "synthetic" in entry.stats["warning"]


def test_nothing_to_quantize_is_unmodified(tmp_path):
    model = fixtures.get("if_subgraph")  # compute only inside If branches: the main graph has none
    res = onnxopt.optimize(model, passes=[QuantizeInt8(speed_guard=False)], validate="off")
    entry = res.report.passes[0]
    assert entry.status == "unchanged" and not entry.modified and "reason" in entry.stats


def test_speed_guard_decision_is_consistent(tmp_path):
    # the decision depends on this machine: assert its logic, never its timings
    model = fixtures.get("conv_bn_relu")
    _q, entry = _quantize(model, tmp_path, speed_guard=True, min_macs=0)
    sg = entry.stats["speed_guard"]
    assert sg["candidates"] and all("ratio_vs_fp32" in c for c in sg["candidates"])
    if entry.modified:
        chosen = next(c for c in sg["candidates"] if c["selection"] == sg["chosen"])
        assert chosen["ratio_vs_fp32"] < 1.0
    else:
        assert "not faster" in entry.stats["reason"]


def test_exclude_keeps_nodes_float(tmp_path):
    model = fixtures.get("residual_add")
    g = to_graph(model)
    first_conv = next(n.name for n in g.nodes if n.op == "Conv")
    q, entry = _quantize(model, tmp_path, exclude=[first_conv], min_macs=0)
    assert first_conv in entry.stats["float_nodes"]
    assert kernel_counts(q)["float_compute"].get("Conv", 0) + kernel_counts(q)["float_compute"].get(
        "FusedConv", 0) == 1
    q2, _ = _quantize(model, tmp_path, exclude=["Conv"], min_macs=0)
    assert kernel_counts(q2)["int8_kernels"].get("QLinearConv", 0) == 0


def test_tiny_layers_stay_float_by_default(tmp_path):
    model = fixtures.get("conv_bn_relu")  # Gemm head 32 -> 10: 320 MACs
    q, entry = _quantize(model, tmp_path)
    assert entry.stats["tiny_kept_float"] >= 1
    assert kernel_counts(q)["int8_kernels"].get("QGemm", 0) == 0


# --------------------------------------------------------------------------- accuracy tools


def test_mixed_precision_meets_budget_layer_by_layer(tmp_path):
    model = fixtures.get("depthwise_separable")
    _, e0 = _quantize(model, tmp_path, min_macs=0, min_sqnr=None, min_cosine=None)
    assert "mixed_precision" not in e0.stats
    base = e0.stats["fidelity"]["min_sqnr_db"] if "fidelity" in e0.stats else None
    q0 = _quantize(model, tmp_path, min_macs=0, min_sqnr=None, min_cosine=None)[0]
    base = _fidelity(model, q0, model)["min_sqnr_db"] if base is None else base
    target = base + 6.0
    _, entry = _quantize(model, tmp_path, min_macs=0, min_sqnr=target, min_cosine=None)
    mp = entry.stats["mixed_precision"]
    assert mp["met"] and mp["layers"], mp
    assert all("solo_sqnr_db" in x for x in mp["layers"])  # layer by layer, with its own damage
    assert set(mp["float_layers"]) == {x["layer"] for x in mp["layers"]}
    assert set(mp["float_layers"]) <= set(entry.stats["float_nodes"])
    assert all("min_sqnr_db" in r for r in mp["search"])
    n_int8 = entry.stats["int8_nodes"]["compute"]
    chosen = [r for r in mp["search"] if r["int8_layers"] == n_int8]
    assert not chosen or chosen[0]["min_sqnr_db"] >= target + 1.0 - 1e-6  # the pass's margin above the budget
    # a budget already met keeps everything int8
    _, e2 = _quantize(model, tmp_path, min_macs=0, min_sqnr=None, min_cosine=0.5)
    assert e2.stats["mixed_precision"]["met"] and e2.stats["mixed_precision"]["float_layers"] == []


def _cle_model() -> onnx.ModelProto:
    """conv 3->8 -> Relu -> depthwise 3x3 -> conv 1x1 8->16, output channels of very different scale."""
    rng = np.random.default_rng(3)
    gains = np.geomspace(0.01, 10.0, 8).astype(np.float32)
    w1 = (rng.normal(0, 0.3, (8, 3, 3, 3)) * gains[:, None, None, None]).astype(np.float32)
    b1 = (rng.normal(0, 0.1, 8) * gains).astype(np.float32)
    w2 = (rng.normal(0, 0.3, (8, 1, 3, 3)) / gains[:, None, None, None]).astype(np.float32)
    w3 = rng.normal(0, 0.3, (16, 8, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (w3, "w3"))]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=8, name="dw"),
        helper.make_node("Conv", ["c2", "w3"], ["y"], name="pw"),
    ]
    g = helper.make_graph(nodes, "cle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_equalization_preserves_the_float_function():
    model = _cle_model()
    g = to_graph(model, infer=True)
    inter = intermediate_tensors(g)
    assert set(inter) == {"r1", "c2"}  # conv -> Relu -> depthwise, depthwise -> pointwise
    feeds = [fixtures.random_feeds(model, seed=s) for s in range(4)]
    st = collect_stats(model, inter, feeds, channel_axis=dict.fromkeys(inter, 1))
    rep = equalize(g, {n: s.channel_abs_mean for n, s in st.items()})
    assert rep["pairs_equalized"] == 2
    after = to_model(g, like=model)
    s = summarize(compare_outputs(OrtRunner(model).run_all(feeds), OrtRunner(after).run_all(feeds)))
    assert s["min_sqnr_db"] > 80, s  # the same function up to float rounding
    st2 = collect_stats(after, ["r1"], feeds, channel_axis={"r1": 1})
    a, b = st["r1"].channel_abs_mean, st2["r1"].channel_abs_mean
    assert b.max() / b.min() < 0.1 * (a.max() / a.min())  # channel ranges brought together


def test_equalization_improves_int8_fidelity(tmp_path):
    model = _cle_model()
    q0, _ = _quantize(model, tmp_path, min_macs=0)
    q1, e1 = _quantize(model, tmp_path, min_macs=0, equalize=True)
    assert e1.stats["equalization"]["pairs_equalized"] == 2
    s0, s1 = _fidelity(model, q0, model), _fidelity(model, q1, model)
    assert s1["min_sqnr_db"] > s0["min_sqnr_db"] + 3.0, (s0, s1)


def test_bias_correction_removes_the_mean_shift(tmp_path):
    model = fixtures.get("depthwise_separable")
    q0, e0 = _quantize(model, tmp_path, min_macs=0, bias_correction=False)
    q1, e1 = _quantize(model, tmp_path, min_macs=0, bias_correction=True)
    assert "bias_correction" not in e0.stats["emitted"]
    bc = e1.stats["emitted"]["bias_correction"]
    assert bc["layers"] == e1.stats["int8_nodes"]["compute"] and bc["mean_abs_shift_removed"] > 0
    # every int8 layer has an int32 bias (bias-less ones got a zero bias to correct)
    inits = _inits(q1)
    producers = {o: n for n in q1.graph.node for o in n.output}
    for conv in (n for n in q1.graph.node if n.op_type == "Conv"):
        assert inits[producers[conv.input[2]].input[0]].dtype == np.int32
    feeds = [fixtures.random_feeds(model, seed=s) for s in range(200, 208)]
    ref = OrtRunner(model).run_all(feeds)

    def mean_err(q):
        out = OrtRunner(q).run_all(feeds)
        return float(np.mean([np.abs((o[k] - r[k]).mean()) for o, r in zip(out, ref) for k in r]))

    assert mean_err(q1) < mean_err(q0)
    s0, s1 = _fidelity(model, q0, model), _fidelity(model, q1, model)
    assert s1["min_sqnr_db"] > s0["min_sqnr_db"] - 1.0, (s0, s1)


def test_bias_correction_on_cones_is_exact(tmp_path, monkeypatch):
    """Each layer measured on the cone that computes it: the same biases as on the whole model."""
    from onnxopt.passes import quant_bias

    model = fixtures.get("residual_add")
    q_cone, _ = _quantize(model, tmp_path, min_macs=0)
    monkeypatch.setattr(quant_bias, "LARGE_MODEL_BYTES", -1)  # every model "large": whole-model runs
    q_full, _ = _quantize(model, tmp_path, min_macs=0)
    a, b = _inits(q_cone), _inits(q_full)
    biases = [k for k, v in a.items() if v.dtype == np.int32]
    assert biases and all(np.array_equal(a[k], b[k]) for k in biases)
    # the cone of an early tensor holds its ancestors only and computes the same values
    first = next(n for n in q_cone.graph.node if n.op_type == "Conv").output[0]
    c = quant_bias.cone(q_cone, [first])
    assert len(c.graph.node) < len(q_cone.graph.node) and len(c.graph.initializer) < len(q_cone.graph.initializer)
    feed = fixtures.random_feeds(model, seed=3)
    got = OrtRunner(c, extra_outputs=[first]).run(feed)[first]
    assert np.array_equal(got, OrtRunner(q_cone, extra_outputs=[first]).run(feed)[first])


# --------------------------------------------------------------------------- calibration


def _stats(x: np.ndarray, chunks: int = 20, bins: int = 4096) -> TensorStats:
    st = TensorStats("t", bins=bins)
    for c in np.array_split(x.astype(np.float32), chunks):
        st.update(c)
    return st


def test_calibration_methods_on_known_distributions():
    rng = np.random.default_rng(0)
    gauss = _stats(rng.standard_normal(400_000))
    relu = _stats(np.maximum(rng.standard_normal(400_000), 0))
    unif = _stats(rng.uniform(0, 1, 400_000))
    heavy = _stats(rng.standard_t(2, 400_000))
    for st in (gauss, relu, unif, heavy):
        mm = compute_range(st, "minmax")
        assert mm == (min(st.min, 0.0), max(st.max, 0.0))
        for m in ("percentile", "entropy", "mse"):
            lo, hi = compute_range(st, m)
            assert mm[0] - 1e-6 <= lo <= 0.0 <= hi <= mm[1] + 1e-6, (m, lo, hi)
    # uniform data: nothing to clip
    for m in ("percentile", "mse"):
        assert compute_range(unif, m)[1] == pytest.approx(1.0, abs=0.01)
    # Relu outputs stay one-sided
    assert all(compute_range(relu, m)[0] == 0.0 for m in ("minmax", "percentile", "entropy", "mse"))
    # the MSE-optimal 8-bit clip of a unit Gaussian is near 4 sigma (not the 4.5+ sigma maximum)
    lo, hi = compute_range(gauss, "mse")
    assert 3.3 < hi < 4.6 and -4.6 < lo < -3.3
    # heavy tails get clipped by every method but minmax
    for m in ("percentile", "entropy", "mse"):
        assert compute_range(heavy, m)[1] < 0.8 * heavy.max


def test_qparams_and_weights():
    p = qparams_u8(0.0, 6.0)
    assert p.zero_point == 0 and p.hi == pytest.approx(6.0)
    p = qparams_u8(-1.0, 3.0)
    assert abs(p.lo + 1.0) < p.scale and p.hi == pytest.approx(3.0, abs=p.scale)
    assert qparams_u8(0.0, 0.0).scale == 1.0
    w = np.random.default_rng(0).normal(0, 1, (4, 3, 3, 3)).astype(np.float32)
    w[2] *= 100  # per-channel scales absorb very different channel ranges
    s = weight_scales(w, 0)
    q = quantize_weight(w, s, 0)
    deq = q * s.reshape(-1, 1, 1, 1)
    rel = np.abs(deq - w).max(axis=(1, 2, 3)) / np.abs(w).max(axis=(1, 2, 3))
    assert np.all(rel <= 0.5 / 127 + 1e-6)
    assert weight_scales(np.zeros((2, 3), np.float32), 0).tolist() == [1.0, 1.0]


def test_calibration_memory_is_bounded_by_bins(tmp_path):
    model = fixtures.get("conv_bn_relu")
    small, big = (onnxopt.optimize(model, passes=[QuantizeInt8(speed_guard=False)],
                                   calibration=_calib(model, tmp_path / f"c{n}.npz", n=n), validate="off")
                  for n in (4, 40))
    a = small.report.passes[0].stats["calibration"]
    b = big.report.passes[0].stats["calibration"]
    assert a["histogram_bytes"] == b["histogram_bytes"] == a["tensors"] * 4096 * 8


# --------------------------------------------------------------------------- errors


def test_bad_options_are_clear():
    with pytest.raises(UsageError, match="method"):
        QuantizeInt8(method="kl")
    with pytest.raises(UsageError, match="percentile"):
        QuantizeInt8(method="percentile", percentile=20)
    with pytest.raises(UsageError, match="bins"):
        QuantizeInt8(bins=1001)
    with pytest.raises(UsageError, match="weight_method"):
        QuantizeInt8(weight_method="max")


def test_unknown_exclude_name_fails_the_pass(tmp_path):
    model = fixtures.get("conv_bn_relu")
    with pytest.raises(OnnxOptError, match="no_such_node"):
        onnxopt.optimize(model, passes=[QuantizeInt8(speed_guard=False, exclude=["no_such_node"])],
                         calibration=_calib(model, tmp_path / "c.npz"), validate="off")


def test_registered_with_cli_name():
    from onnxopt.registry import builtin_passes, make_pass

    assert "quantize-int8" in builtin_passes()
    p = make_pass("quantize-int8", method="mse", per_channel=False)
    assert p.method == "mse" and not p.per_channel


# --------------------------------------------------------------------------- top-1 on class scores


def test_top1_only_on_outputs_that_hold_class_scores():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (6, 5))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    noisy = np.roll(probs, 1, axis=-1)  # every argmax moves
    ref = {"probs": probs.astype(np.float32), "logprobs": np.log(probs).astype(np.float32),
           "pixels": probs.reshape(1, 2, 3, 5).astype(np.float32),  # per-pixel softmax over the last axis
           "logits": logits.astype(np.float32), "boxes": rng.uniform(0, 1, (6, 4)).astype(np.float32),
           "hidden": rng.normal(0, 1, (1, 6, 8)).astype(np.float32), "vad": np.full((1, 1), 0.7, np.float32)}
    out = {"probs": noisy.astype(np.float32), "logprobs": np.log(noisy).astype(np.float32),
           "pixels": noisy.reshape(1, 2, 3, 5).astype(np.float32), "logits": np.roll(logits, 1, -1).astype(np.float32),
           "boxes": np.roll(ref["boxes"], 1, -1), "hidden": np.roll(ref["hidden"], 1, -1), "vad": ref["vad"]}
    m = compare_outputs([ref], [out])
    for name in ("probs", "logprobs", "pixels"):
        assert m[name].top1 is not None and m[name].top1_strict == 0.0, name
    for name in ("logits", "boxes", "hidden", "vad"):  # argmax over these means nothing: no top-1
        assert m[name].top1 is None and m[name].top1_strict is None, name
    assert summarize({"boxes": m["boxes"]}).get("min_top1") is None
    # an output is class scores only if every sample's reference is: one non-distribution sample -> none
    m2 = compare_outputs([ref, {**ref, "probs": ref["probs"] * 2}], [out, out])
    assert m2["probs"].top1 is None


def test_top1_near_ties_agree():
    ref = np.array([[0.31, 0.27, 0.22, 0.20], [0.60, 0.30, 0.05, 0.05], [0.5, 0.5, 0.0, 0.0]], np.float32)
    out = np.array([[0.27, 0.31, 0.22, 0.20], [0.30, 0.60, 0.05, 0.05], [0.49, 0.51, 0.0, 0.0]], np.float32)
    m = compare_outputs([{"y": ref}], [{"y": out}])["y"]
    assert m.top1_strict == pytest.approx(0.0)
    assert m.top1 == pytest.approx(2 / 3)  # rows 0 and 2: the reference does not decide between the two
    s = summarize({"y": m})
    assert s["min_top1"] == pytest.approx(2 / 3) and s["min_top1_strict"] == 0.0


def _classifier(feeds_seeds=range(100, 110)) -> onnx.ModelProto:
    """conv 3->16 -> Relu -> conv 16->16 -> Relu -> GlobalAveragePool -> Gemm 16->4 -> Softmax, whose
    head scores how each sample's pooled features differ from their mean over ``feeds_seeds``: small
    differences, scaled up, so int8 noise in the features moves classes (a sensitive classifier)."""
    rng = np.random.default_rng(7)
    w1 = rng.normal(0, 0.4, (16, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (16, 16, 3, 3)).astype(np.float32)
    wg = rng.normal(0, 1.0, (4, 16)).astype(np.float32)

    def build(wg, bg):
        inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (wg, "wg"), (bg, "bg"),
                                                              (np.array([1, 16], np.int64), "shape"))]
        nodes = [
            helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
            helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
            helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
            helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
            helper.make_node("Reshape", ["p", "shape"], ["f"], name="flat"),
            helper.make_node("Gemm", ["f", "wg", "bg"], ["logits"], transB=1, name="head"),
            helper.make_node("Softmax", ["logits"], ["prob"], axis=-1, name="softmax"),
        ]
        g = helper.make_graph(nodes, "cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 48, 48])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 4])], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    plain = build(wg, np.zeros(4, np.float32))
    feeds = [fixtures.random_feeds(plain, seed=s) for s in feeds_seeds]
    f = np.concatenate([o["f"] for o in OrtRunner(plain, extra_outputs=["f"]).run_all(feeds)])
    mean = f.mean(0)
    scale = np.float32(10.0 / ((f - mean) @ wg.T).std())
    return build(wg * scale, (-(wg * scale) @ mean).astype(np.float32))


def test_mixed_precision_keeps_classifier_top1(tmp_path):
    model = _classifier(range(100, 124))
    feeds = [fixtures.random_feeds(model, seed=100 + i) for i in range(24)]  # the calibration samples
    ref = OrtRunner(model).run_all(feeds)
    q0, e0 = _quantize(model, tmp_path, min_macs=0, calibration_count=24)  # top-1 criterion off
    assert "mixed_precision" not in e0.stats
    base = summarize(compare_outputs(ref, OrtRunner(q0).run_all(feeds)))
    assert base["min_top1"] < 0.99  # all int8 flips classes on this sharp head
    q, entry = _quantize(model, tmp_path, min_macs=0, min_top1=None, calibration_count=24)  # the default: 0.99
    mp = entry.stats["mixed_precision"]
    assert mp["budget"]["min_top1"] == 0.99 and mp["met"] and mp["float_layers"]
    assert all("min_top1" in r for r in mp["search"])
    assert summarize(compare_outputs(ref, OrtRunner(q).run_all(feeds)))["min_top1"] >= 0.99


# --------------------------------------------------------------------------- PRelu nets (MTCNN)


def _prelu_net() -> onnx.ModelProto:
    """conv 3->16 -> PRelu (per-channel slope) -> conv 16->16 -> PRelu -> conv 16->8, MTCNN-style."""
    rng = np.random.default_rng(11)
    arrays = {"w1": rng.normal(0, 0.3, (16, 3, 3, 3)), "b1": rng.normal(0, 0.1, 16),
              "a1": rng.uniform(0.05, 0.4, (16, 1, 1)), "w2": rng.normal(0, 0.2, (16, 16, 3, 3)),
              "b2": rng.normal(0, 0.1, 16), "a2": rng.uniform(0.05, 0.4, (16, 1, 1)),
              "w3": rng.normal(0, 0.2, (8, 16, 1, 1))}
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("PRelu", ["c1", "a1"], ["p1"], name="prelu1"),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("PRelu", ["c2", "a2"], ["p2"], name="prelu2"),
        helper.make_node("Conv", ["p2", "w3"], ["y"], name="conv3"),
    ]
    g = helper.make_graph(nodes, "prelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 24, 24])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 24, 24])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_prelu_respelled_so_convs_run_int8(tmp_path):
    model = _prelu_net()
    q, entry = _quantize(model, tmp_path, min_macs=0)
    assert entry.stats["preprocessing"]["prelu_respelled"] == 2
    assert not [n for n in q.graph.node if n.op_type == "PRelu"]
    assert kernel_counts(q)["int8_kernels"].get("QLinearConv", 0) == 3
    assert _fidelity(model, q, model)["min_sqnr_db"] > 20


def test_prepared_float_model_wins_when_int8_does_not(tmp_path, monkeypatch):
    """When the speed guard finds the float model with step 1's exact rewrites fastest, that is the output."""
    from onnxopt.passes import quant_select, quantize_int8

    def fake_choose(fp32, cands, feeds, **kw):
        for i, c in enumerate(cands):
            c.seconds = 1.0 + i
        pf = next(c for c in cands if c.label == quant_select.PREPARED_FLOAT)
        pf.seconds = 0.5
        return quant_select.SpeedDecision(pf.label, pf.float_nodes, 1.0, [])

    monkeypatch.setattr(quantize_int8, "choose_fastest", fake_choose)
    model = _prelu_net()
    q, entry = _quantize(model, tmp_path, min_macs=0, speed_guard=True)
    assert entry.modified and "no int8" in entry.stats["reason"] and entry.stats["latency"]["ratio"] == 0.5
    ops = {n.op_type for n in q.graph.node}
    assert "PRelu" not in ops and not ops & {"QuantizeLinear", "DequantizeLinear"}
    # the input states no intermediate shapes, so neither does this output (see drop_new_shapes)
    assert not [v.name for v in q.graph.value_info if v.type.tensor_type.HasField("shape")]
    f = _fidelity(model, q, model)
    assert f["max_abs"] < 1e-5


def test_matmul_bias_to_gemm_shares_shape_nodes():
    # dynamic [batch, seq, 32]: three square projections of one input (Q/K/V) and an MLP 32 -> 64 -> 32.
    # Each Gemm needs its input flattened and its output reshaped back to the runtime shape; nodes
    # are shared where the values are the same (onnxruntime runs every one of them, ~3 us each)
    from onnxopt.passes.quant_prep import prepare

    rng = np.random.default_rng(5)
    d, f = 32, 64
    inits, nodes = [], []

    def linear(x, k, n, name):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.2, (k, n)).astype(np.float32), f"{name}_w"))
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, (n,)).astype(np.float32), f"{name}_b"))
        nodes.append(helper.make_node("MatMul", [x, f"{name}_w"], [f"{name}_m"], name=f"{name}_mm"))
        nodes.append(helper.make_node("Add", [f"{name}_m", f"{name}_b"], [name], name=f"{name}_add"))
        return name

    q, k, v = (linear("x", d, d, n) for n in ("q", "k", "v"))
    nodes.append(helper.make_node("Add", [q, k], ["qk"], name="qk_add"))
    nodes.append(helper.make_node("Add", ["qk", v], ["h"], name="h_add"))
    nodes.append(helper.make_node("Relu", [linear("h", d, f, "up")], ["r"], name="relu"))
    linear("r", f, d, "y")
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", d])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", d])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    graph = to_graph(model, infer=True)
    assert prepare(graph)["matmul_bias_to_gemm"] == 5
    out = to_model(graph, like=model)
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("Gemm") == 5 and "MatMul" not in ops and "Slice" not in ops
    # flatten: x once (Q, K, V), h, r; back: Q, K, V, up, y. Shape: x (square), h's leading dims
    # (shared by r, whose leading dims are the same symbols); Concat: widths 64 and 32
    assert ops.count("Reshape") == 3 + 5 and ops.count("Shape") == 2 and ops.count("Concat") == 2, ops
    for shape in ([1, 7, d], [3, 5, d]):
        feed = {"x": rng.standard_normal(shape).astype(np.float32)}
        ref, got = OrtRunner(model).run(feed)["y"], OrtRunner(out).run(feed)["y"]
        assert got.shape == ref.shape == tuple(shape)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_prefix_tie_goes_to_fewer_float_macs():
    from onnxopt.passes.quantize_int8 import fastest_selection, float_macs

    # [mixed-precision, prefix] seconds and float MACs (1 = the prefix): faster by more than 3% wins ...
    assert fastest_selection([1.0, 0.9], [10.0, 1e6]) == 1 and fastest_selection([0.9, 1.0], [1e6, 10.0]) == 0
    # ... a tie within 3% (what 15 rounds on a shared machine give) keeps less compute float
    assert fastest_selection([1.0, 0.995], [10.0, 1e6]) == 0 and fastest_selection([0.995, 1.0], [1e6, 10.0]) == 1
    assert float_macs({"a", "table"}, {"a": 5.0, "b": 7.0}) == 5.0


def test_selection_timing_helpers():
    from onnxopt.passes.quantize_int8 import (
        MAX_TIMING_ROUNDS,
        MIN_TIMING_ROUNDS,
        fastest_selection,
        timing_rounds,
    )

    # the fastest wins by more than 3%; within 3% it is a tie that goes to fewer float MACs
    assert fastest_selection([1.0, 0.9, 0.95], [0.0, 5.0, 1.0]) == 1
    assert fastest_selection([1.0, 0.99, 0.995], [3.0, 5.0, 1.0]) == 2
    assert fastest_selection([0.5], [7.0]) == 0
    # a 0.15 ms model gets many rounds (15 would be 5 ms of timing), a 100 ms model the minimum
    assert timing_rounds(0.15e-3, 2) == MAX_TIMING_ROUNDS
    assert timing_rounds(0.1, 2) == MIN_TIMING_ROUNDS and timing_rounds(None, 2) == MIN_TIMING_ROUNDS


def test_budget_search_also_starts_from_all_when_it_tied(tmp_path, monkeypatch):
    """The speed guard's pick keeps the depthwise convs float but timed within 10% of "all": the
    float-prefix search for the budget then also runs from "all", and the fastest selection that meets
    the budget is kept (equal times here: the one keeping the fewest MACs float)."""
    from onnxopt.passes import quant_select, quantize_int8

    def fake_choose(fp32, cands, feeds, **kw):
        for c in cands:
            c.seconds = {"all": 0.50, "no-depthwise": 0.49}.get(c.label, 0.8)
        pick = next(c for c in cands if c.label == "no-depthwise")
        return quant_select.SpeedDecision(pick.label, pick.float_nodes, 1.0, [])

    def fake_latency(models, feeds, **kw):  # every int8 selection alike, all of them faster than float
        return [0.5 if any(n.op_type == "QuantizeLinear" for n in m.graph.node) else 1.0 for m in models]

    monkeypatch.setattr(quantize_int8, "choose_fastest", fake_choose)
    monkeypatch.setattr(quantize_int8, "interleaved_latency", fake_latency)
    model = fixtures.get("depthwise_separable")
    q0, _ = _quantize(model, tmp_path, min_macs=0)
    target = _fidelity(model, q0, model)["min_sqnr_db"] + 6.0
    _q, entry = _quantize(model, tmp_path, min_macs=0, speed_guard=True, min_sqnr=target, calibration_count=16)
    assert entry.stats["speed_guard"]["chosen"] == "no-depthwise"
    mp = entry.stats["mixed_precision"]
    assert mp["prefix_from_all"]["search"], mp  # searched from "all" as well
    assert mp["prefix_from_all"]["search"][0]["float_prefix"] == 0
    sel = mp.get("selections")
    if sel:  # more than one selection met the budget: the kept one is the tie's fewest float MACs
        kept = min(sel, key=lambda s: s["float_macs"])
        assert mp.get("chosen", "mixed_precision") == kept["selection"]
    dw = {n.name for n in to_graph(model).nodes if n.op == "Conv" and int(n.attrs.get("group", 1)) > 1}
    if mp.get("chosen") == "prefix_from_all":
        assert not dw <= set(entry.stats["float_nodes"])  # not every depthwise conv stayed float


def test_hardswish_runs_on_its_input_codes(tmp_path):
    # the HardSwish input sits on a grid with zero_point * scale == 3, so x + 3 = scale * q: the
    # HardSigmoid factor is a uint8 Clip(q, 0, 2 * zero_point) read at scale / 6 - exact, and no
    # QLinearAdd re-quantizes x / 6 + 0.5 onto a [0, 1] grid of its own
    model = _hardswish_se_model()
    q, entry = _quantize(model, tmp_path, min_macs=2**12)
    assert entry.stats["emitted"].get("hardswish_codes_clip") == 1
    inits = _inits(q)
    qn = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0].startswith("c1"))
    s1, k = float(inits[qn.input[1]]), int(inits[qn.input[2]])
    assert abs(s1 * k - 3.0) < 1e-5, (s1, k)
    clip = next(n for n in q.graph.node if n.op_type == "Clip")
    assert clip.input[0] == qn.output[0] and int(inits[clip.input[2]]) == min(2 * k, 255)
    assert inits[clip.input[1]].dtype == np.uint8
    kc = kernel_counts(q)
    assert kc["int8_kernels"].get("QLinearAdd", 0) == 0 and kc["int8_kernels"].get("QLinearMul", 0) >= 1, kc
    # the int8 HardSwish is HardSwish of the quantized input, up to the output's rounding
    feed = fixtures.random_feeds(model, seed=9)
    c1 = OrtRunner(q, extra_outputs=["c1"]).run(feed)["c1"]  # the DQ of conv1's uint8 output
    qo = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0].startswith("h1"))
    s_h = float(inits[qo.input[1]])
    h1 = OrtRunner(q, extra_outputs=["h1"]).run(feed)["h1"]
    exact = c1 * np.clip(c1 + 3.0, 0.0, 6.0) / 6.0
    assert np.abs(h1 - exact).max() <= 0.5 * s_h + 1e-5
    assert _fidelity(model, q, model)["min_sqnr_db"] > 25
