"""Real pretrained models (fetched by ../shared/real-models/fetch.sh): the default pipeline keeps answers.

Runs only when ONNXOPT_REAL_MODELS points at the folder fetch.sh filled.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from onnxopt.cli import main
from onnxopt.feeds import build_validation_set
from onnxopt.model import load
from onnxopt.validate import OrtRunner, Tolerance, compare_outputs

MODELS_DIR = os.environ.get("ONNXOPT_REAL_MODELS", "")
MODELS = sorted(Path(MODELS_DIR).glob("*.onnx")) if MODELS_DIR else []

pytestmark = [
    pytest.mark.real_models,
    pytest.mark.skipif(not MODELS_DIR, reason="set ONNXOPT_REAL_MODELS=DIR (made by fetch.sh) to run"),
]


def test_models_present():
    assert len(MODELS) >= 12, f"expected the 12 models fetch.sh brings in {MODELS_DIR}, found {len(MODELS)}"


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_default_pipeline_keeps_answers(path, tmp_path):
    out = tmp_path / "out.onnx"
    report = tmp_path / "report.json"
    assert main([str(path), str(out), "-q", "--report", str(report)]) == 0
    original = load(path)
    optimized = load(out)
    validation = build_validation_set(original, count=3, seed=123)  # other samples than the run's own
    outputs = OrtRunner(optimized).run_all(validation.feeds)
    problems = Tolerance().check(compare_outputs(validation.reference, outputs))
    assert not problems, problems
    assert [o.name for o in optimized.graph.output] == [o.name for o in original.graph.output]
    assert {p.key: p.value for p in optimized.metadata_props} == {p.key: p.value for p in original.metadata_props}
