"""Validation feeds: which data validates a run, and at which concrete input shapes.

User data (``--validation-data``, or samples held apart from ``--calibration``) is used as given.
Otherwise feeds are synthetic and seeded. Dynamic dims come from ``--input-shape`` when given; else
batch-like dims get 1 and the others are tried with small defaults until the original model runs
in onnxruntime. Only when nothing runs is it an error naming the inputs that need ``--input-shape``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import onnx

from onnxopt.data import Feed, InputSpec, NpzData, concrete_shape, input_specs, is_batch_like, synthetic_feeds
from onnxopt.errors import BadDataError, BadModelError
from onnxopt.validate import OrtRunner, Outputs, short_error

log = logging.getLogger(__name__)

SYNTHETIC_FAILS_ADVICE = "give real inputs with --validation-data, or fix dynamic dims with --input-shape"

#: sizes tried, in order, for dynamic non-batch dims (GUIDE §3)
DEFAULT_DIM_CANDIDATES = (64, 32, 128, 224, 16, 8, 256, 1)
#: integer inputs are tried with these exclusive upper bounds after the configured one
INT_HIGH_FALLBACKS = (2, 1)


@dataclass
class ValidationSet:
    """Feeds plus the original model's outputs on them, and a description for the report."""

    feeds: list[Feed]
    reference: list[Outputs]
    source: str  # "synthetic" or "user:<path>"
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"

    def describe(self) -> str:
        shapes = "; ".join(f"{k}=[{','.join(map(str, v))}]" for k, v in self.shapes.items())
        what = "SYNTHETIC data (random inputs; says little about lossy passes)" if self.synthetic else (
            f"user data {self.source[5:]}")
        return f"{len(self.feeds)} samples of {what}; shapes {shapes}"


def _feed_shapes(feed: Feed) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in feed.items()}


def open_runner(model: onnx.ModelProto, what: str = "input model") -> OrtRunner:
    try:
        return OrtRunner(model)
    except Exception as exc:
        raise BadModelError(f"{what}: onnxruntime cannot load it: {short_error(exc)}",
                            advice="the model must run on onnxruntime's CPU provider: check its opsets and "
                                   "custom ops") from None


def build_validation_set(
    model: onnx.ModelProto,
    *,
    shapes: dict[str, tuple[int, ...]] | None = None,
    data: NpzData | Sequence[Feed] | None = None,  # or anything with __len__ and subset(indices)
    data_source: str = "",
    count: int = 4,
    seed: int = 0,
    int_high: int = 16,
    runner: OrtRunner | None = None,
) -> ValidationSet:
    """Pick feeds for ``model`` and compute its reference outputs in onnxruntime."""
    runner = runner or open_runner(model)
    specs = input_specs(model)
    if data is not None:
        feeds = data.subset(range(min(count, len(data)))) if hasattr(data, "subset") else list(data)
        try:
            reference = runner.run_all(feeds)
        except Exception as exc:
            raise BadDataError(f"{data_source or 'data'}: the original model fails on it: {short_error(exc)}") from None
        return ValidationSet(feeds, reference, f"user:{data_source}", _feed_shapes(feeds[0]))
    resolved, int_high_used = probe_shapes(runner, specs, shapes or {}, seed, int_high)
    feeds = synthetic_feeds(specs, resolved, count, seed, int_high_used)
    try:
        reference = runner.run_all(feeds)
    except Exception as exc:
        raise BadModelError(f"input model: onnxruntime fails on synthetic feeds: {short_error(exc)}",
                            advice=SYNTHETIC_FAILS_ADVICE) from None
    vs = ValidationSet(feeds, reference, "synthetic", resolved)
    if int_high_used != int_high:
        vs.notes.append(f"integer inputs drawn from [0, {int_high_used}) (the model rejected [0, {int_high}))")
    return vs


def candidate_shapes(
    specs: Sequence[InputSpec], overrides: dict[str, tuple[int, ...]], fills: Sequence[int]
) -> Iterator[dict[str, tuple[int, ...]]]:
    """Shape assignments to try, in order: for each fill value, every free non-batch dim set to it, then
    the same with one of those dims set to 1 instead (an unnamed dim that is really a batch dim,
    like a recurrent state's ``[layers, batch, hidden]``)."""
    seen: set[tuple] = set()
    for fill in fills:
        base = {s.name: overrides.get(s.name) or concrete_shape(s, fill) for s in specs}
        variants = [base]
        for s in specs:
            if s.name in overrides or s.shape is None:
                continue
            for axis, dim in enumerate(s.shape):
                if not (isinstance(dim, int) and dim >= 0) and not is_batch_like(dim, axis) and fill != 1:
                    shape = list(base[s.name])
                    shape[axis] = 1
                    variants.append({**base, s.name: tuple(shape)})
        for v in variants:
            key = tuple(v.values())  # same input order every time
            if key not in seen:
                seen.add(key)
                yield v


def probe_shapes(
    runner: OrtRunner,
    specs: Sequence[InputSpec],
    overrides: dict[str, tuple[int, ...]],
    seed: int,
    int_high: int,
) -> tuple[dict[str, tuple[int, ...]], int]:
    """Find concrete shapes (and an integer range) on which the original model runs."""
    free = [s for s in specs if s.name not in overrides and not s.is_static]
    for s in specs:
        if s.shape is None and s.name not in overrides:
            raise BadDataError(f"input {s.name!r} has unknown rank; give it with --input-shape {s.name}=D1,D2,...",
                               advice="")
    fills: Sequence[int] = DEFAULT_DIM_CANDIDATES if free else (1,)
    has_int = any(s.dtype.kind in "iu" for s in specs)
    highs = [int_high] + [h for h in INT_HIGH_FALLBACKS if has_int and h < int_high]
    errors: list[str] = []
    for shapes in candidate_shapes(specs, overrides, fills):
        for high in highs:
            feed = synthetic_feeds(specs, shapes, 1, seed, high)[0]
            try:
                runner.run(feed)
            except Exception as exc:
                errors.append(f"{shapes}: {short_error(exc)}")
                continue
            if free:
                log.info("dynamic dims resolved to %s", shapes)
            return shapes, high
    last = errors[-1] if errors else "no attempt"
    if free:
        names = ", ".join(f"{s.describe()}" for s in free)
        raise BadDataError(
            f"could not find input shapes on which the model runs (tried {list(fills)} for dynamic dims); "
            f"give them with --input-shape for: {names}. Last error: {last}", advice=""
        )
    raise BadModelError(f"input model: onnxruntime fails on synthetic feeds: {last}", advice=SYNTHETIC_FAILS_ADVICE)
