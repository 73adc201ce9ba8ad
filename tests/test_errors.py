"""Every error says what went wrong, where, and what to do about it (issue 7, "Messages")."""

from __future__ import annotations

import onnx
import pytest

import onnxopt
from onnxopt import errors
from onnxopt.cli import main

ERROR_CLASSES = [c for c in vars(errors).values()
                 if isinstance(c, type) and issubclass(c, errors.OnnxOptError) and c is not errors.OnnxOptError]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_says_what_to_do(cls):
    exc = cls("tensor 'w': something is off")
    assert cls.advice, f"{cls.__name__} has no default advice"
    assert str(exc) == f"tensor 'w': something is off; {cls.advice}"
    assert exc.message == "tensor 'w': something is off"
    assert exc.exit_code in (1, 2)


def test_raise_site_advice_replaces_or_suppresses_the_default():
    assert str(errors.BadDataError("x is wrong", advice="do y")) == "x is wrong; do y"
    assert str(errors.BadDataError("x is wrong; give --input-shape", advice="")) == "x is wrong; give --input-shape"


def test_advice_is_not_repeated_when_a_wrapper_rewrites_the_message(tmp_path):
    missing = tmp_path / "absent.onnx"
    with pytest.raises(errors.BadModelError) as info:
        onnxopt.optimize(missing, tmp_path / "out.onnx")
    text = str(info.value)
    assert text == f"{missing}: no such file; check the path"


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_truncated_model_names_file_and_remedy(capsys, tmp_path, mlp):
    src = tmp_path / "in.onnx"
    onnx.save(mlp, src)
    src.write_bytes(src.read_bytes()[:300])
    assert main([str(src), str(tmp_path / "out.onnx"), "-q"]) == 2
    err = _one_line(capsys)
    assert str(src) in err and errors.BadModelError.advice in err


def test_cli_absolute_external_location_says_how_to_save(capsys, tmp_path, mlp):
    onnx.save(mlp, tmp_path / "in.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
    m = onnx.load(tmp_path / "in.onnx", load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = str(tmp_path / "w.bin")
    onnx.save(m, tmp_path / "in.onnx")
    assert main([str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), "-q"]) == 2
    err = _one_line(capsys)
    assert "absolute path" in err and "save_as_external_data=True" in err and "tensor '" in err


def test_lossy_failure_gives_budget_advice_not_the_lossless_one(capsys, tmp_path):
    from fixtures.make_demo import DEMO_MODEL

    code = main([str(DEMO_MODEL), str(tmp_path / "o.onnx"), "--prune", "0.5", "--min-sqnr", "200", "-q"])
    err = _one_line(capsys)
    assert code == 1 and "--keep-going" in err
    assert "--rtol" not in err and err.count("--keep-going") == 1


def test_unknown_pass_lists_the_passes_and_points_at_help(capsys, tmp_path, mlp_path):
    assert main([str(mlp_path), str(tmp_path / "o.onnx"), "--passes", "cleanup,make-it-fast"]) == 2
    err = _one_line(capsys)
    assert "'make-it-fast'" in err and "cleanup" in err and "onnxopt --help" in err


def test_corrupt_packed_file_says_to_pack_again(tmp_path, capsys, mlp_path):
    packed = tmp_path / "m.onnxpack"
    assert main([str(mlp_path), str(packed), "--pack", "-q"]) == 0
    data = bytearray(packed.read_bytes())
    data[len(data) // 2] ^= 0xFF
    packed.write_bytes(bytes(data))
    assert main(["unpack", str(packed), str(tmp_path / "back.onnx"), "-q"]) == 2
    err = _one_line(capsys)
    assert str(packed) in err and "corrupt packed file" in err and "pack the original model again" in err
