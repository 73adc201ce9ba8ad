"""PassManager: run passes, snapshot, validate against onnxruntime, roll back, report.

For each pass: the current ModelProto is the snapshot (passes edit a graphsurgeon graph imported from
it, never the proto itself; weights come in as read-only arrays). After a pass that says it modified
the graph, the exported model is checked, run in onnxruntime CPU, and compared
- with the previous stage, against the pass's own budget (tight tolerance for EXACT/NUMERIC passes,
  the lossy budget for LOSSY ones), and
- with the original, against the whole-run budget, so small lossy errors cannot add up unseen.
A lossless pass that fails is rolled back and the run goes on; a lossy pass that fails stops the run
with ValidationError unless ``keep_going``.
"""

from __future__ import annotations

import gc
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import onnx

from onnxopt.context import PassContext
from onnxopt.errors import OnnxOptError, PassError, ValidationError
from onnxopt.feeds import ValidationSet
from onnxopt.model import (
    check_model,
    copy_fields,
    default_opset,
    load,
    node_count,
    quiet_graphsurgeon,
    save,
    to_graph,
    to_model,
    upgrade_opset,
    weight_bytes,
)
from onnxopt.passes_api import Kind, Pass, PassResult
from onnxopt.progress import Progress
from onnxopt.report import PassReport, RunReport
from onnxopt.validate import Budget, OrtRunner, Outputs, Tolerance, compare_outputs, short_error, summarize

log = logging.getLogger(__name__)

VALIDATE_MODES = ("each", "end", "off")


BUDGET_ADVICE = ("to accept more loss give a lower --min-cosine/--min-sqnr (or --min-top1/--min-agreement), "
                 "or add --keep-going to skip the pass")

#: above this many weight bytes the rollback snapshot waits on disk while onnxruntime validates a pass,
#: so memory holds the candidate and onnxruntime's copy of it, not a third copy (issue 7: peak RSS)
SPILL_SNAPSHOT_BYTES = 512 * 2**20


class _Snapshot:
    """The model a pass started from, kept for a rollback while its candidate is validated: in memory,
    or (``spill``) written to a temp folder with external data and dropped from memory until taken."""

    def __init__(self, model: onnx.ModelProto, *, spill: bool):
        self._model: onnx.ModelProto | None = model
        self._dir: tempfile.TemporaryDirectory | None = None
        if spill:
            self._dir = tempfile.TemporaryDirectory(prefix="onnxopt-snapshot-")
            try:
                save(model, self._path, external_data=True)
            except OnnxOptError as exc:  # the temp folder cannot take it: it stays in memory
                log.warning("keeping the rollback snapshot in memory: %s", exc)
                self.drop()
                return
            self._model = None

    @property
    def _path(self) -> Path:
        assert self._dir is not None
        return Path(self._dir.name) / "snapshot.onnx"

    @property
    def spilled(self) -> bool:
        return self._model is None

    def take(self) -> onnx.ModelProto:
        """The snapshot, read back if it was spilled; the temp folder goes."""
        try:
            return self._model if self._model is not None else load(self._path, check=False)
        finally:
            self.drop()

    def drop(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


class PassManager:
    """Runs a list of passes over a model with validation after each (see module docstring)."""

    def __init__(
        self,
        passes: Sequence[Pass],
        *,
        validate: str = "each",
        tolerance: Tolerance | None = None,
        budget: Budget | None = None,
        run_budget: Budget | None = None,
        budget_overrides: dict[str, float | None] | None = None,
        keep_going: bool = False,
    ):
        """``budget`` replaces every lossy pass's own budget; ``budget_overrides`` (the user's --min-*
        flags: min_cosine, min_sqnr_db, min_top1, min_agreement) replace single fields of it. The
        whole-run budget is ``run_budget`` or else the loosest budget of the pipeline's lossy passes.
        """
        if validate not in VALIDATE_MODES:
            raise ValueError(f"validate must be one of {VALIDATE_MODES}, got {validate!r}")
        self.passes = list(passes)
        self.validate = validate
        self.tolerance = tolerance or Tolerance()
        self.budget = budget
        self.budget_overrides = dict(budget_overrides or {})
        lossy = [self.budget_for(p) for p in self.passes if p.kind is Kind.LOSSY]
        self.run_budget = run_budget or Budget.loosest(lossy or [self.budget_for(None)])
        self.keep_going = keep_going

    def budget_for(self, p: Pass | None) -> Budget:
        """The budget a lossy pass is validated against: given budget > the pass's own > default."""
        base = self.budget or (p.budget if p is not None else None) or Budget()
        return base.updated(**self.budget_overrides)

    # ------------------------------------------------------------------ running

    def run(
        self,
        model: onnx.ModelProto,
        context: PassContext,
        validation: ValidationSet | None,
        report: RunReport | None = None,
    ) -> tuple[onnx.ModelProto, RunReport]:
        """Run every pass; returns the final model and the filled report (raises on lossy failure)."""
        report = report or RunReport()
        report.validation_mode = self.validate if validation is not None else "off"
        report.nodes_before = node_count(model)
        report.weight_bytes_before = weight_bytes(model)
        start = time.perf_counter()
        box = [model]
        del model  # only ``box`` keeps the input alive, so _run_one may spill it to disk and drop it
        previous_outputs: list[Outputs] | None = validation.reference if validation else None
        for p in self.passes:
            context.model = None  # type: ignore[assignment]
            current, previous_outputs = self._run_one(p, box, context, validation, previous_outputs, report)
            context.model = current  # not the previous snapshot: it may be freed now
            box.append(current)
            del current
            gc.collect()  # graphsurgeon graphs are cycles that keep the previous model's weights alive
        current = box.pop()
        if validation is not None and self.validate != "off":
            self._final_check(current, validation, report, previous_outputs)
        report.nodes_after = node_count(current)
        report.weight_bytes_after = weight_bytes(current)
        report.seconds += time.perf_counter() - start
        return current, report

    def _run_one(
        self,
        p: Pass,
        box: list[onnx.ModelProto],
        context: PassContext,
        validation: ValidationSet | None,
        previous_outputs: list[Outputs] | None,
        report: RunReport,
    ) -> tuple[onnx.ModelProto, list[Outputs] | None]:
        """Apply one pass to the model in ``box`` (taken out of it) and validate; returns the model to go on with."""
        current: onnx.ModelProto | None = box.pop()
        entry = PassReport(
            name=p.name, kind=p.kind.value, status="unchanged", modified=False, seconds=0.0,
            nodes_before=node_count(current), nodes_after=node_count(current),
            weight_bytes_before=weight_bytes(current), weight_bytes_after=weight_bytes(current),
        )
        report.passes.append(entry)
        log.info("pass %s ...", p.name)
        # a pass that copies the weights (quantize-int8) may drop the model it starts from when that is
        # large: the rollback snapshot goes to disk first and only the context refers to the model
        handover: _Snapshot | None = None
        if p.releases_input and entry.weight_bytes_before > SPILL_SNAPSHOT_BYTES:
            handover = _Snapshot(current, spill=True)
            if not handover.spilled:
                handover = None
        given = [current]
        if handover is not None:
            current = None

        def start_model() -> onnx.ModelProto:
            """The model the pass started from: still in memory, or read back from the snapshot."""
            if handover is None:
                return current
            try:
                return context.model if context.model is not None else handover.take()
            finally:
                handover.drop()

        t0 = time.perf_counter()
        try:
            candidate, result = self._apply(p, given, context, releasable=handover is not None)
        except OnnxOptError as exc:
            entry.seconds = time.perf_counter() - t0
            return self._reject(p, entry, start_model(), previous_outputs, f"error: {exc}", exc)
        except Exception as exc:  # a bug in a pass must not take the run down with it
            entry.seconds = time.perf_counter() - t0
            log.debug("pass %s raised", p.name, exc_info=True)
            return self._reject(p, entry, start_model(), previous_outputs,
                                f"internal error: {type(exc).__name__}: {exc}", PassError(str(exc)))
        finally:
            context.model_releasable = False
        entry.seconds = time.perf_counter() - t0
        entry.stats = result.stats
        if not result.modified or candidate is None:
            return start_model(), previous_outputs
        entry.modified = True
        entry.nodes_after = node_count(candidate)
        entry.weight_bytes_after = weight_bytes(candidate)
        if validation is None or self.validate != "each":
            entry.status = "applied" if validation is None or self.validate == "off" else "applied (unvalidated)"
            context.invalidate()
            if handover is not None:
                handover.drop()
            return candidate, previous_outputs
        t1 = time.perf_counter()
        snapshot = handover or _Snapshot(current, spill=weight_bytes(candidate) > SPILL_SNAPSHOT_BYTES)
        context.model = None  # type: ignore[assignment]
        current = None  # a spilled snapshot gives onnxruntime the memory it held; a rollback reads it back
        if snapshot.spilled:
            gc.collect()  # the pass's graphsurgeon graph (a cycle) still refers to the snapshot's tensors
        try:
            outputs = self._run_ort(candidate, validation, p.name)
        except ValidationError as exc:
            entry.validation_seconds = time.perf_counter() - t1
            del candidate
            return self._reject(p, entry, snapshot.take(), previous_outputs, str(exc), exc)
        entry.validation_seconds = time.perf_counter() - t1
        vs_prev = compare_outputs(previous_outputs or validation.reference, outputs)
        vs_orig = compare_outputs(validation.reference, outputs)
        entry.vs_previous = summarize(vs_prev)
        entry.vs_original = summarize(vs_orig)
        if p.kind.lossless:
            problems = self.tolerance.check(vs_prev)
        else:
            problems = self.budget_for(p).check(vs_prev) + [f"whole run: {m}" for m in self.run_budget.check(vs_orig)]
        if problems:
            del candidate
            return self._reject(p, entry, snapshot.take(), previous_outputs, "; ".join(problems),
                                ValidationError(f"pass {p.name!r} failed validation: {problems[0]}",
                                                advice=BUDGET_ADVICE))
        snapshot.drop()
        entry.status = "applied"
        context.invalidate()
        return candidate, outputs

    def _apply(self, p: Pass, given: list[onnx.ModelProto], context: PassContext, *, releasable: bool = False
               ) -> tuple[onnx.ModelProto | None, PassResult]:
        """Run ``p`` on the model in ``given`` (taken out of it, so with ``releasable`` the context holds
        the only reference) and export its graph; None when the pass changed nothing."""
        base = given.pop()
        if p.min_opset and default_opset(base) < p.min_opset:
            base = upgrade_opset(base, p.min_opset)
        graph = to_graph(base, infer=p.needs_shapes)
        if p.min_opset and graph.opset < p.min_opset:
            graph.opset = p.min_opset
        context.model = base
        context.model_releasable = releasable
        like = copy_fields(base, onnx.ModelProto(), skip="graph")  # what to_model keeps of the model
        del base
        with quiet_graphsurgeon():
            result = p.run(graph, context)
        if not isinstance(result, PassResult):
            raise PassError(f"pass {p.name!r} returned {type(result).__name__}, not PassResult")
        if not result.modified:
            return None, result
        with quiet_graphsurgeon():
            graph.toposort(recurse_subgraphs=True)
        candidate = to_model(graph, like=like)
        check_model(candidate, f"model after pass {p.name!r}")
        return candidate, result

    def _reject(
        self,
        p: Pass,
        entry: PassReport,
        current: onnx.ModelProto,
        previous_outputs: list[Outputs] | None,
        message: str,
        exc: OnnxOptError,
    ) -> tuple[onnx.ModelProto, list[Outputs] | None]:
        """Roll a lossless pass back (run goes on); fail the run for a lossy one unless keep_going."""
        entry.nodes_after = entry.nodes_before
        entry.weight_bytes_after = entry.weight_bytes_before
        entry.message = message
        if p.kind is Kind.LOSSY and not self.keep_going:
            entry.status = "failed"
            raise exc
        entry.status = "rolled-back"
        log.warning("pass %s rolled back: %s", p.name, message)
        return current, previous_outputs

    def _run_ort(self, model: onnx.ModelProto, validation: ValidationSet, what: str) -> list[Outputs]:
        try:
            runner = OrtRunner(model)
        except Exception as exc:
            msg = f"model after pass {what!r} does not load in onnxruntime: {short_error(exc)}"
            raise ValidationError(msg) from None
        outputs = []
        with Progress(len(validation.feeds), f"validating {what}") as bar:
            for feed in validation.feeds:
                try:
                    outputs.append(runner.run(feed))
                except Exception as exc:
                    msg = f"model after pass {what!r} fails in onnxruntime: {short_error(exc)}"
                    raise ValidationError(msg) from None
                bar.advance()
        runner.close()
        return outputs

    def _final_check(self, model: onnx.ModelProto, validation: ValidationSet, report: RunReport,
                     last_outputs: list[Outputs] | None) -> None:
        """Compare the final model with the original; for ``--validate end`` this is the only check."""
        if self.validate == "each" and last_outputs is not None:
            outputs = last_outputs
        else:
            outputs = self._run_ort(model, validation, "final model")
        metrics = compare_outputs(validation.reference, outputs)
        report.final = summarize(metrics)
        report.final_outputs = {k: v.to_dict() for k, v in metrics.items()}
        lossy = any(p.kind == Kind.LOSSY.value and p.status.startswith("applied") for p in report.passes)
        problems = self.run_budget.check(metrics) if lossy else Tolerance(
            self.tolerance.rtol * 4, self.tolerance.atol * 4).check(metrics)
        if problems:
            advice = BUDGET_ADVICE if lossy else None  # None: the class's (loosen --rtol/--atol, ...)
            if lossy and self.validate != "each":
                advice += " (run with --validate each to find the pass)"
            raise ValidationError(f"final model differs from the original: {problems[0]}", advice=advice)
