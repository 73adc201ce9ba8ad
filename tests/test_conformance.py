"""ONNX's own node test cases through the simplifier, checked against onnxruntime.

Two variants per case (the data comes from ``onnx.backend.test.case.node.collect_testcases``):

- ``all_const``: every input becomes an initializer; after ``simplify`` every graph output must be a
  constant equal to what onnxruntime computes on the original model (ops that are never folded -
  QDQ, random - and non-tensor outputs are counted apart);
- ``first_input``: only the first input stays a graph input; the simplified model must run in
  onnxruntime and give the same outputs as the original.

Cases onnxruntime cannot load or run are skipped and counted. By default a deterministic subset
(~150 cases: every 12th by name plus a few control-flow cases) runs; ``ONNXOPT_FULL_CONFORMANCE=1``
runs all of them (so does ``bench/bench_simplify.py --conformance``).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from onnxopt.context import PassContext
from onnxopt.passes import Simplify
from onnxopt.passes.fold_constants import NEVER_FOLD, NOT_TENSOR_OPS

FULL = os.environ.get("ONNXOPT_FULL_CONFORMANCE", "") not in ("", "0")
SUBSET_STRIDE = 12
#: always in the fast subset: control flow and shape-heavy cases
SUBSET_EXTRA = ("test_if", "test_loop11", "test_scan9_sum", "test_if_opt", "test_range_float_type_positive_delta",
                "test_shape_start_1_end_negative_1", "test_reshape_reordered_all_dims", "test_expand_dim_changed",
                "test_constantofshape_int_zeros", "test_gather_negative_indices", "test_slice_neg_steps",
                "test_batchnorm_epsilon", "test_dropout_default", "test_tile", "test_where_example")
RTOL, ATOL = 1e-5, 1e-6

logging.getLogger("onnx_graphsurgeon").setLevel(logging.ERROR)


@functools.lru_cache(maxsize=1)
def all_cases() -> list:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    return sorted((c for c in cases if c.kind == "node" and c.data_sets), key=lambda c: c.name)


def selected_cases(full: bool = FULL) -> list:
    cases = all_cases()
    if full:
        return cases
    return [c for i, c in enumerate(cases) if i % SUBSET_STRIDE == 0 or c.name in SUBSET_EXTRA]


# --------------------------------------------------------------------------- model surgery


def _ort_session(model: onnx.ModelProto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def with_initializers(model: onnx.ModelProto, inputs: list, keep_first: bool) -> tuple[onnx.ModelProto, dict]:
    """``model`` with its inputs turned into initializers (all, or all but the first); returns the feeds left."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    graph_inputs = list(m.graph.input)
    feeds = {}
    del m.graph.input[:]
    for k, (vi, value) in enumerate(zip(graph_inputs, inputs)):
        if isinstance(value, onnx.TensorProto):
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = vi.name
            try:
                value = onnx.numpy_helper.to_array(tensor)
            except Exception:
                value = None
        elif isinstance(value, (np.ndarray, np.generic)):
            value = np.asarray(value)
            tensor = None
        else:
            raise TypeError("non-tensor input")
        if keep_first and k == 0:
            if value is None or value.dtype.kind not in "biufcUSO":
                raise TypeError("input type numpy cannot feed")
            m.graph.input.append(vi)
            feeds[vi.name] = value
            continue
        m.graph.initializer.append(tensor if tensor is not None else onnx.numpy_helper.from_array(value, vi.name))
    for vi in graph_inputs[len(inputs):]:  # inputs with no data stay graph inputs (unused optional)
        m.graph.input.append(vi)
    if m.ir_version < 4:
        m.ir_version = 4
    return m, feeds


def simplify_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, gs.Graph]:
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = gs.import_onnx(inferred)
    Simplify(size_limit_ratio=None).run(graph, PassContext(model=inferred))
    out = gs.export_onnx(graph, do_type_check=False)
    out.ir_version = model.ir_version
    del out.opset_import[:]
    out.opset_import.extend(model.opset_import)
    out.functions.extend(f for f in model.functions if not any(g.name == f.name for g in out.functions))
    return out, graph


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal for ints/bools; within float reassociation for floats (a few ulps of the element type)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc":
        rtol, atol = (RTOL, ATOL) if a.dtype.itemsize >= 4 else (4e-3, 4e-3)
        return bool(np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True))
    if a.dtype == object:
        return a.tolist() == b.tolist()
    return bool(np.array_equal(a, b))


def _uses_policy_op(model: onnx.ModelProto) -> bool:
    ops = {n.op_type for n in model.graph.node}
    training = any(n.op_type == "Dropout" and len(n.input) > 2 and n.input[2] for n in model.graph.node)
    return bool(ops & (NEVER_FOLD - {"Constant"})) or bool(ops & NOT_TENSOR_OPS) or training


def _exotic(model: onnx.ModelProto) -> bool:
    types = {t.data_type for t in model.graph.initializer}
    types |= {vi.type.tensor_type.elem_type for vi in list(model.graph.input) + list(model.graph.output)}
    for n in model.graph.node:
        for a in n.attribute:
            if a.name in ("to", "output_dtype"):
                types.add(a.i)
    return bool(types - _PLAIN_TYPES)


T = onnx.TensorProto
_PLAIN_TYPES = {T.FLOAT, T.DOUBLE, T.FLOAT16, T.INT8, T.INT16, T.INT32, T.INT64, T.UINT8, T.UINT16, T.UINT32,
                T.UINT64, T.BOOL, T.COMPLEX64, T.COMPLEX128, T.UNDEFINED}


# --------------------------------------------------------------------------- one case


@dataclass
class Outcome:
    status: str  # passed | skipped | failed
    reason: str = ""


def run_case(case, variant: str) -> Outcome:
    inputs, _expected = case.data_sets[0]
    keep_first = variant == "first_input"
    try:
        model, feeds = with_initializers(case.model, list(inputs), keep_first)
    except TypeError as exc:
        return Outcome("skipped", str(exc))
    try:
        reference = _ort_session(model).run(None, feeds)
    except Exception:
        return Outcome("skipped", "onnxruntime cannot run the original")
    if any(not isinstance(r, np.ndarray) for r in reference):
        return Outcome("skipped", "non-tensor outputs")
    try:
        gs.export_onnx(gs.import_onnx(model), do_type_check=False)
    except Exception:
        return Outcome("skipped", "graphsurgeon cannot round-trip the model (strings / sub-byte types)")
    try:
        out, graph = simplify_model(model)
    except Exception as exc:  # a crash in our code is a failure
        return Outcome("failed", f"simplify crashed: {type(exc).__name__}: {exc}")
    try:
        onnx.checker.check_model(out)
    except Exception as exc:
        return Outcome("failed", f"invalid model: {str(exc).splitlines()[0]}")
    try:
        got = _ort_session(out).run(None, feeds)
    except Exception as exc:
        return Outcome("failed", f"onnxruntime cannot run the result: {str(exc).splitlines()[0][:200]}")
    for name, a, b in zip([o.name for o in out.graph.output], reference, got):
        if not _same(a, b):
            return Outcome("failed", f"output {name!r} differs")
    if variant == "all_const":
        folded = all(isinstance(t, gs.Constant) for t in graph.outputs)
        if not folded:
            if _uses_policy_op(model):
                return Outcome("passed", "not folded by policy (QDQ/random/sequence)")
            if _exotic(model):
                return Outcome("passed", "not folded: element types numpy cannot hold exactly (float8, int4...)")
            ops = sorted({n.op for n in graph.nodes})
            return Outcome("failed", f"outputs not folded to constants (left: {', '.join(ops)})")
        for t, ref in zip(graph.outputs, reference):
            if not _same(ref, np.asarray(t.values)):
                return Outcome("failed", f"folded value of {t.name!r} differs")
    return Outcome("passed")


@dataclass
class Summary:
    counts: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)
    skip_reasons: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)  # passed, with a remark (e.g. not folded by policy)


def run_all(cases, variant: str) -> Summary:
    s = Summary()
    for case in cases:
        o = run_case(case, variant)
        s.counts[o.status] += 1
        if o.status == "failed":
            s.failures.append((case.name, o.reason))
        elif o.status == "skipped":
            s.skip_reasons[o.reason] += 1
        elif o.reason:
            s.notes[o.reason] += 1
    return s


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def cases():
    try:
        return selected_cases()
    except Exception as exc:  # pragma: no cover - onnx without its test data
        pytest.skip(f"onnx node test cases unavailable: {exc}")


@pytest.mark.parametrize("variant", ["all_const", "first_input"])
def test_node_conformance(cases, variant):
    summary = run_all(cases, variant)
    print(f"\n{variant}: {dict(summary.counts)}; skipped: {dict(summary.skip_reasons)}; "
          f"passed with a remark: {dict(summary.notes)}")
    assert summary.counts["passed"] > len(cases) // 2
    assert not summary.failures, "\n".join(f"{n}: {r}" for n, r in summary.failures)
