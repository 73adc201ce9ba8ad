"""The pass contract, for every registered pass on every fixture.

Each pass alone and the default pipeline: the result passes the ONNX checker, runs in onnxruntime,
answers like the original within the lossless tolerance, `modified` is honest, and the lossless
pipeline is idempotent.
"""

from __future__ import annotations

import numpy as np
import pytest

import fixtures
import onnxopt
from onnxopt.data import input_specs
from onnxopt.model import to_graph, to_model
from onnxopt.registry import builtin_passes, make_pass
from onnxopt.validate import OrtRunner, Tolerance, compare_outputs

LOSSLESS = sorted(name for name, cls in builtin_passes().items() if cls.kind.lossless)
FIXTURE_NAMES = sorted(fixtures.FIXTURES)


def _outputs(model, feeds):
    runner = OrtRunner(model)
    return runner.run_all(feeds)


@pytest.fixture(scope="module", params=FIXTURE_NAMES)
def fixture_case(request):
    model = fixtures.get(request.param)
    feeds = [fixtures.random_feeds(model, seed=s) for s in range(2)]
    return request.param, model, feeds, _outputs(model, feeds)


@pytest.mark.parametrize("pass_name", LOSSLESS)
def test_lossless_pass_on_fixture(fixture_case, pass_name):
    name, model, feeds, reference = fixture_case
    res = onnxopt.optimize(model, passes=[pass_name], validate="off")
    entry = res.report.passes[0]
    assert entry.status in ("applied", "unchanged"), entry.message
    onnxopt.model.check_model(res.model, f"{pass_name} on {name}")
    problems = Tolerance().check(compare_outputs(reference, _outputs(res.model, feeds)))
    assert not problems, problems
    # honest `modified`: an unchanged report means the model is exactly a round trip of the input
    if not entry.modified:
        assert res.model.SerializeToString() == onnxopt.load(model).SerializeToString()
    else:
        assert res.model.SerializeToString() != to_model(to_graph(model), like=model).SerializeToString()
    # graph interface kept (initializers that IR<4 models also list as inputs are not part of it)
    assert [s.name for s in input_specs(res.model)] == [s.name for s in input_specs(model)]
    assert [o.name for o in res.model.graph.output] == [o.name for o in model.graph.output]


def test_default_pipeline_is_idempotent_and_validated(fixture_case):
    name, model, feeds, reference = fixture_case
    once = onnxopt.optimize(model)
    assert once.report.ok and all(p.status != "rolled-back" for p in once.report.passes), once.report.to_text()
    twice = onnxopt.optimize(once.model)
    changed = [p.name for p in twice.report.passes if p.modified]
    assert not changed, f"{name}: second run still changed {changed}"
    problems = Tolerance().check(compare_outputs(reference, _outputs(once.model, feeds)))
    assert not problems, problems


def test_eliminate_identity_removes_the_noise():
    model = fixtures.get("identity_noise")
    res = onnxopt.optimize(model, passes=["eliminate-identity", "cleanup"])
    ops = [n.op_type for n in res.model.graph.node]
    for op in ("Identity", "Dropout", "Cast"):
        assert op not in ops, ops
    assert res.report.passes[0].stats["removed"]["Identity"] >= 1


def test_modified_false_when_nothing_to_do():
    model = fixtures.get("conv_bn_relu")
    once = onnxopt.optimize(model, passes=["eliminate-identity", "cleanup"]).model
    for name in ("eliminate-identity", "cleanup"):
        res = onnxopt.optimize(once, passes=[make_pass(name)])
        assert res.report.passes[0].modified is False


def test_feeds_helper_matches_inputs():
    model = fixtures.get("old_opset")
    feed = fixtures.random_feeds(model, seed=0)
    assert all(isinstance(v, np.ndarray) for v in feed.values())
