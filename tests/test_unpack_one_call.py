"""The one-call unpacker (onnxopt/packing/_unpack.c) gives exactly the Python reader's bytes, or declines.

Every file is read both ways (pack.reader_verdicts). Where the C path returns bytes, they must be the
Python reader's spliced bytes; where the Python reader refuses a file, the C path must have declined it
(an int).
"""

from __future__ import annotations

import random

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from test_packing import _model, _records, mlp_model

from fixtures.builders import int8_weights
from onnxopt.fuzzing import mutate_behind_checksums
from onnxopt.packing import native, pack_model, unpack_model
from onnxopt.packing.codecs import Codec
from onnxopt.packing.pack import reader_verdicts

pytestmark = pytest.mark.skipif(not native.available(), reason="the compiled module is not built")

UNSUPPORTED, REFUSED = 1, 2


def assert_same_verdict(data: bytes) -> bytes | int | None:
    """Read ``data`` both ways (pack.reader_verdicts); returns what the one-call path gave."""
    fast, verdict = reader_verdicts(data)
    if isinstance(fast, bytes):
        assert fast == verdict
    elif isinstance(verdict, str):
        assert isinstance(fast, int) or fast is None, verdict
    return fast


def _codecs(data: bytes) -> set[int]:
    return {rec["codec"] for rec in _records(data)}


@pytest.mark.parametrize("seed", range(4))
def test_small_int8_models_take_the_one_call_path(seed):
    model = int8_weights(seed)
    data = pack_model(model).data
    assert {Codec.BUNDLE, Codec.SLICE} <= _codecs(data)
    fast = assert_same_verdict(data)
    assert isinstance(fast, bytes)
    assert unpack_model(data).SerializeToString() == model.SerializeToString()


def test_holes_found_past_bytes_equal_to_their_tag():
    """Tensor names made of the raw_data tag byte ('J'): records must skip those bytes to find their hole."""
    model = int8_weights(7)
    for k, t in enumerate(model.graph.initializer):
        t.name = "J" * (k % 3 + 1) + t.name
    data = pack_model(model).data
    assert any(rec["place"] >> 1 for rec in _records(data))
    assert isinstance(assert_same_verdict(data), bytes)
    assert unpack_model(data).SerializeToString() == model.SerializeToString()


def test_references_raw_planes_and_carried_bytes():
    """Float weights as byte planes (rANS exponent planes whose lanes carry bytes of the RAW planes), a
    repeated tensor (a REF record) and a double tensor, read by the C path."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal(100_000) * 0.05).astype(np.float32)
    model = _model([
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(w.copy(), "w_again"),
        numpy_helper.from_array((rng.standard_normal(100_000) * 0.05).astype(np.float16), "h"),
        numpy_helper.from_array(rng.standard_normal(40), "double"),
    ])
    result = pack_model(model)
    assert [t.codec.split("[")[0] for t in result.tensors] == ["planes", "ref", "planes", "planes"]
    fast = assert_same_verdict(result.data)
    assert isinstance(fast, bytes)
    assert unpack_model(result.data).SerializeToString() == model.SerializeToString()


def test_mlp_and_fixtures_agree_whichever_path_reads_them():
    import fixtures

    for model in [mlp_model(0), mlp_model(1, hidden=256), *(fixtures.get(n) for n in sorted(fixtures.FIXTURES))]:
        data = pack_model(model).data
        assert_same_verdict(data)
        assert unpack_model(data).SerializeToString() == model.SerializeToString()


def test_what_the_one_call_path_declines():
    rng = np.random.default_rng(5)
    ints = helper.make_tensor("ints", onnx.TensorProto.INT32, [300], rng.integers(-9, 9, 300).tolist())
    assert assert_same_verdict(pack_model(_model([ints])).data) == UNSUPPORTED  # an int32_data record
    int8 = int8_weights(0)
    huff = pack_model(int8, codecs=["huffman"]).data
    assert assert_same_verdict(huff) == UNSUPPORTED
    lz = pack_model(int8, codecs=["lzma"]).data
    assert assert_same_verdict(lz) == UNSUPPORTED
    assert unpack_model(huff).SerializeToString() == unpack_model(lz).SerializeToString() == int8.SerializeToString()


def test_limits_beyond_64_bits_are_taken_as_no_limit():
    from onnxopt.packing import Limits

    data = pack_model(int8_weights(2)).data
    huge = Limits(max_total_bytes=10**30, max_tensor_bytes=10**25, max_steps=10**20)
    fast, verdict = reader_verdicts(data, huge)
    assert isinstance(fast, bytes) and fast == verdict
    tight = Limits(max_tensor_bytes=1000)  # (the bundle is larger: both readers refuse it)
    fast, verdict = reader_verdicts(data, tight)
    assert fast == 2 and "declares a 4608-byte tensor" in verdict


def test_native_environment_switch_is_read_at_start_up():
    import os
    import subprocess
    import sys

    code = "from onnxopt.packing import native; print(native.available(), native.set_native(True))"
    env = {**os.environ, "ONNXOPT_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_numpy_only_switch_turns_the_one_call_path_off(monkeypatch):
    data = pack_model(int8_weights(1)).data
    monkeypatch.setattr(native, "_enabled", False)
    assert reader_verdicts(data)[0] == 4


@pytest.mark.parametrize("seed", range(3))
def test_damaged_files_get_the_python_readers_verdict(seed):
    w = (np.random.default_rng(seed).standard_normal(20_000) * 0.05).astype(np.float32)  # (planes, carries)
    model = int8_weights(seed) if seed < 2 else _model([
        numpy_helper.from_array(w, "w"), numpy_helper.from_array(w.copy(), "w_again"),
    ])
    data = pack_model(model).data
    assert isinstance(reader_verdicts(data)[0], bytes)
    rng = random.Random(seed)
    fast_results = [assert_same_verdict(mutate_behind_checksums(data, rng)) for _ in range(150)]
    assert REFUSED in fast_results  # (damage the C path itself caught, and left to the Python reader to name)
