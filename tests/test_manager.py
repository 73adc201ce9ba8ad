"""PassManager: validation after each pass, rollback of lossless passes, lossy budgets, the report."""

from __future__ import annotations

import json

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from conftest import make_mlp, run_ort

import onnxopt
from onnxopt.context import PassContext
from onnxopt.errors import ValidationError
from onnxopt.manager import PassManager
from onnxopt.passes_api import Kind, Pass, PassResult
from onnxopt.validate import Budget, Tolerance, compare_outputs


class ScaleWeight(Pass):
    """Multiplies w2 by ``factor``: a wrong rewrite when declared lossless."""

    name = "scale-weight"

    def __init__(self, factor: float = 1.5, kind: Kind = Kind.EXACT):
        self.factor = factor
        self.kind = kind  # type: ignore[misc]

    def run(self, graph: gs.Graph, context: PassContext) -> PassResult:
        w = graph.tensors()["w2"]
        w.values = np.asarray(w.values) * np.float32(self.factor)
        return PassResult(True, {"scaled": 1})


class Crash(Pass):
    name = "crash"
    kind = Kind.NUMERIC

    def run(self, graph, context):
        raise RuntimeError("boom")


class LiesUnchanged(Pass):
    """Claims modified=False: the manager must keep the previous model (and its answers)."""

    name = "noop"
    kind = Kind.EXACT

    def run(self, graph, context):
        graph.nodes.clear()
        return PassResult(False)


def test_lossless_pass_that_changes_answers_is_rolled_back(mlp):
    res = onnxopt.optimize(mlp, passes=[ScaleWeight(), "cleanup"])
    first, second = res.report.passes
    assert first.status == "rolled-back" and "max abs error" in first.message
    assert second.status == "applied"
    x = np.ones((1, 8), np.float32)
    np.testing.assert_allclose(run_ort(res.model, {"x": x})[0], run_ort(mlp, {"x": x})[0], rtol=1e-6)
    assert res.report.ok


def test_crashing_pass_is_rolled_back_and_run_goes_on(mlp):
    res = onnxopt.optimize(mlp, passes=[Crash(), "eliminate-identity"])
    assert res.report.passes[0].status == "rolled-back"
    assert "boom" in res.report.passes[0].message
    assert res.report.passes[1].status == "applied"
    assert "Identity" not in {n.op_type for n in res.model.graph.node}


def test_unmodified_pass_keeps_previous_model(mlp):
    res = onnxopt.optimize(mlp, passes=[LiesUnchanged()])
    assert res.report.passes[0].status == "unchanged"
    assert res.model.SerializeToString() == onnxopt.load(mlp).SerializeToString()


def test_lossy_pass_over_budget_fails_the_run(mlp, tmp_path):
    out = tmp_path / "out.onnx"
    with pytest.raises(ValidationError, match=r"scale-weight.*(cosine|SQNR)") as info:
        onnxopt.optimize(mlp, out, passes=[ScaleWeight(factor=-1.0, kind=Kind.LOSSY)])
    assert not out.exists()
    assert info.value.report.passes[0].status == "failed"


def test_lossy_pass_within_budget_is_applied_and_measured(mlp):
    res = onnxopt.optimize(mlp, passes=[ScaleWeight(factor=1.001, kind=Kind.LOSSY)])
    entry = res.report.passes[0]
    assert entry.status == "applied"
    assert 0.999 < entry.vs_original["min_cosine"] <= 1.0 + 1e-9
    assert entry.vs_original["min_sqnr_db"] > 40


def test_lossy_pass_own_budget_and_user_overrides(mlp):
    """factor 1.1: SQNR = 20*log10(1/0.1) ~ 20 dB on the last layer's output, so 20 dB fails."""
    strict = ScaleWeight(factor=1.2, kind=Kind.LOSSY)
    with pytest.raises(ValidationError, match="SQNR"):
        onnxopt.optimize(mlp, passes=[strict])
    loose = ScaleWeight(factor=1.2, kind=Kind.LOSSY)
    loose.budget = Budget(min_cosine=0.9, min_sqnr_db=10.0)
    res = onnxopt.optimize(mlp, passes=[loose])
    assert res.report.passes[0].status == "applied"
    assert 10.0 < res.report.final["min_sqnr_db"] < 20.0
    # the user's flags override the pass's own budget, field by field
    with pytest.raises(ValidationError, match=r"SQNR .* < 30.0 dB"):
        onnxopt.optimize(mlp, passes=[loose], budget_overrides={"min_sqnr_db": 30.0})


def test_run_budget_is_the_loosest_lossy_budget(mlp):
    loose = ScaleWeight(factor=1.2, kind=Kind.LOSSY)
    loose.budget = Budget(min_cosine=0.9, min_sqnr_db=10.0, min_agreement=0.5)
    manager = PassManager([ScaleWeight(kind=Kind.LOSSY), loose])
    assert manager.run_budget == Budget(min_cosine=0.9, min_sqnr_db=10.0, min_top1=0.0, min_agreement=0.5)
    assert PassManager([Crash()]).run_budget == Budget()


def test_integer_outputs_of_lossy_passes_need_agreement():
    ref = [{"label": np.arange(100, dtype=np.int64)}]
    one_off = [{"label": np.where(np.arange(100) == 7, -1, np.arange(100)).astype(np.int64)}]
    metrics = compare_outputs(ref, one_off)
    assert metrics["label"].agreement == pytest.approx(0.99)
    assert Budget().check(metrics) == []
    assert "0.990 of the values agree" in Budget(min_agreement=0.995).check(metrics)[0]
    assert Tolerance().check(metrics)  # lossless passes still need bit-equal integers


def test_keep_going_rolls_back_lossy_failure(mlp):
    res = onnxopt.optimize(mlp, passes=[ScaleWeight(factor=-1.0, kind=Kind.LOSSY), "cleanup"], keep_going=True)
    assert [p.status for p in res.report.passes] == ["rolled-back", "applied"]


def test_validate_end_catches_a_bad_pipeline(mlp):
    with pytest.raises(ValidationError, match="final model differs"):
        onnxopt.optimize(mlp, passes=[ScaleWeight()], validate="end")


def test_validate_off_applies_without_running(mlp):
    res = onnxopt.optimize(mlp, passes=[ScaleWeight()], validate="off")
    assert res.report.passes[0].status == "applied"
    assert res.report.validation_mode == "off"


def test_report_contents(mlp):
    res = onnxopt.optimize(mlp, passes=["eliminate-identity", "cleanup"])
    rep = res.report
    assert rep.nodes_before == 6 and rep.nodes_after == 4  # Identity and the dead Neg are gone
    assert rep.weight_bytes_after < rep.weight_bytes_before  # the unused initializer is gone
    assert rep.validation_synthetic and "SYNTHETIC" in rep.validation_data
    assert rep.final["exact"] is True
    data = json.loads(rep.to_json())
    assert [p["name"] for p in data["passes"]] == ["eliminate-identity", "cleanup"]
    assert {"seconds", "nodes_before", "nodes_after", "weight_bytes_before", "vs_previous", "status"} <= set(
        data["passes"][0])
    text = rep.to_text()
    assert "eliminate-identity" in text and "bit-exact" in text and "nodes 6 -> 4" in text


def test_lossless_pipeline_is_idempotent(mlp):
    once = onnxopt.optimize(mlp).model
    twice = onnxopt.optimize(once)
    assert all(not p.modified for p in twice.report.passes)
    assert twice.model.SerializeToString() == once.SerializeToString()


def test_min_opset_upgrades_before_the_pass():
    class NeedsOpset13(Pass):
        name = "needs-13"
        kind = Kind.EXACT
        min_opset = 13

        def run(self, graph, context):
            seen.append(graph.opset)
            return PassResult(False)

    seen: list[int] = []
    onnxopt.optimize(make_mlp(opset=11), passes=[NeedsOpset13()])
    assert seen == [13]


def test_spilled_snapshot_rolls_back_exactly(mlp, monkeypatch):
    """Large models keep the rollback snapshot on disk during validation; a rollback reads it back."""
    import onnxopt.manager as manager

    monkeypatch.setattr(manager, "SPILL_SNAPSHOT_BYTES", 0)
    res = onnxopt.optimize(mlp, passes=[ScaleWeight(), "eliminate-identity"])
    assert [p.status for p in res.report.passes] == ["rolled-back", "applied"]
    x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(res.model, {"x": x})[0], run_ort(mlp, {"x": x})[0])
    assert not any(t.data_location == 1 for t in res.model.graph.initializer)  # data back in memory


class CopiesAndReleases(Pass):
    """Builds its own copy of the model, drops the one it was given when allowed, then does ``then``."""

    name = "copies-and-releases"
    releases_input = True

    def __init__(self, then: str, kind: Kind = Kind.LOSSY):
        self.then = then
        self.kind = kind  # type: ignore[misc]
        self.was_releasable: bool | None = None

    def run(self, graph: gs.Graph, context: PassContext) -> PassResult:
        from onnxopt.model import to_graph, to_model

        self.was_releasable = context.model_releasable
        if context.model_releasable:
            copy = to_model(graph, like=context.model)
            new = to_graph(copy)
            graph.nodes, graph.inputs, graph.outputs = new.nodes, new.inputs, new.outputs
            context.model = None
        if self.then == "raise":
            raise RuntimeError("boom after releasing")
        if self.then == "unchanged":
            return PassResult(False)
        w = graph.tensors()["w2"]
        w.values = np.asarray(w.values) * np.float32(-1.0)  # answers change: fails any budget
        return PassResult(True)


@pytest.mark.parametrize("then", ["raise", "unchanged", "wrong"])
def test_released_input_comes_back_from_the_snapshot(mlp, monkeypatch, then):
    """A pass that copies the weights may drop a large input; every way back yields the original model."""
    import onnxopt.manager as manager

    monkeypatch.setattr(manager, "SPILL_SNAPSHOT_BYTES", 0)
    p = CopiesAndReleases(then)
    res = onnxopt.optimize(mlp, passes=[p, "eliminate-identity"], keep_going=True)
    assert p.was_releasable is True
    first = res.report.passes[0]
    assert first.status == {"raise": "rolled-back", "unchanged": "unchanged", "wrong": "rolled-back"}[then]
    x = np.random.default_rng(2).standard_normal((1, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(res.model, {"x": x})[0], run_ort(mlp, {"x": x})[0])
    assert not any(t.data_location == 1 for t in res.model.graph.initializer)


def test_small_models_and_ordinary_passes_are_not_released(mlp, monkeypatch):
    p = CopiesAndReleases("unchanged")
    onnxopt.optimize(mlp, passes=[p])
    assert p.was_releasable is False  # below the spill size the manager keeps its reference


def test_released_input_with_validation_off(mlp, monkeypatch):
    import onnxopt.manager as manager

    monkeypatch.setattr(manager, "SPILL_SNAPSHOT_BYTES", 0)
    p = CopiesAndReleases("wrong", kind=Kind.NUMERIC)
    res = onnxopt.optimize(mlp, passes=[p], validate="off")
    assert p.was_releasable is True and res.report.passes[0].status == "applied"
    x = np.ones((1, 8), np.float32)
    np.testing.assert_allclose(run_ort(res.model, {"x": x})[0], -run_ort(mlp, {"x": x})[0], rtol=1e-5, atol=1e-6)
