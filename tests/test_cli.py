"""Command line: exit codes, one-line errors, no output file on failure, reports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import onnx
import pytest

from onnxopt.cli import main
from onnxopt.registry import default_pipeline

PLAIN = ["--passes", "eliminate-identity,cleanup"]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    assert lines[0].startswith("onnxopt: error:"), err
    assert "Traceback" not in err
    return lines[0]


def test_success_prints_summary_and_writes(capsys, mlp_path, tmp_path):
    out = tmp_path / "out.onnx"
    code, stdout, _ = _run(capsys, mlp_path, out)
    assert code == 0
    assert out.exists()
    assert default_pipeline()[0] in stdout and "final vs original:" in stdout
    assert "Identity" not in {n.op_type for n in onnx.load(out).graph.node}


def test_report_json(capsys, mlp_path, tmp_path):
    rep = tmp_path / "r.json"
    code, _, _ = _run(capsys, mlp_path, tmp_path / "o.onnx", "--report", rep, "-q")
    assert code == 0
    data = json.loads(rep.read_text())
    assert data["ok"] is True and data["validation_synthetic"] is True
    assert data["final"]["exact"] is True
    assert [p["name"] for p in data["passes"]] == default_pipeline()


def test_quiet_prints_nothing(capsys, mlp_path, tmp_path):
    code, stdout, err = _run(capsys, mlp_path, tmp_path / "o.onnx", "-q")
    assert code == 0 and stdout == "" and err == ""


def test_output_may_replace_input(capsys, mlp_path):
    before = mlp_path.read_bytes()
    code, _, _ = _run(capsys, mlp_path, mlp_path, "-q", *PLAIN)
    assert code == 0
    assert mlp_path.read_bytes() != before
    assert len(onnx.load(mlp_path).graph.node) == 4


def test_input_never_modified(capsys, mlp_path, tmp_path):
    before = mlp_path.read_bytes()
    assert _run(capsys, mlp_path, tmp_path / "o.onnx", "-q")[0] == 0
    assert mlp_path.read_bytes() == before


@pytest.mark.parametrize("setup, code, message", [
    ("garbage", 2, "not"),
    ("truncated", 2, "not a readable ONNX model"),
    ("missing", 2, "no such file"),
    ("no-folder", 2, "does not exist"),
    ("folder-is-file", 2, "does not exist"),
    ("external-outside", 2, "outside the model's folder"),
    ("bad-shape-flag", 2, "--input-shape"),
    ("unknown-pass", 2, "unknown pass"),
    ("bad-input-name", 2, "not a model input"),
])
def test_errors_are_one_line_with_exit_code_and_no_output(capsys, tmp_path, mlp, setup, code, message):
    src = tmp_path / "in.onnx"
    onnx.save(mlp, src)
    out = tmp_path / "out.onnx"
    extra: list[str] = []
    if setup == "garbage":
        src.write_bytes(b"#!/bin/sh\necho definitely not a model\n" * 20)
    elif setup == "truncated":
        src.write_bytes(src.read_bytes()[:300])
    elif setup == "missing":
        src = tmp_path / "absent.onnx"
    elif setup == "no-folder":
        out = tmp_path / "no" / "such" / "dir" / "out.onnx"
    elif setup == "folder-is-file":
        out = src / "out.onnx"
    elif setup == "external-outside":
        inner = tmp_path / "inner"
        inner.mkdir()
        m = onnx.ModelProto()
        m.CopyFrom(mlp)
        onnx.save(m, inner / "in.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
        shutil.move(inner / "w.bin", tmp_path / "w.bin")
        m = onnx.load(inner / "in.onnx", load_external_data=False)
        for t in m.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = "../w.bin"
        onnx.save(m, inner / "in.onnx")
        src = inner / "in.onnx"
    elif setup == "bad-shape-flag":
        extra = ["--input-shape", "x=1,a"]
    elif setup == "unknown-pass":
        extra = ["--passes", "cleanup,make-it-fast"]
    elif setup == "bad-input-name":
        extra = ["--input-shape", "nope=1,8"]
    got, _, err = _run(capsys, src, out, *extra)
    assert got == code
    line = _one_error_line(err)
    assert message in line
    assert not out.exists()
    assert not [p for p in tmp_path.rglob(".*tmp*")]


def test_unknown_flag_is_usage_error(capsys, mlp_path, tmp_path):
    code, _, err = _run(capsys, mlp_path, tmp_path / "o.onnx", "--make-it-faster")
    assert code == 2
    assert "unrecognized arguments: --make-it-faster" in err


def test_missing_arguments_is_usage_error(capsys):
    code, _, err = _run(capsys)
    assert code == 2 and "required" in err


def test_verbose_error_shows_traceback(capsys, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    code, _, err = _run(capsys, bad, tmp_path / "o.onnx", "-v")
    assert code == 2 and "Traceback" in err and "onnxopt: error:" in err


def test_list_passes(capsys):
    code, stdout, _ = _run(capsys, "--list-passes")
    assert code == 0 and "cleanup" in stdout and "eliminate-identity" in stdout


@pytest.mark.parametrize("command", [[sys.executable, "-m", "onnxopt"], ["onnxopt"]])
def test_entry_points(command, mlp_path, tmp_path):
    if command[0] == "onnxopt" and shutil.which("onnxopt") is None:
        pytest.skip("console script not installed")
    out = tmp_path / "o.onnx"
    proc = subprocess.run(command + [str(mlp_path), str(out), *PLAIN], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and "nodes 6 -> 4" in proc.stdout
    bad = subprocess.run(command + [str(tmp_path / "missing.onnx"), str(out) + "2"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("onnxopt: error:")
    assert "Traceback" not in bad.stderr


def test_pack_and_unpack_round_trip(capsys, mlp_path, tmp_path):
    packed, plain, back = tmp_path / "m.onnxpack", tmp_path / "m.onnx", tmp_path / "back.onnx"
    assert _run(capsys, mlp_path, plain, "-q")[0] == 0
    code, stdout, _ = _run(capsys, mlp_path, packed, "--pack")
    assert code == 0 and "packed: weights" in stdout
    assert packed.read_bytes()[:9] == b"ONNXOPTPK"
    assert _run(capsys, "unpack", packed, back, "-q")[0] == 0
    assert back.read_bytes() == plain.read_bytes()  # bit-exact restore of what --pack was given
    # a packed file is a valid input too
    assert _run(capsys, packed, tmp_path / "again.onnx", "-q")[0] == 0


def test_unpack_errors(capsys, tmp_path, mlp_path):
    bad = tmp_path / "bad.onnxpack"
    bad.write_bytes(b"ONNXOPTPK" + b"\x00" * 40)
    code, _, err = _run(capsys, "unpack", bad, tmp_path / "o.onnx")
    assert code == 2 and str(bad) in _one_error_line(err)
    assert not (tmp_path / "o.onnx").exists()
    code, _, err = _run(capsys, "unpack", tmp_path / "missing.onnxpack", tmp_path / "o.onnx")
    assert code == 2 and "no such file" in _one_error_line(err)


def test_budget_flags_reach_quantization_and_validation(tmp_path):
    from onnxopt.cli import build_parser, pipeline_from_args

    args = build_parser().parse_args(["in.onnx", "out.onnx", "--quantize", "int8", "--min-sqnr", "30",
                                      "--min-top1", "0.95"])
    quant = pipeline_from_args(args)[-1]
    assert quant.name == "quantize-int8"
    assert (quant.min_sqnr, quant.min_top1, quant.min_cosine) == (30.0, 0.95, 0.99)
    default = pipeline_from_args(build_parser().parse_args(["in.onnx", "out.onnx", "--quantize", "int8"]))[-1]
    assert (default.min_sqnr, default.min_top1) == (20.0, None)
    off = pipeline_from_args(build_parser().parse_args(["in.onnx", "out.onnx", "--quantize", "int8",
                                                        "--min-top1", "0", "--min-cosine", "0"]))[-1]
    assert (off.min_top1, off.min_cosine) == (0.0, None)  # top-1 off (the pass's None is its 0.99 default)


def test_min_sqnr_flag_fails_a_lossy_run_with_exit_1(capsys, tmp_path):
    from fixtures.make_demo import DEMO_MODEL

    out = tmp_path / "out.onnx"
    code = main([str(DEMO_MODEL), str(out), "--prune", "0.5", "--min-sqnr", "200", "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "SQNR" in err and "200" in err
    assert not out.exists()


def test_errors_name_the_input_file_and_what_to_do(capsys, tmp_path):
    from fixtures.make_demo import DEMO_MODEL

    code = main([str(DEMO_MODEL), str(tmp_path / "o.onnx"), "--prune", "0.5", "--min-sqnr", "200", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith(f"onnxopt: error: {DEMO_MODEL}: pass 'prune-channels' failed validation")
    assert "--keep-going" in err and "--min-sqnr" in err and len(err.splitlines()) == 1


def test_pack_codecs_flag(capsys, mlp_path, tmp_path):
    import json as _json

    packed, report, back = tmp_path / "m.onnxpack", tmp_path / "r.json", tmp_path / "back.onnx"
    code, _, _ = _run(capsys, mlp_path, packed, "--pack", "--pack-codecs", "raw,zlib", "--report", report, "-q")
    assert code == 0
    labels = [t["codec"] for t in _json.loads(report.read_text())["extra"]["pack"]["tensors"]]
    assert labels and not any(c in label for label in labels for c in ("rans", "huffman", "lzma", "brotli", "groups"))
    assert _run(capsys, "unpack", packed, back, "-q")[0] == 0
    code, _, err = _run(capsys, mlp_path, packed, "--pack", "--pack-codecs", "gzip")
    assert code == 2 and "gzip" in _one_error_line(err)
    code, _, err = _run(capsys, mlp_path, tmp_path / "x.onnx", "--pack-codecs", "zlib")
    assert code == 2 and "--pack-codecs needs --pack" in _one_error_line(err)
