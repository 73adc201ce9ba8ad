"""The library entry point: ``optimize()`` loads, runs a pipeline with validation, and saves.

Data flow: source -> load -> fix input shapes (if asked) -> validation set -> PassManager -> save.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from onnxopt.context import PassContext
from onnxopt.data import Feed, NpzData, check_shape_overrides, input_specs
from onnxopt.errors import OnnxOptError, UsageError
from onnxopt.feeds import ValidationSet, build_validation_set, open_runner
from onnxopt.images import ImageFolderData, ImagePreprocess
from onnxopt.manager import PassManager
from onnxopt.model import ModelSource, load, save
from onnxopt.passes_api import Pass
from onnxopt.registry import make_pipeline
from onnxopt.report import RunReport
from onnxopt.validate import Budget, Tolerance

log = logging.getLogger(__name__)

#: at most this many calibration samples are held apart for validation when no validation data is given
HELD_OUT_MAX = 8


@dataclass
class OptimizeResult:
    """The optimized model and the report of how it was made and validated."""

    model: onnx.ModelProto
    report: RunReport


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """Copy of ``model`` whose named graph inputs have the given static shapes (``--input-shape``)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for vi in fixed.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[vi.name]:
                dims.add().dim_value = d
    return fixed


def open_data(path: str | os.PathLike, specs: list, image_preprocess: ImagePreprocess | None
              ) -> NpzData | ImageFolderData:
    """An .npz file (GUIDE §5) or a folder of images (with ``image_preprocess``, default: plain [0,1] RGB)."""
    if Path(os.fspath(path)).is_dir():
        return ImageFolderData(path, specs, image_preprocess or ImagePreprocess())
    return NpzData(path, specs)


def _split_calibration(
    calib: NpzData | ImageFolderData, validation_given: bool
) -> tuple[list[int], list[int]]:
    """Indices for calibration and held-out validation (every k-th sample held out, at most HELD_OUT_MAX)."""
    n = len(calib)
    if validation_given or n < 5:
        return list(range(n)), []
    held = min(HELD_OUT_MAX, max(1, n // 5))
    step = n / held
    val = sorted({int(i * step + step / 2) for i in range(held)})
    cal = [i for i in range(n) if i not in set(val)]
    return cal, val


def _errors_name_the_input(fn: Callable[..., OptimizeResult]) -> Callable[..., OptimizeResult]:
    """Every :class:`~onnxopt.errors.OnnxOptError` names the file it is about: messages that name no
    file (a pass that failed validation, a model onnxruntime rejects) get the input path in front."""

    @functools.wraps(fn)
    def wrapper(source: ModelSource, output: str | os.PathLike | None = None, **kwargs) -> OptimizeResult:
        try:
            return fn(source, output, **kwargs)
        except OnnxOptError as exc:
            if isinstance(source, (str, os.PathLike)):
                message = str(exc)
                named = [os.fspath(p) for p in (source, output, kwargs.get("calibration"),
                                                kwargs.get("validation_data")) if isinstance(p, (str, os.PathLike))]
                if not any(n in message for n in named):
                    exc.args = (f"{os.fspath(source)}: {message}",)
            raise

    return wrapper


@_errors_name_the_input
def optimize(
    source: ModelSource,
    output: str | os.PathLike | None = None,
    *,
    passes: Sequence[str | Pass] | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    validation_data: str | os.PathLike | Sequence[Feed] | None = None,
    calibration: str | os.PathLike | None = None,
    validate: str = "each",
    samples: int = 4,
    seed: int = 0,
    int_high: int = 16,
    tolerance: Tolerance | None = None,
    budget: Budget | None = None,
    run_budget: Budget | None = None,
    budget_overrides: dict[str, float | None] | None = None,
    keep_going: bool = False,
    image_preprocess: ImagePreprocess | None = None,
    pack: bool = False,
    pack_codecs: Sequence[str] | None = None,
    options: dict | None = None,
) -> OptimizeResult:
    """Optimize a model with a validated pipeline; write it to ``output`` (atomically) if given.

    ``passes``: pass names or Pass instances (default: the lossless pipeline). ``calibration`` and
    ``validation_data`` are .npz files or folders of images (see ``image_preprocess``). ``pack`` writes a
    packed model (lossless entropy-coded weights; ``onnxopt.load`` reads it back), with the codecs
    ``pack_codecs`` allows (default: all). Lossy passes are
    validated against ``budget`` if given, else their own (``Pass.budget``) or the default, with
    ``budget_overrides`` (field name -> value) applied on top. The input is never
    modified. Raises an :class:`~onnxopt.errors.OnnxOptError` subclass on any failure, in which case
    nothing is written.
    """
    start = time.perf_counter()
    report = RunReport(input=str(source) if isinstance(source, (str, os.PathLike)) else "<model>",
                       output=str(output) if output is not None else "")
    if validate not in ("each", "end", "off"):
        raise UsageError(f"validate must be each, end or off, got {validate!r}")
    if samples < 1:
        raise UsageError(f"samples must be >= 1, got {samples}")
    pipeline = [make_pipeline([p])[0] if isinstance(p, str) else p for p in (passes or [])] if passes is not None \
        else make_pipeline()
    if output is not None:
        out_dir = Path(os.fspath(output)).parent
        if str(out_dir) and not out_dir.is_dir():
            from onnxopt.errors import OutputError

            raise OutputError(f"{output}: output folder {str(out_dir)!r} does not exist")

    model = load(source)
    specs = input_specs(model)
    if input_shapes:
        check_shape_overrides(specs, input_shapes)
        model = fix_input_shapes(model, input_shapes)
        specs = input_specs(model)

    calib_data = open_data(calibration, specs, image_preprocess) if calibration is not None else None
    cal_idx, held_idx = _split_calibration(calib_data, validation_data is not None) if calib_data else ([], [])

    validation: ValidationSet | None = None
    if validate != "off":
        runner = open_runner(model)
        if validation_data is not None:
            if isinstance(validation_data, (str, os.PathLike)):
                data = open_data(validation_data, specs, image_preprocess)
                validation = build_validation_set(model, data=data, data_source=str(validation_data),
                                                  count=max(samples, len(data)), runner=runner)
            else:
                validation = build_validation_set(model, data=list(validation_data), data_source="feeds",
                                                  runner=runner)
        elif calib_data is not None and held_idx:
            validation = build_validation_set(
                model, data=calib_data.subset(held_idx),
                data_source=f"{calibration} ({len(held_idx)} samples held apart from calibration)", runner=runner)
        else:
            validation = build_validation_set(model, shapes=input_shapes, count=samples, seed=seed,
                                              int_high=int_high, runner=runner)
        runner.close()
        gc.collect()  # release onnxruntime's copy of the weights before the passes run
        report.validation_data = validation.describe()
        report.validation_synthetic = validation.synthetic
        report.validation_shapes = {k: list(v) for k, v in validation.shapes.items()}
        report.notes.extend(validation.notes)

    def calibration_feeds() -> Iterator[Feed]:
        assert calib_data is not None
        for i in cal_idx:
            yield calib_data.get(i)

    context = PassContext(
        model=model,
        input_shapes=validation.shapes if validation else dict(input_shapes or {}),
        validation_feeds=validation.feeds if validation else (),
        calibration=calibration_feeds if calib_data is not None else None,
        calibration_source=str(calibration) if calibration else "synthetic",
        seed=seed,
        options=dict(options or {}),
    )
    manager = PassManager(pipeline, validate=validate, tolerance=tolerance, budget=budget,
                          run_budget=run_budget, budget_overrides=budget_overrides, keep_going=keep_going)
    holder = [model]
    del model  # the manager holds the only reference: the original can be freed once a pass replaces it
    try:
        result_model, report = manager.run(holder.pop(), context, validation, report)
    except OnnxOptError as exc:
        report.ok = False
        report.error = str(exc)
        report.seconds = time.perf_counter() - start
        exc.report = report  # type: ignore[attr-defined]
        raise
    if pack:
        from onnxopt.packing import pack_file, pack_model

        if output is not None:  # written as it is coded: large tensors are never held coded
            packed = pack_file(result_model, output, codecs=pack_codecs)
        else:
            packed = pack_model(result_model, codecs=pack_codecs)
        report.extra["pack"] = packed.to_dict()
    elif output is not None:
        save(result_model, output)
    if output is not None:
        report.file_bytes_after = Path(os.fspath(output)).stat().st_size
    report.seconds = time.perf_counter() - start
    return OptimizeResult(result_model, report)
