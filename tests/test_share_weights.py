"""share-weights: k-means weight sharing (uint8 indices + codebook, decoded by onnxruntime at load)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh
from passkit import apply, model_of, ops, run

import onnxopt
from onnxopt.cli import main
from onnxopt.errors import UsageError
from onnxopt.passes.share_weights import ShareWeights, kmeans_1d


def _sse(values: np.ndarray, approx: np.ndarray) -> float:
    return float(((values.astype(np.float64) - approx) ** 2).sum())


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 400), elements=st.floats(-50, 50, width=32)), st.integers(1, 6))
def test_kmeans_is_a_converged_lloyd_solution(values, bits):
    codebook, indices = kmeans_1d(values, 2 ** bits)
    assert indices.dtype == np.uint8 and indices.shape == values.shape
    assert 1 <= len(codebook) <= 2 ** bits and np.all(np.diff(codebook) > 0)
    approx = codebook[indices].astype(np.float64)
    # every value sits with its nearest centroid (up to ties), every centroid is its members' mean
    dist = np.abs(values[:, None].astype(np.float64) - codebook[None, :].astype(np.float64))
    assert np.all(np.abs(values - approx) <= dist.min(axis=1) + 1e-4)
    for j in range(len(codebook)):
        members = values[indices == j].astype(np.float64)
        assert members.size > 0
        assert abs(members.mean() - float(codebook[j])) <= 1e-4 * max(1.0, abs(members.mean()))


def test_kmeans_beats_the_uniform_grid_it_starts_from():
    w = np.random.default_rng(0).standard_normal(20000).astype(np.float32)
    codebook, indices = kmeans_1d(w, 16)
    grid = np.linspace(w.min(), w.max(), 16)
    nearest = grid[np.abs(w[:, None] - grid[None, :]).argmin(axis=1)]
    assert _sse(w, codebook[indices]) < 0.8 * _sse(w, nearest)


def test_uniform_baseline_rounds_to_the_nearest_level():
    from onnxopt.passes.share_weights import uniform_1d

    w = np.float32([-1.0, -0.4, 0.0, 0.1, 0.74, 1.0])
    codebook, indices = uniform_1d(w, 5)  # levels -1, -0.5, 0, 0.5, 1
    np.testing.assert_allclose(codebook[indices], [-1.0, -0.5, 0.0, 0.0, 0.5, 1.0])
    assert uniform_1d(np.full(7, 2.5, np.float32), 16)[0].tolist() == [2.5]


def test_few_distinct_values_are_kept_exactly():
    w = np.random.default_rng(1).choice(np.float32([-0.5, 0.25, 1.5, 3.0]), size=(64, 8))
    codebook, indices = kmeans_1d(w, 8)
    np.testing.assert_array_equal(codebook[indices], w)


def _conv_gemm_model(weights: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    w = weights or {}
    conv_w = w.get("conv_w", rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3)
    fc_w = w.get("fc_w", rng.standard_normal((16 * 8 * 8, 10)).astype(np.float32) * 0.05)
    bias = rng.standard_normal(16).astype(np.float32)
    shift = rng.standard_normal((1, 10)).astype(np.float32)
    nodes = [
        h.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c"], ["r"]),
        h.make_node("Flatten", ["r"], ["f"]),
        h.make_node("MatMul", ["f", "fc_w"], ["m"]),
        h.make_node("Add", ["m", "shift"], ["y"]),
    ]
    inits = [nh.from_array(conv_w, "conv_w"), nh.from_array(bias, "conv_b"), nh.from_array(fc_w, "fc_w"),
             nh.from_array(shift, "shift")]
    return model_of(nodes, [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                    [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)


def _feed() -> dict:
    return {"x": np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)}


def test_pass_stores_indices_and_codebook_and_keeps_answers_close():
    model = _conv_gemm_model()
    result, out, _ = apply(model, ShareWeights(bits=6, min_elements=100))
    assert result.modified and set(result.stats["tensors"]) == {"conv_w", "fc_w"}
    assert ops(out)["Gather"] == 2 and ops(out)["Cast"] == 2 and ops(out)["Mul"] == 2 and ops(out)["Add"] == 3
    inits = {t.name: nh.to_array(t) for t in out.graph.initializer}
    assert inits["conv_w_scale"].shape == (16, 1, 1, 1) and inits["fc_w_offset"].shape == (1, 10)
    assert inits["fc_w_shared_indices"].dtype == np.uint8 and inits["fc_w_shared_indices"].shape == (1024, 10)
    assert len(inits["fc_w_codebook"]) <= 64 and inits["fc_w_codebook"].dtype == np.float32
    assert "conv_b" in inits and "shift" in inits and "fc_w" not in inits  # biases untouched
    ref, got = run(model, _feed())[0], run(out, _feed())[0]
    cos = float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got))
    assert cos > 0.999 and not np.array_equal(ref, got)


def test_weights_with_few_values_give_identical_answers():
    rng = np.random.default_rng(4)
    levels = np.float32([-0.2, -0.05, 0.0, 0.1, 0.3])
    model = _conv_gemm_model({"conv_w": rng.choice(levels, (16, 3, 3, 3)), "fc_w": rng.choice(levels, (1024, 10))})
    result, out, _ = apply(model, ShareWeights(bits=3, min_elements=100, per_channel=False))
    assert result.modified and all(s["sqnr_db"] == float("inf") for s in result.stats["tensors"].values())
    np.testing.assert_array_equal(run(model, _feed())[0], run(out, _feed())[0])


def test_per_channel_scales_serve_filters_of_very_different_size():
    """A BatchNorm folded into a Conv scales each filter by its own factor: one codebook over the raw
    values wastes its levels on the large filters; divided by their scales, every filter is coded well."""
    rng = np.random.default_rng(7)
    conv_w = rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * np.logspace(-3, 1, 16, dtype=np.float32
                                                                                  )[:, None, None, None]
    model = _conv_gemm_model({"conv_w": conv_w})
    worst = {}
    for per_channel in (False, True):
        result, _, _ = apply(model, ShareWeights(bits=4, min_elements=100, per_channel=per_channel))
        worst[per_channel] = result.stats["tensors"]["conv_w"]["sqnr_db"]
    assert worst[True] > worst[False] + 3


def test_channel_fit_removes_each_channels_mean_error_and_never_adds_error():
    from onnxopt.passes.share_weights import channel_fit

    rng = np.random.default_rng(8)
    w = rng.standard_normal((6, 40)).astype(np.float32) * np.float32([[0.01], [0.1], [1], [3], [10], [0.5]])
    shared = np.round(w / np.abs(w).max(axis=1, keepdims=True) * 3) / 3  # coarse, biased per channel
    scale, offset = channel_fit(w, shared, axis=0)
    fitted = shared * scale + offset
    np.testing.assert_allclose((fitted - w).mean(axis=1), 0, atol=1e-5)
    plain = shared * np.abs(w).max(axis=1, keepdims=True)
    assert np.all(((fitted - w) ** 2).sum(axis=1) <= ((plain - w) ** 2).sum(axis=1) * (1 + 1e-5))


def test_auto_keeps_the_variant_closest_to_the_model_on_validation_feeds():
    from onnxopt.context import PassContext
    from onnxopt.model import to_graph, to_model

    model = _conv_gemm_model()
    feeds = [{"x": np.random.default_rng(i).standard_normal((1, 3, 8, 8)).astype(np.float32)} for i in range(4)]
    graph = to_graph(model)
    result = ShareWeights(bits=3, min_elements=100).run(graph, PassContext(model=model, validation_feeds=feeds))
    scores = result.stats["variants"]
    assert set(scores) == {"kmeans+offset", "kmeans", "uniform+offset", "uniform"}
    best = max(scores, key=lambda k: scores[k]["min_sqnr_db"])
    assert result.stats["variant"] == best
    out = to_model(graph, like=model)
    ref = [run(model, f)[0] for f in feeds]
    got = [run(out, f)[0] for f in feeds]
    noise = sum(float(((r - g) ** 2).sum()) for r, g in zip(ref, got))
    signal = sum(float((r ** 2).sum()) for r in ref)
    assert abs(10 * np.log10(signal / noise) - scores[best]["min_sqnr_db"]) < 0.05  # the graph holds that variant


def test_small_tensors_and_non_weight_reads_are_left_alone():
    rng = np.random.default_rng(5)
    big = rng.standard_normal((64, 64)).astype(np.float32)
    nodes = [h.make_node("MatMul", ["x", "w"], ["m"]), h.make_node("Add", ["m", "w"], ["y"])]  # w also added
    model = model_of(nodes, [h.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])], [nh.from_array(big, "w")])
    result, _, _ = apply(model, ShareWeights(min_elements=16))
    assert not result.modified and "no float weight" in result.stats["reason"]
    result, _, _ = apply(_conv_gemm_model(), ShareWeights(min_elements=10**6))
    assert not result.modified


def test_a_weight_shared_by_two_consumers_is_decoded_once():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((32, 32)).astype(np.float32)
    nodes = [h.make_node("MatMul", ["x", "w"], ["a"]), h.make_node("MatMul", ["a", "w"], ["y"])]
    model = model_of(nodes, [h.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, [2, 32])], [nh.from_array(w, "w")])
    _, out, _ = apply(model, ShareWeights(bits=8, min_elements=16))
    assert ops(out)["Gather"] == 1
    assert [n.input[1] for n in out.graph.node if n.op_type == "MatMul"] == ["w", "w"]
    x = {"x": rng.standard_normal((2, 32)).astype(np.float32)}
    ref, got = run(model, x)[0], run(out, x)[0]
    assert float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got)) > 0.999


@pytest.mark.parametrize("kwargs, text", [({"bits": 0}, "bits must be an integer in 1..8"),
                                          ({"bits": 9}, "bits must be"), ({"min_elements": 0}, "min_elements"),
                                          ({"method": "median"}, "method must be one of auto, kmeans, uniform")])
def test_bad_options_are_usage_errors(kwargs, text):
    with pytest.raises(UsageError, match=text):
        ShareWeights(**kwargs)


def test_cli_share_then_pack_is_smaller_and_unpacks_bit_exactly(tmp_path, capsys):
    from fixtures.make_demo import DEMO_CALIB, DEMO_MODEL

    plain, shared = tmp_path / "plain.onnxpack", tmp_path / "shared.onnxpack"
    assert main([str(DEMO_MODEL), str(plain), "--pack", "-q"]) == 0
    assert main([str(DEMO_MODEL), str(shared), "--pack", "--share-weights", "4", "-q",
                 "--calibration", str(DEMO_CALIB)]) == 0
    assert shared.stat().st_size < 0.4 * plain.stat().st_size
    back = tmp_path / "back.onnx"
    assert main(["unpack", str(shared), str(back), "-q"]) == 0
    model = onnxopt.load(back)
    assert any(n.op_type == "Gather" for n in model.graph.node)
    data = np.load(DEMO_CALIB)
    feed = {k: data[k][0] for k in data.files}
    ref = run(onnxopt.load(DEMO_MODEL), feed)[0]
    got = run(model, feed)[0]
    assert float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got)) > 0.99


def test_budget_miss_fails_the_run_with_exit_1(tmp_path, capsys):
    from fixtures.make_demo import DEMO_MODEL

    out = tmp_path / "o.onnx"
    assert main([str(DEMO_MODEL), str(out), "--share-weights", "1", "--min-sqnr", "60", "-q"]) == 1
    err = capsys.readouterr().err
    assert "share-weights" in err and "--keep-going" in err and not out.exists()


def _loud_channel_model(group: int = 1) -> tuple[onnx.ModelProto, list[dict]]:
    """Conv whose 8 input channels differ 10^4 in size (an STFT magnitude's low bins, a feature map's
    few loud channels), trained-like: the loud channels' weights are the small ones; then a grouped
    Conv and a MatMul; feeds drawn that way."""
    rng = np.random.default_rng(11)
    loud = np.float32([100, 30, 1, 0.3, 0.1, 0.03, 0.01, 0.01])[None, :, None, None]
    conv_w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32) / np.sqrt(loud)
    grouped_w = rng.standard_normal((8, 16 // group, 1, 1)).astype(np.float32)
    fc_w = rng.standard_normal((8 * 6 * 6, 4)).astype(np.float32) * 0.05
    nodes = [h.make_node("Conv", ["x", "conv_w"], ["c"]),
             h.make_node("Conv", ["c", "grouped_w"], ["g"], group=group),
             h.make_node("Flatten", ["g"], ["f"]),
             h.make_node("MatMul", ["f", "fc_w"], ["y"])]
    inits = [nh.from_array(conv_w, "conv_w"), nh.from_array(grouped_w, "grouped_w"), nh.from_array(fc_w, "fc_w")]
    model = model_of(nodes, [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    feeds = [{"x": rng.standard_normal((1, 8, 8, 8)).astype(np.float32) * loud} for _ in range(6)]
    return model, feeds


def test_input_importance_is_the_mean_square_of_the_input_channel_each_weight_meets():
    from onnxopt.model import to_graph
    from onnxopt.passes.share_weights import IMPORTANCE_FLOOR, input_importance
    from onnxopt.validate import OrtRunner

    model, feeds = _loud_channel_model(group=2)
    graph = to_graph(model)
    targets = ShareWeights(min_elements=16)._candidates(graph)
    assert {t.name for t, _ in targets} == {"conv_w", "grouped_w", "fc_w"}
    imp = input_importance(model, targets, feeds)
    runner = OrtRunner(model, extra_outputs=["c", "f"])  # reference mean squares, from the activations
    acts = [runner.run(f) for f in feeds]
    runner.close()

    def expect(ms):
        ms = ms / ms.mean()
        return np.maximum(ms, IMPORTANCE_FLOOR)

    ms_x = np.mean([(f["x"].astype(np.float64) ** 2).mean(axis=(0, 2, 3)) for f in feeds], axis=0)
    assert imp["conv_w"].shape == (1, 8, 1, 1)
    np.testing.assert_allclose(imp["conv_w"].reshape(-1), expect(ms_x), rtol=1e-5)
    ms_c = np.mean([(a["c"].astype(np.float64) ** 2).mean(axis=(0, 2, 3)) for a in acts], axis=0)
    # group 2: output channels 0-3 meet input channels 0-7, output channels 4-7 meet 8-15
    want = np.stack([ms_c[:8]] * 4 + [ms_c[8:]] * 4)
    np.testing.assert_allclose(imp["grouped_w"].reshape(8, 8), expect(want), rtol=1e-5)
    ms_f = np.mean([(a["f"].astype(np.float64) ** 2).mean(axis=0) for a in acts], axis=0)
    assert imp["fc_w"].shape == (288, 1)
    np.testing.assert_allclose(imp["fc_w"].reshape(-1), expect(ms_f), rtol=1e-5)


@pytest.mark.parametrize("method", ["kmeans", "uniform"])
def test_activation_aware_sharing_spends_precision_where_the_input_is_loud(method):
    """Channels 10^4 apart in input mean square: weighted by it, the codebook and the per-channel fit
    minimise the output error instead of the weight error (here at 4 bits: kmeans -10.0 -> 2.8 dB,
    uniform -21.3 -> 4.1 dB; PP-OCR rec at 8 bits: 15.1 -> 20.8 dB)."""
    from onnxopt.context import PassContext
    from onnxopt.model import to_graph, to_model

    model, feeds = _loud_channel_model()
    calib, held_out = feeds[:3], feeds[3:]
    ref = [run(model, f)[0] for f in held_out]
    sqnr, shapes = {}, {}
    for aware in (False, True):
        graph = to_graph(model)
        result = ShareWeights(bits=4, min_elements=16, method=method, activation_aware=aware).run(
            graph, PassContext(model=model, validation_feeds=calib))
        assert result.stats["activation_aware"] == (3 if aware else 0)
        out = to_model(graph, like=model)
        shapes[aware] = sorted((t.name, tuple(t.dims)) for t in out.graph.initializer)
        got = [run(out, f)[0] for f in held_out]
        noise = sum(float(((r - g) ** 2).sum()) for r, g in zip(ref, got))
        sqnr[aware] = 10 * np.log10(sum(float((r ** 2).sum()) for r in ref) / noise)
    assert shapes[True] == shapes[False]  # same storage: indices, codebook, scale, offset
    assert sqnr[True] > sqnr[False] + 6, sqnr
