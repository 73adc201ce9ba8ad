"""Run models in onnxruntime on CPU and compare their outputs.

Metrics per output, over all validation samples: max abs error, max relative error, cosine
similarity, SQNR in dB, and top-1 agreement for outputs that hold class scores (see
:func:`class_probabilities`).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import onnx

from onnxopt.data import Feed
from onnxopt.errors import ValidationError

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]

#: models with more weights than this are handed to onnxruntime as a file with external data (no serialized
#: copy in memory) and run without weight prepacking (a second copy of every weight): memory over speed
LARGE_MODEL_BYTES = 256 << 20


class OrtSource:
    """What to hand onnxruntime for a model: its bytes, or, for large models (and any past protobuf's
    2 GB limit), a graph file in a temp folder beside a data file that onnxruntime maps; ``low_memory``
    (default: by size) also turns prepacking off, which would copy every weight once more.

    ``extra_outputs`` (value infos) are added to what onnxruntime sees, never to ``model``.
    """

    def __init__(self, model: onnx.ModelProto, opts, *, extra_outputs: Sequence[onnx.ValueInfoProto] = (),
                 low_memory: bool | None = None):
        from onnxopt.model import needs_external_data, save, weight_bytes

        large = weight_bytes(model) > LARGE_MODEL_BYTES
        if large if low_memory is None else low_memory:
            opts.add_session_config_entry("session.disable_prepacking", "1")
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self.source: str | bytes
        if large or needs_external_data(model):
            self._tmpdir = tempfile.TemporaryDirectory(prefix="onnxopt-ort-")
            path = Path(self._tmpdir.name) / "model.onnx"
            save(model, path, external_data=True)
            if extra_outputs:  # the graph file alone is edited
                graph_only = onnx.load(str(path), load_external_data=False)
                graph_only.graph.output.extend(extra_outputs)
                path.write_bytes(graph_only.SerializeToString())
            self.source = str(path)
        else:
            n = len(model.graph.output)
            model.graph.output.extend(extra_outputs)  # borrowed for serialization, then put back
            try:
                self.source = model.SerializeToString()
            finally:
                del model.graph.output[n:]

    def close(self) -> None:
        """Remove the temp folder (a session made from it keeps working: its weights are mapped)."""
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None


def make_session(model: onnx.ModelProto | str, opts=None, *, low_memory: bool | None = None):
    """An onnxruntime CPU session for a ModelProto of any size (or a path), with ``opts``."""
    import onnxruntime as ort

    opts = opts or ort.SessionOptions()
    if isinstance(model, str):
        return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    source = OrtSource(model, opts, low_memory=low_memory)
    try:
        return ort.InferenceSession(source.source, opts, providers=["CPUExecutionProvider"])
    finally:
        source.close()


class OrtRunner:
    """An onnxruntime CPU session for one model (temp file with external data past 2 GB)."""

    def __init__(self, model: onnx.ModelProto, *, threads: int = 0, optimize: bool = True,
                 extra_outputs: Sequence[str] = ()):
        """``extra_outputs``: intermediate tensors to return as well (the model is not copied for it)."""
        import onnxruntime as ort

        from onnxopt.model import output_value_infos

        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # errors surface as exceptions we report; no C++ log noise
        if threads:
            opts.intra_op_num_threads = threads
        if not optimize:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        infos = output_value_infos(model, extra_outputs) if extra_outputs else []
        self._source = OrtSource(model, opts, extra_outputs=infos)
        source = self._source.source
        self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feed: Feed) -> Outputs:
        values = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, values))

    def run_all(self, feeds: Sequence[Feed]) -> list[Outputs]:
        return [self.run(f) for f in feeds]

    def close(self) -> None:
        self.session = None
        self._source.close()


def run_model(model: onnx.ModelProto, feeds: Sequence[Feed]) -> list[Outputs]:
    """Outputs of ``model`` on each feed, from one onnxruntime session opened and closed here."""
    if not feeds:
        return []
    runner = OrtRunner(model)
    try:
        return runner.run_all(feeds)
    finally:
        runner.close()


def short_error(exc: BaseException) -> str:
    """First meaningful line of an onnxruntime error, without its file/line noise."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:400]


@dataclass
class OutputMetrics:
    """How one output of a candidate model compares with a reference, over all samples."""

    name: str
    dtype: str
    exact: bool  # bit-equal (NaN == NaN)
    shape_ok: bool
    max_abs: float
    max_rel: float
    ref_max_abs: float
    cosine: float
    sqnr_db: float
    top1: float | None  # class-score outputs only: fraction of rows whose top-1 agrees, near-ties included
    agreement: float | None = None  # integer/bool outputs: fraction of elements equal (labels, ids)
    top1_strict: float | None = None  # class-score outputs: fraction of rows whose argmax is the same

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) and v != math.inf else v)
                for k, v in asdict(self).items()}


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating)


#: how far from 1 a row of probabilities may sum (float32 Softmax over thousands of classes: ~1e-6)
PROB_SUM_TOL = 1e-3
#: top-1 near-tie: a candidate whose class has a reference probability within this of the reference's
#: best agrees (the reference itself cannot tell those classes apart: 0.31 vs 0.27 on a 4-way photo)
TIE_MARGIN = 0.05


def class_probabilities(ref: np.ndarray) -> np.ndarray | None:
    """The reference output as probability rows ``[rows, classes]`` when it holds class scores, else None.

    The rule: a float output holds class scores when its last axis (at least 2 entries) is a probability
    distribution in every row - values in [0, 1] summing to 1 (Softmax, or a softmax spelled out as
    Exp/ReduceSum/Div), or log-probabilities whose exponentials sum to 1 (LogSoftmax). Top-1 agreement
    is measured on those outputs only: an argmax over hidden states, feature maps, box or landmark
    regressions, recurrent states or sigmoid maps means nothing. Raw logits cannot be told apart from
    regressions by their values and get no top-1 either (cosine and SQNR still judge them).
    """
    if ref.ndim < 1 or ref.shape[-1] < 2 or ref.size == 0 or not _is_float(ref):
        return None
    rows = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
    if not np.isfinite(rows).all():
        return None
    if rows.min() >= -1e-6 and rows.max() <= 1.0 + 1e-6:
        probs = rows
    elif rows.max() <= 1e-6:  # log-probabilities
        probs = np.exp(rows)
    else:
        return None
    return probs if bool(np.all(np.abs(probs.sum(axis=-1) - 1.0) <= PROB_SUM_TOL)) else None


def compare_outputs(refs: Sequence[Outputs], outs: Sequence[Outputs]) -> dict[str, OutputMetrics]:
    """Compare candidate outputs with reference outputs, sample by sample, output by output.

    Top-1 agreement is measured only where the reference holds class scores in every sample
    (:func:`class_probabilities`). A row agrees when the candidate's argmax is the reference's, or a
    class whose reference probability is within ``TIE_MARGIN`` of the best (a near-tie the reference
    itself does not decide); ``top1_strict`` counts exact argmax matches only."""
    if not refs:
        return {}
    metrics: dict[str, OutputMetrics] = {}
    for name in refs[0]:
        exact = shape_ok = True
        max_abs = max_rel = ref_max = 0.0
        dot = ref_sq = out_sq = noise_sq = 0.0
        top1_hits = top1_strict = top1_total = 0
        class_scores = True
        equal_elems = total_elems = 0
        dtype = str(refs[0][name].dtype)
        for ref_all, out_all in zip(refs, outs):
            ref = np.asarray(ref_all[name])
            if name not in out_all:
                exact = shape_ok = False
                continue
            out = np.asarray(out_all[name])
            if ref.shape != out.shape:
                exact = shape_ok = False
                continue
            if ref.dtype.kind in "OUS" or out.dtype.kind in "OUS":
                exact &= bool(np.array_equal(ref, out))
                continue
            if _is_float(ref) or _is_float(out):
                r = ref.astype(np.float64)
                o = out.astype(np.float64)
                same_nan = np.isnan(r) == np.isnan(o)
                if not same_nan.all():
                    exact = False
                    max_abs = max_rel = math.inf
                finite = np.isfinite(r) & np.isfinite(o)
                inf_same = np.all((r == o) | finite | (np.isnan(r) & np.isnan(o)))
                if not inf_same:
                    exact = False
                    max_abs = max_rel = math.inf
                r, o = np.where(finite, r, 0.0), np.where(finite, o, 0.0)
                diff = np.abs(r - o)
                exact &= bool(np.array_equal(ref, out, equal_nan=True))
                if diff.size:
                    max_abs = max(max_abs, float(diff.max()))
                    ref_max = max(ref_max, float(np.abs(r).max()))
                    max_rel = max(max_rel, float((diff / np.maximum(np.abs(r), 1e-12)).max()))
                dot += float((r * o).sum())
                ref_sq += float((r * r).sum())
                out_sq += float((o * o).sum())
                noise_sq += float(((r - o) ** 2).sum())
                probs = class_probabilities(ref) if class_scores else None
                if probs is None:
                    class_scores = False
                else:
                    cand = np.argmax(o.reshape(probs.shape), axis=-1)
                    rows = np.arange(len(probs))
                    top1_strict += int((cand == np.argmax(probs, axis=-1)).sum())
                    top1_hits += int((probs[rows, cand] >= probs.max(axis=-1) - TIE_MARGIN).sum())
                    top1_total += len(probs)
            else:
                equal = bool(np.array_equal(ref, out))
                exact &= equal
                equal_elems += int(np.count_nonzero(ref == out))
                total_elems += ref.size
                if not equal:
                    d = np.abs(ref.astype(np.float64) - out.astype(np.float64))
                    max_abs = max(max_abs, float(d.max()) if d.size else 0.0)
                    max_rel = math.inf
                if ref.size:
                    ref_max = max(ref_max, float(np.abs(ref.astype(np.float64)).max()))
        if noise_sq == 0.0:
            sqnr = math.inf
        elif ref_sq == 0.0:
            sqnr = -math.inf
        else:
            sqnr = 10.0 * math.log10(ref_sq / noise_sq)
        if ref_sq == 0.0 and out_sq == 0.0:
            cosine = 1.0
        elif ref_sq == 0.0 or out_sq == 0.0:
            cosine = 0.0
        else:
            cosine = dot / math.sqrt(ref_sq * out_sq)
        if not shape_ok:
            cosine, sqnr = 0.0, -math.inf
        metrics[name] = OutputMetrics(
            name=name, dtype=dtype, exact=exact, shape_ok=shape_ok, max_abs=max_abs, max_rel=max_rel,
            ref_max_abs=ref_max, cosine=cosine, sqnr_db=sqnr,
            top1=(top1_hits / top1_total) if top1_total and class_scores else None,
            agreement=(equal_elems / total_elems) if total_elems else None,
            top1_strict=(top1_strict / top1_total) if top1_total and class_scores else None,
        )
    return metrics


@dataclass
class Tolerance:
    """Budget for lossless passes: ints/bools bit-equal, floats within atol + rtol * max|ref|.

    The default passes onnxruntime's own float reassociation (different fusions, summation order)
    and fails any real rewrite bug, which moves outputs by far more than 1e-4 of their range.
    """

    rtol: float = 1e-4
    atol: float = 1e-5

    def check(self, metrics: dict[str, OutputMetrics]) -> list[str]:
        problems = []
        for m in metrics.values():
            if not m.shape_ok:
                problems.append(f"output {m.name!r}: shape or presence changed")
            elif m.exact:
                continue
            elif not m.dtype.startswith(("float", "bfloat")):
                problems.append(f"output {m.name!r} ({m.dtype}): values changed (max abs diff {m.max_abs:g})")
            elif m.max_abs > self.atol + self.rtol * m.ref_max_abs:
                problems.append(
                    f"output {m.name!r}: max abs error {m.max_abs:.3g} exceeds "
                    f"{self.atol:g} + {self.rtol:g} x {m.ref_max_abs:.3g}"
                )
        return problems


@dataclass(frozen=True)
class Budget:
    """Fidelity budget for lossy passes, per output.

    Float outputs: cosine, SQNR and top-1 agreement (class-score-like outputs). Integer and bool
    outputs (labels from an ArgMax, ids): the fraction of equal elements, ``min_agreement``.
    """

    min_cosine: float = 0.99
    min_sqnr_db: float = 20.0
    min_top1: float = 0.0
    min_agreement: float = 0.99

    def updated(self, **overrides: float | None) -> Budget:
        """This budget with the given fields replaced; None leaves a field as it is."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @staticmethod
    def loosest(budgets: Sequence[Budget]) -> Budget:
        """The weakest of several budgets, field by field (what a chain of lossy passes may reach)."""
        return Budget(*(min(getattr(b, f.name) for b in budgets) for f in fields(Budget)))

    def check(self, metrics: dict[str, OutputMetrics]) -> list[str]:
        problems = []
        for m in metrics.values():
            if not m.shape_ok:
                problems.append(f"output {m.name!r}: shape or presence changed")
                continue
            if not m.dtype.startswith(("float", "bfloat")):
                if m.exact:
                    continue
                if m.agreement is None:
                    problems.append(f"output {m.name!r} ({m.dtype}): values changed")
                elif m.agreement < self.min_agreement:
                    problems.append(f"output {m.name!r} ({m.dtype}): {m.agreement:.3f} of the values agree "
                                    f"< {self.min_agreement}")
                continue
            if m.cosine < self.min_cosine:
                problems.append(f"output {m.name!r}: cosine {m.cosine:.4f} < {self.min_cosine}")
            if m.sqnr_db < self.min_sqnr_db:
                problems.append(f"output {m.name!r}: SQNR {m.sqnr_db:.1f} dB < {self.min_sqnr_db} dB")
            if m.top1 is not None and m.top1 < self.min_top1:
                problems.append(f"output {m.name!r}: top-1 agreement {m.top1:.3f} < {self.min_top1} "
                                f"(near-ties within {TIE_MARGIN} of the best class count as agreeing)")
        return problems


def summarize(metrics: dict[str, OutputMetrics]) -> dict:
    """Worst case over outputs: one line of numbers for the report."""
    floats = [m for m in metrics.values() if m.dtype.startswith(("float", "bfloat"))]
    out: dict = {"exact": all(m.exact for m in metrics.values())}
    if floats:
        out["max_abs"] = max(m.max_abs for m in floats)
        out["min_cosine"] = min(m.cosine for m in floats)
        out["min_sqnr_db"] = min(m.sqnr_db for m in floats)
        tops = [m for m in floats if m.top1 is not None]
        if tops:
            out["min_top1"] = min(m.top1 for m in tops)
            out["min_top1_strict"] = min(m.top1_strict for m in tops)
    agreements = [m.agreement for m in metrics.values() if m.agreement is not None]
    if agreements:
        out["min_agreement"] = min(agreements)
    return out


def ensure_runs(model: onnx.ModelProto, feed: Feed, what: str) -> None:
    """Raise ValidationError if onnxruntime cannot run ``model`` on ``feed``."""
    try:
        runner = OrtRunner(model)
        runner.run(feed)
        runner.close()
    except Exception as exc:
        raise ValidationError(f"{what}: onnxruntime cannot run it: {short_error(exc)}") from None


