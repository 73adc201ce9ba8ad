"""Validation feeds: .npz contract, synthetic data, and probing dynamic dims until the model runs."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from conftest import make_mlp, run_ort
from onnx import TensorProto, helper, numpy_helper

import onnxopt
from onnxopt.data import NpzData, input_specs, parse_input_shapes
from onnxopt.errors import BadDataError, UsageError


def detector_like(size: int = 32) -> onnx.ModelProto:
    """Input [N,3,H,W] that only runs when H * W == size * size (a fixed-size anchor reshape)."""
    target = numpy_helper.from_array(np.array([1, 3, size * size], np.int64), "target")
    w = numpy_helper.from_array(np.full((4, 3, 3, 3), 0.1, np.float32), "w")
    nodes = [
        helper.make_node("Reshape", ["img", "target"], ["flat0"]),
        helper.make_node("Identity", ["flat0"], ["flat"]),
        helper.make_node("Conv", ["img", "w"], ["boxes"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "det", [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", 4, "height", "width"]),
         helper.make_tensor_value_info("flat", TensorProto.FLOAT, [1, 3, size * size])], [target, w])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_dynamic_hw_detector_needs_no_flags():
    res = onnxopt.optimize(detector_like(32))
    assert res.report.validation_shapes == {"img": [1, 3, 32, 32]}
    # dims stay dynamic in the output: nothing was baked in
    dims = res.model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]


def test_input_shape_flag_fixes_the_shape():
    res = onnxopt.optimize(detector_like(16), input_shapes={"img": (1, 3, 16, 16)})
    dims = [d.dim_value for d in res.model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 16, 16]


def test_paddle_minus_one_dims_are_dynamic():
    """Paddle exports write dim_value -1 for a dynamic dim: it is probed and may be fixed by --input-shape."""
    m = detector_like(16)
    for d, v in zip(m.graph.input[0].type.tensor_type.shape.dim, (-1, 3, -1, -1)):
        d.dim_value = v
    assert input_specs(m)[0].shape == (None, 3, None, None)
    res = onnxopt.optimize(m, input_shapes={"img": (1, 3, 16, 16)})
    dims = [d.dim_value for d in res.model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 16, 16]
    assert onnxopt.optimize(m).report.validation_shapes == {"img": [1, 3, 16, 16]}


def test_no_runnable_shape_names_the_input():
    with pytest.raises(BadDataError, match=r"--input-shape for: img"):
        onnxopt.optimize(detector_like(17))


def test_parse_input_shapes():
    assert parse_input_shapes(["a=1,3,224,224", "b:0=2"]) == {"a": (1, 3, 224, 224), "b:0": (2,)}
    for bad in ("nodims", "=1,2", "a=1,x"):
        with pytest.raises(UsageError):
            parse_input_shapes([bad])


def _npz(tmp_path, **arrays) -> str:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return str(path)


def test_npz_both_layouts(tmp_path):
    specs = input_specs(make_mlp())
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    own_rank = NpzData(_npz(tmp_path, x=x), specs)
    stacked = NpzData(_npz(tmp_path, x=x[:, None, :]), specs)
    assert len(own_rank) == len(stacked) == 5
    for a, b in zip(own_rank, stacked):
        assert a["x"].shape == (1, 8)
        np.testing.assert_array_equal(a["x"], b["x"])


@pytest.mark.parametrize("arrays, message", [
    ({"y": np.zeros((2, 1, 8), np.float32)}, "no array for input(s) 'x'"),
    ({"x": np.zeros((2, 1, 8), np.int32)}, "expects float32"),
    ({"x": np.zeros((2, 1, 7), np.float32)}, "dim 1 must be 8"),
    ({"x": np.zeros((2, 2, 2, 8), np.float32)}, "expected [K, *feed_shape]"),
])
def test_npz_errors_name_the_input(tmp_path, arrays, message):
    with pytest.raises(BadDataError, match=re.escape(message)):
        NpzData(_npz(tmp_path, **arrays), input_specs(make_mlp()))


def test_npz_unreadable(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(BadDataError, match=r"not a readable \.npz"):
        NpzData(bad, input_specs(make_mlp()))


def test_float64_data_is_cast(tmp_path):
    data = NpzData(_npz(tmp_path, x=np.ones((3, 1, 8))), input_specs(make_mlp()))
    assert data.get(0)["x"].dtype == np.float32


def test_user_validation_data_is_used_and_reported(tmp_path, mlp):
    x = np.random.default_rng(1).standard_normal((6, 1, 8)).astype(np.float32)
    path = _npz(tmp_path, x=x)
    res = onnxopt.optimize(mlp, validation_data=path)
    assert not res.report.validation_synthetic
    assert path in res.report.validation_data and "6 samples" in res.report.validation_data


def test_calibration_holds_samples_apart(tmp_path, mlp):
    x = np.random.default_rng(2).standard_normal((20, 1, 8)).astype(np.float32)
    res = onnxopt.optimize(mlp, calibration=_npz(tmp_path, x=x))
    assert "held apart" in res.report.validation_data and "4 samples" in res.report.validation_data


def test_integer_inputs_fall_back_to_smaller_range():
    """An embedding lookup with 2 rows rejects ids >= 2: the probe narrows the integer range."""
    table = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(2, 4), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["emb"])], "emb",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 5])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [1, 5, 4])], [table])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    res = onnxopt.optimize(m)
    assert any("[0, 2)" in n for n in res.report.notes)
    ids = np.array([[0, 1, 1, 0, 1]], np.int64)
    np.testing.assert_array_equal(run_ort(res.model, {"ids": ids})[0], run_ort(m, {"ids": ids})[0])
