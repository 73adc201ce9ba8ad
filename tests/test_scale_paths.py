"""The large-model code paths, exercised on the small demo model by lowering the size thresholds.

Past 2 GB a model must be saved with external data, onnxruntime reads it from a temp folder (weights
mapped, no prepacking) and the rollback snapshot waits on disk during validation. A real 3 GB run is
in bench/bench_scale.py; here every one of those paths runs on 80 KB, with full validation.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import run_ort

import onnxopt
import onnxopt.manager as manager
import onnxopt.model as mio
import onnxopt.passes.quantize_int8
import onnxopt.validate as validate
from fixtures.make_demo import DEMO_CALIB, DEMO_MODEL


@pytest.fixture
def tiny_limits(monkeypatch):
    monkeypatch.setattr(mio, "PROTOBUF_LIMIT", 16 * 1024)
    monkeypatch.setattr(mio, "EXTERNAL_DATA_MARGIN", 0)
    monkeypatch.setattr(validate, "LARGE_MODEL_BYTES", 1024)
    monkeypatch.setattr(manager, "SPILL_SNAPSHOT_BYTES", 1024)


def _demo_feed() -> dict[str, np.ndarray]:
    data = np.load(DEMO_CALIB)
    return {k: data[k][0] for k in data.files}


@pytest.mark.parametrize("extra", [[], ["--quantize", "int8"], ["--prune", "0.25", "--min-cosine", "0", "--min-sqnr",
                                                                  "-100"]])
def test_pipeline_on_large_model_paths(tiny_limits, tmp_path, extra, monkeypatch):
    from onnxopt.cli import main

    spills = []
    original_init = manager._Snapshot.__init__

    def counting_init(self, model, *, spill):
        original_init(self, model, spill=spill)
        spills.append(self.spilled)

    monkeypatch.setattr(manager._Snapshot, "__init__", counting_init)

    src = tmp_path / "in" / "model.onnx"
    src.parent.mkdir()
    mio.save(mio.load(DEMO_MODEL), src)  # past the (lowered) 2 GB limit: graph file + data file
    assert len(list(src.parent.glob("model.onnx.*.data"))) == 1
    out = tmp_path / "out.onnx"
    code = main([str(src), str(out), "-q", "--calibration", str(DEMO_CALIB), *extra])
    assert code == 0
    assert any(spills)  # the snapshot waited on disk during validation
    assert len(list(tmp_path.glob("out.onnx.*.data"))) == 1
    graph_only = onnx.load(str(out), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph_only.graph.initializer)
    result = mio.load(out)
    feed = _demo_feed()
    want = run_ort(mio.load(DEMO_MODEL), feed)[0]
    got = run_ort(result, feed)[0]
    assert got.shape == want.shape
    if not extra:  # lossless: the same answers
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_packed_output_of_large_model(tiny_limits, tmp_path):
    out = tmp_path / "out.onnxpack"
    res = onnxopt.optimize(DEMO_MODEL, out, pack=True)
    assert res.report.ok
    feed = _demo_feed()
    np.testing.assert_allclose(run_ort(mio.load(out), feed)[0], run_ort(mio.load(DEMO_MODEL), feed)[0],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("validate", ["off", "each"])
def test_quantize_drops_a_large_input_it_has_copied(monkeypatch, validate):
    """Past the spill size quantize-int8 keeps one copy of the weights (its own); with no data at all
    it makes its synthetic calibration feeds from the model before letting it go."""
    monkeypatch.setattr(manager, "SPILL_SNAPSHOT_BYTES", 0)
    seen = []
    original = onnxopt.passes.quantize_int8.QuantizeInt8.run

    def spy(self, graph, context):
        seen.append(context.model_releasable)
        result = original(self, graph, context)
        seen.append(context.model is None)
        return result

    monkeypatch.setattr(onnxopt.passes.quantize_int8.QuantizeInt8, "run", spy)
    res = onnxopt.optimize(mio.load(DEMO_MODEL), passes=["simplify", "quantize-int8"], validate=validate)
    assert seen == [True, True]
    assert res.report.passes[-1].status.startswith("applied")
    assert any(n.op_type == "DequantizeLinear" for n in res.model.graph.node)
    feed = _demo_feed()
    ref = run_ort(mio.load(DEMO_MODEL), feed)[0]
    got = run_ort(res.model, feed)[0]
    assert float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got)) > 0.99
