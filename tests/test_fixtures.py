"""Tests for the fixture registry: validity, determinism, onnxruntime execution, demo files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pytest

import fixtures
from fixtures.builders import demo_calibration
from fixtures.make_demo import DEMO_CALIB, DEMO_MODEL

ALL = fixtures.names()
REQUIRED = [
    "conv_bn_relu",
    "residual_add",
    "concat_branches",
    "depthwise_separable",
    "flatten_gemm",
    "attention_block",
    "shape_chain",
    "constant_nodes",
    "if_subgraph",
    "dynamic_batch",
    "identity_noise",
    "int_and_bool_io",
    "multi_output",
    "old_opset",
    "constant_foldable",
    "demo",
]


def _session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # unused-initializer / legacy-input warnings are intended
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = _session(model)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def test_registry_contents() -> None:
    assert set(REQUIRED) <= set(ALL)
    for name, fx in fixtures.FIXTURES.items():
        assert isinstance(fx, fixtures.Fixture)
        assert fx.name == name
        assert fx.description
        assert isinstance(fx.tags, frozenset) and fx.tags
    assert fixtures.names("dynamic") == ["shape_chain", "dynamic_batch"]
    assert "if_subgraph" in fixtures.names("subgraph")
    assert "attention_block" in fixtures.names("transformer")
    assert fixtures.names("no-such-tag") == []
    with pytest.raises(KeyError, match="unknown fixture"):
        fixtures.get("no_such_fixture")


@pytest.mark.parametrize("name", ALL)
def test_checker_full(name: str) -> None:
    onnx.checker.check_model(fixtures.get(name), full_check=True)


@pytest.mark.parametrize("name", ALL)
def test_deterministic(name: str) -> None:
    assert fixtures.get(name).SerializeToString() == fixtures.get(name).SerializeToString()


@pytest.mark.parametrize("name", ALL)
def test_model_properties(name: str) -> None:
    m = fixtures.get(name)
    assert m.producer_name == "onnxopt-fixtures"
    assert {p.key: p.value for p in m.metadata_props}["fixture"] == name
    opsets = {o.domain: o.version for o in m.opset_import}
    assert opsets[""] == (9 if name == "old_opset" else 17)
    assert m.ByteSize() < 1_000_000


@pytest.mark.parametrize("name", ALL)
def test_runs_in_onnxruntime(name: str) -> None:
    m = fixtures.get(name)
    feeds = fixtures.random_feeds(m, seed=1)
    outs = _run(m, feeds)
    assert set(outs) == {o.name for o in m.graph.output}
    for out_name, value in outs.items():
        if np.issubdtype(value.dtype, np.floating):
            assert np.all(np.isfinite(value)), out_name
            assert value.size == 1 or float(value.std()) > 0, f"{out_name} is constant"


def test_random_feeds_dims_and_dtypes() -> None:
    feeds = fixtures.random_feeds(fixtures.get("dynamic_batch"))
    assert feeds["images"].shape == (1, 3, 32, 32) and feeds["images"].dtype == np.float32
    feeds = fixtures.random_feeds(fixtures.get("int_and_bool_io"))
    assert feeds["input_ids"].dtype == np.int64 and feeds["input_ids"].shape == (1, 8)
    assert feeds["input_ids"].min() >= 0 and feeds["input_ids"].max() < 8
    assert feeds["flag"].dtype == np.bool_
    # legacy model lists initializers as inputs; only the real input is fed
    assert list(fixtures.random_feeds(fixtures.get("old_opset"))) == ["data"]


def test_dynamic_dims_accept_other_sizes() -> None:
    m = fixtures.get("dynamic_batch")
    x = np.random.default_rng(0).standard_normal((2, 3, 48, 40)).astype(np.float32)
    outs = _run(m, {"images": x})
    assert outs["heatmap"].shape == (2, 4, 24, 20)
    m = fixtures.get("shape_chain")
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    outs = _run(m, {"x": x})
    assert outs["logits"].shape == (3, 10) and outs["tokens"].shape == (3, 64, 4)


def test_if_subgraph_both_branches() -> None:
    m = fixtures.get("if_subgraph")
    x = np.abs(np.random.default_rng(0).standard_normal((1, 8))).astype(np.float32)
    pos = _run(m, {"x": x})["y"]
    neg = _run(m, {"x": -x})["y"]
    assert np.all(pos >= 0)  # then-branch ends in Relu
    assert not np.allclose(pos, neg)


def test_pattern_specifics() -> None:
    cn = fixtures.get("constant_nodes")
    assert len(cn.graph.initializer) == 0
    assert any(n.op_type == "Constant" for n in cn.graph.node)
    ops = {n.op_type for n in fixtures.get("identity_noise").graph.node}
    assert {"Identity", "Dropout", "Cast", "Reshape", "Transpose"} <= ops
    old = fixtures.get("old_opset")
    assert old.ir_version == 4
    mo = fixtures.get("multi_output")
    uses = [i for n in mo.graph.node for i in n.input if i.startswith("shared.weight")]
    assert len(uses) == 2


def test_save_external_data(tmp_path: Path) -> None:
    ref = fixtures.get("residual_add")
    path = tmp_path / "residual_add.onnx"
    fixtures.save("residual_add", path, external_data=True)
    assert (tmp_path / "residual_add.onnx.data").exists()
    assert path.stat().st_size < ref.ByteSize() // 2
    feeds = fixtures.random_feeds(ref)
    got = _session(str(path)).run(None, feeds)
    want = _session(ref).run(None, feeds)
    np.testing.assert_array_equal(got[0], want[0])
    loaded = onnx.load(str(path))
    want_w = {t.name: onnx.numpy_helper.to_array(t) for t in ref.graph.initializer}
    got_w = {t.name: onnx.numpy_helper.to_array(t) for t in loaded.graph.initializer}
    assert want_w.keys() == got_w.keys()
    for k, v in want_w.items():
        np.testing.assert_array_equal(got_w[k], v)
    plain = tmp_path / "plain.onnx"
    fixtures.save(ref, plain)
    assert plain.read_bytes() == ref.SerializeToString()


def test_demo_files_up_to_date() -> None:
    assert DEMO_MODEL.exists(), "run: python -m fixtures.make_demo"
    data = DEMO_MODEL.read_bytes()
    assert len(data) < 300_000
    assert data == fixtures.get("demo").SerializeToString(), "stale: run python -m fixtures.make_demo"
    m = onnx.load_from_string(data)
    assert [i.name for i in m.graph.input] == ["image"]
    assert [o.name for o in m.graph.output] == ["logits"]
    assert {n.op_type for n in m.graph.node} >= {"Identity", "Dropout", "Cast"}

    assert DEMO_CALIB.exists() and DEMO_CALIB.stat().st_size < 300_000
    with np.load(DEMO_CALIB) as npz:
        assert list(npz.files) == ["image"]
        calib = npz["image"]
    assert calib.shape == (16, 1, 3, 32, 32) and calib.dtype == np.float32
    np.testing.assert_array_equal(calib, demo_calibration())
    out = _session(m).run(None, {"image": calib[0]})[0]
    assert out.shape == (1, 10) and np.all(np.isfinite(out))
