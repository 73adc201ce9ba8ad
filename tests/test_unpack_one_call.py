"""The one-call unpacker (onnxopt/packing/_unpack.c) gives exactly the Python reader's bytes, or declines.

Every file is read both ways: the C path's result is recorded, then the Python reader is made to run
on the same file. Where the C path returns bytes, they must be the Python reader's spliced bytes; where
the Python reader refuses a file, the C path must have declined it (an int).
"""

from __future__ import annotations

import random

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from test_packing import _index_raw, _model, _rebuild, _records, _sections, _skeleton_raw, mlp_model

from onnxopt.errors import BadModelError
from onnxopt.packing import native, pack_model, unpack_model
from onnxopt.packing import pack as pack_module
from onnxopt.packing.codecs import Codec

pytestmark = pytest.mark.skipif(not native.available(), reason="the compiled module is not built")

UNSUPPORTED, REFUSED = 1, 2


def both_readers(data: bytes) -> tuple[bytes | int | None, bytes | str]:
    """(what the C path gave: bytes, a decline code, or None if it was not called; the Python reader's
    spliced bytes, or its error message if it refused the file before splicing). Both paths parse the
    spliced bytes the same way, so equal bytes mean equal outcomes."""
    calls: list[bytes | int] = []
    spliced: list[bytes] = []
    real_call, real_parse = native.unpack_spliced, pack_module._parse_model

    def spy(*args):
        calls.append(real_call(*args))
        return UNSUPPORTED  # and let the Python reader run on the same file

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "unpack_spliced", spy)
        mp.setattr(pack_module, "_parse_model", lambda b: spliced.append(b) or real_parse(b))
        try:
            unpack_model(data)
        except BadModelError as exc:
            if not spliced:
                return (calls[0] if calls else None), str(exc)
    return (calls[0] if calls else None), spliced[-1]


def assert_same_verdict(data: bytes) -> bytes | int | None:
    fast, verdict = both_readers(data)
    if isinstance(fast, bytes):
        assert fast == verdict
    elif isinstance(verdict, str):
        assert isinstance(fast, int) or fast is None, verdict
    return fast


def int8_conv_model(seed: int, sizes=(128, 16, 64, 4608, 32, 1440, 16, 270, 32, 16)) -> onnx.ModelProto:
    """Int8 weights shaped like a small quantized conv net's (peaked around zero), with float scales."""
    rng = np.random.default_rng(seed)
    inits = []
    for k, n in enumerate(sizes):
        q = np.clip(np.round(rng.laplace(0, 6 + k % 4, n)), -127, 127).astype(np.int8)
        inits.append(numpy_helper.from_array(q, f"q{k}"))
        if k % 4 == 1:
            inits.append(numpy_helper.from_array((rng.standard_normal(10) * 0.01).astype(np.float32), f"s{k}"))
    return _model(inits)


def _codecs(data: bytes) -> set[int]:
    return {rec["codec"] for rec in _records(data)}


@pytest.mark.parametrize("seed", range(4))
def test_small_int8_models_take_the_one_call_path(seed):
    model = int8_conv_model(seed)
    data = pack_model(model).data
    assert {Codec.BUNDLE, Codec.SLICE} <= _codecs(data)
    fast = assert_same_verdict(data)
    assert isinstance(fast, bytes)
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
    int8 = int8_conv_model(0)
    huff = pack_model(int8, codecs=["huffman"]).data
    assert assert_same_verdict(huff) == UNSUPPORTED
    lz = pack_model(int8, codecs=["lzma"]).data
    assert assert_same_verdict(lz) == UNSUPPORTED
    assert unpack_model(huff).SerializeToString() == unpack_model(lz).SerializeToString() == int8.SerializeToString()


def test_numpy_only_switch_turns_the_one_call_path_off(monkeypatch):
    data = pack_model(int8_conv_model(1)).data
    monkeypatch.setenv("ONNXOPT_NATIVE", "0")
    assert both_readers(data)[0] == 4


def _mutations(data: bytes, rng: random.Random, cases: int) -> list[bytes]:
    """Damaged versions of a pack: bytes of its payloads and words (after the metadata), and of its index
    and skeleton re-emitted with a valid metadata checksum (so that they get past the trailer's CRC)."""
    out = []
    head, *_, rest = _sections(data)
    start = len(data) - head.trailer_bytes - len(rest)
    raw_index = _index_raw(data)
    raw_skeleton = _skeleton_raw(data)
    for _ in range(cases):
        how = rng.randrange(4)
        if how == 0 and rest:  # a payload or word byte
            damaged = bytearray(data)
            at = start + rng.randrange(len(rest))
            damaged[at] ^= 1 << rng.randrange(8)
            out.append(bytes(damaged))
        elif how in (1, 2):  # an index byte (changed, or one inserted or dropped)
            damaged = bytearray(raw_index)
            at = rng.randrange(len(damaged))
            if how == 1:
                damaged[at] = rng.randrange(256)
            elif rng.random() < 0.5:
                del damaged[at]
            else:
                damaged.insert(at, rng.randrange(256))
            out.append(_rebuild(data, index=bytes(damaged)))
        else:  # a skeleton byte
            damaged = bytearray(raw_skeleton)
            at = rng.randrange(len(damaged))
            damaged[at] = rng.randrange(256)
            out.append(_rebuild(data, skeleton_raw=bytes(damaged)))
    return out


@pytest.mark.parametrize("seed", range(3))
def test_damaged_files_get_the_python_readers_verdict(seed):
    w = (np.random.default_rng(seed).standard_normal(20_000) * 0.05).astype(np.float32)  # (planes, carries)
    model = int8_conv_model(seed) if seed < 2 else _model([
        numpy_helper.from_array(w, "w"), numpy_helper.from_array(w.copy(), "w_again"),
    ])
    data = pack_model(model).data
    assert isinstance(both_readers(data)[0], bytes)
    rng = random.Random(seed)
    fast_results = [assert_same_verdict(d) for d in _mutations(data, rng, 150)]
    assert REFUSED in fast_results  # (damage the C path itself caught, and left to the Python reader to name)
