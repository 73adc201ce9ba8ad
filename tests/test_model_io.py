"""Model I/O: loading sources, refusing bad and unsafe input, atomic saves, metadata through graphsurgeon."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from conftest import make_mlp, run_ort

from onnxopt import model as mio
from onnxopt.errors import BadModelError, OutputError


def _with_external(model: onnx.ModelProto, folder, location="weights.bin") -> str:
    path = folder / "ext.onnx"
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # onnx.save moves the data out of the proto it is given
    onnx.save(copy, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location,
              size_threshold=0)
    return path


def test_load_from_path_bytes_and_proto(mlp, mlp_path):
    for source in (mlp_path, str(mlp_path), mlp_path.read_bytes(), mlp):
        loaded = mio.load(source)
        assert loaded.SerializeToString() == mlp.SerializeToString()


def test_load_proto_is_a_copy(mlp):
    loaded = mio.load(mlp)
    loaded.graph.node.pop()
    assert len(mlp.graph.node) == 6


@pytest.mark.parametrize("content, message", [
    (b"this is not an onnx model at all\n" * 10, "not"),
    (b"", "not an ONNX model"),
])
def test_non_onnx_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(BadModelError, match=message):
        mio.load(path)


def test_truncated_model_is_refused(tmp_path, mlp):
    data = mlp.SerializeToString()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 7):
        path = tmp_path / f"trunc{cut}.onnx"
        path.write_bytes(data[:cut])
        with pytest.raises(BadModelError, match=str(path.name)):
            mio.load(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(BadModelError, match="no such file"):
        mio.load(tmp_path / "nope.onnx")
    with pytest.raises(BadModelError, match="not a file"):
        mio.load(tmp_path)


def test_external_data_round_trip(tmp_path, mlp):
    path = _with_external(mlp, tmp_path)
    assert (tmp_path / "weights.bin").exists()
    loaded = mio.load(path)
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(loaded, {"x": x})[0], run_ort(mlp, {"x": x})[0])
    # forced external save, then reload
    big = onnx.numpy_helper.from_array(np.zeros(4096, np.float32), "big")
    loaded.graph.initializer.append(big)  # above the external-tensor size floor
    out = tmp_path / "out" / "saved.onnx"
    out.parent.mkdir()
    before = loaded.SerializeToString()
    mio.save(loaded, out, external_data=True)
    (data,) = out.parent.glob("saved.onnx.*.data")
    assert data.stat().st_size >= 4096 * 4
    again = mio.load(out)
    np.testing.assert_array_equal(run_ort(again, {"x": x})[0], run_ort(mlp, {"x": x})[0])
    # the in-memory model was left exactly as it was
    assert loaded.SerializeToString() == before
    # saving again over it: a fresh data file, and the replaced one is gone
    mio.save(loaded, out, external_data=True)
    (data2,) = out.parent.glob("saved.onnx.*.data")
    assert data2 != data and not data.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["saved.onnx", data2.name])
    np.testing.assert_array_equal(run_ort(mio.load(out), {"x": x})[0], run_ort(mlp, {"x": x})[0])


def test_raw_data_that_does_not_match_its_shape_is_refused(tmp_path, mlp):
    bad = onnx.ModelProto()
    bad.CopyFrom(mlp)
    w = bad.graph.initializer[0]
    w.raw_data = onnx.numpy_helper.to_array(w).tobytes()[:-4]
    with pytest.raises(BadModelError, match=rf"tensor {w.name!r} holds \d+ bytes .* need \d+"):
        mio.load(bad)


@pytest.mark.parametrize("location", ["../outside.bin", "sub/../../outside.bin"])
def test_external_data_path_traversal_refused(tmp_path, mlp, location):
    inner = tmp_path / "inner"
    inner.mkdir()
    path = _with_external(mlp, inner)
    (tmp_path / "outside.bin").write_bytes((inner / "weights.bin").read_bytes())
    model = onnx.load(path, load_external_data=False)
    for t in mio.iter_tensors(model):
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(model, path)
    with pytest.raises(BadModelError, match="outside the model's folder"):
        mio.load(path)


def test_external_data_absolute_path_refused(tmp_path, mlp):
    path = _with_external(mlp, tmp_path)
    model = onnx.load(path, load_external_data=False)
    for t in mio.iter_tensors(model):
        for e in t.external_data:
            if e.key == "location":
                e.value = str(tmp_path / "weights.bin")
    onnx.save(model, path)
    with pytest.raises(BadModelError, match="absolute path"):
        mio.load(path)


def test_external_data_symlink_out_refused(tmp_path, mlp):
    inner = tmp_path / "inner"
    inner.mkdir()
    path = _with_external(mlp, inner)
    real = tmp_path / "real.bin"
    os.replace(inner / "weights.bin", real)
    os.symlink(real, inner / "weights.bin")
    with pytest.raises(BadModelError, match="outside the model's folder"):
        mio.load(path)


def test_save_is_atomic_and_leaves_no_temp(tmp_path, mlp):
    out = tmp_path / "m.onnx"
    mio.save(mlp, out)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    assert mio.load(out).SerializeToString() == mlp.SerializeToString()


def test_save_refuses_missing_folder(tmp_path, mlp):
    with pytest.raises(OutputError, match="does not exist"):
        mio.save(mlp, tmp_path / "missing" / "m.onnx")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_save_refuses_readonly_folder(tmp_path, mlp):  # pragma: no cover - CI runs as root
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(OutputError, match="cannot write"):
        mio.save(mlp, ro / "m.onnx")


def test_graphsurgeon_round_trip_keeps_identity(mlp):
    graph = mio.to_graph(mlp)
    back = mio.to_model(graph, like=mlp)
    assert back.ir_version == mlp.ir_version
    assert [(o.domain, o.version) for o in back.opset_import] == [(o.domain, o.version) for o in mlp.opset_import]
    assert back.producer_name == "tests"
    assert {p.key: p.value for p in back.metadata_props} == {"author": "tests", "labels": "a,b,c,d"}


def test_upgrade_opset_keeps_metadata_and_answers():
    old = make_mlp(opset=11)
    new = mio.upgrade_opset(old, 13)
    assert mio.default_opset(new) == 13
    assert {p.key for p in new.metadata_props} == {"author", "labels"}
    x = np.ones((1, 8), np.float32)
    np.testing.assert_allclose(run_ort(new, {"x": x})[0], run_ort(old, {"x": x})[0], rtol=1e-6)
    assert mio.upgrade_opset(new, 12) is new


def test_weight_bytes_and_node_count(mlp):
    assert mio.weight_bytes(mlp) == (8 * 16 + 16 + 16 * 4 + 3) * 4
    assert mio.node_count(mlp) == 6


def test_large_models_are_checked_on_their_structure(monkeypatch, mlp):
    monkeypatch.setattr(mio, "CHECK_STRUCTURE_ONLY_BYTES", 16)
    mio.check_model(mlp)  # valid: passes without the checker seeing the weights
    broken = onnx.ModelProto()
    broken.CopyFrom(mlp)
    broken.graph.node[0].input[1] = "no_such_tensor"
    with pytest.raises(BadModelError, match="invalid ONNX model"):
        mio.check_model(broken)


def test_external_data_bounds_checked(tmp_path, mlp):
    path = _with_external(mlp, tmp_path)
    model = onnx.load(path, load_external_data=False)
    for e in model.graph.initializer[0].external_data:
        if e.key == "length":
            e.value = str(10**12)
    onnx.save(model, path)
    with pytest.raises(BadModelError, match="claims bytes"):
        mio.load(path)


def test_structure_copy_keeps_shapes_not_data(mlp):
    copy = mio.structure_copy(mlp, min_bytes=64)
    w1 = next(t for t in copy.graph.initializer if t.name == "w1")
    assert list(w1.dims) == [8, 16] and not w1.raw_data and not w1.float_data
    types = mio.infer_types(mlp)
    assert [d.dim_value for d in types["h0"].tensor_type.shape.dim] == [1, 16]


def test_streamed_save_parses_back_identically(monkeypatch, tmp_path):
    monkeypatch.setattr(mio, "STREAM_SAVE_BYTES", 0)
    import fixtures

    for name in ("conv_bn_relu", "if_subgraph", "old_opset"):
        model = fixtures.get(name)
        out = tmp_path / f"{name}.onnx"
        mio.save(model, out)
        back = onnx.load(out)
        assert back == model
        assert sorted(t.name for t in back.graph.initializer) == sorted(t.name for t in model.graph.initializer)


def test_exporting_twice_keeps_outer_scope_weights():
    """A weight read both outside and inside an If branch must survive repeated exports."""
    import fixtures

    model = fixtures.get("if_subgraph")
    graph = mio.to_graph(model)
    first = mio.to_model(graph, like=model)
    second = mio.to_model(graph, like=model)
    assert first == second
    assert mio.weight_bytes(second) == mio.weight_bytes(first) > 0


def test_nesting_deeper_than_protobufs_limit_is_refused_cleanly():
    """If-bodies nested 200 deep, written byte by byte (the onnx helpers cannot even build it)."""
    from onnxopt.model import _length_delimited, _varint

    def field(number: int, payload: bytes) -> bytes:
        return _length_delimited(number, len(payload)) + payload

    graph = field(2, b"leaf")  # GraphProto.name
    for _ in range(200):
        attr = field(1, b"then_branch") + _varint(20 << 3) + _varint(5) + field(6, graph)  # name, type=GRAPH, g
        node = field(1, b"c") + field(2, b"y") + field(4, b"If") + field(5, attr)
        graph = field(1, node) + field(2, b"g")
    model = _varint(1 << 3) + _varint(8) + field(8, _varint(2 << 3) + _varint(17)) + field(7, graph)
    with pytest.raises(BadModelError, match="not a readable ONNX model"):
        mio.load(model)
