"""Streaming activation statistics through onnxruntime.

Intermediate tensors are exposed as extra graph outputs of a copy of the model; samples are run one
at a time and folded into running statistics, so memory stays bounded whatever the number of
samples: min/max, a histogram whose range grows by exact bin merging, and per-channel means.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxopt.data import Feed
from onnxopt.progress import Progress
from onnxopt.validate import OrtRunner

log = logging.getLogger(__name__)

DEFAULT_BINS = 2048  # a multiple of 4, so doubling the range merges bins exactly


@dataclass
class TensorStats:
    """Running statistics of one tensor over all samples seen.

    ``hist`` counts values in ``[-bound, bound]`` with ``len(hist)`` equal bins; ``bound`` doubles (and
    pairs of bins merge) whenever a sample exceeds it, so no value is ever clipped or dropped.
    ``channel_abs_mean`` is the mean |x| per channel along ``channel_axis`` (when asked for).
    """

    name: str
    bins: int = DEFAULT_BINS
    count: int = 0
    min: float = np.inf
    max: float = -np.inf
    bound: float = 0.0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    channel_axis: int | None = None
    channel_abs_sum: np.ndarray | None = None
    channel_count: int = 0

    def update(self, x: np.ndarray) -> None:
        if x.size == 0 or not np.issubdtype(x.dtype, np.floating):
            return
        x = np.asarray(x, np.float32)
        finite = x[np.isfinite(x)] if not np.isfinite(x).all() else x.reshape(-1)
        if finite.size == 0:
            return
        lo, hi = float(finite.min()), float(finite.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += finite.size
        self._grow(max(abs(lo), abs(hi)))
        # scale first: |x| <= bound, so x * scale stays within +-bins/2 even for values near float32's max
        scale = np.float32(self.bins / (2 * self.bound))
        idx = np.clip((finite * scale + np.float32(self.bins / 2)).astype(np.int64), 0, self.bins - 1)
        self.hist += np.bincount(idx, minlength=self.bins)
        if self.channel_axis is not None and x.ndim > self.channel_axis:
            axes = tuple(i for i in range(x.ndim) if i != self.channel_axis)
            s = np.abs(x).sum(axis=axes, dtype=np.float64)
            self.channel_abs_sum = s if self.channel_abs_sum is None else self.channel_abs_sum + s
            self.channel_count += x.size // x.shape[self.channel_axis]

    def _grow(self, absmax: float) -> None:
        if self.hist.size == 0:
            self.hist = np.zeros(self.bins, np.int64)
            self.bound = float(2.0 ** np.ceil(np.log2(max(absmax, 1e-30))))
            return
        while absmax > self.bound:
            merged = self.hist.reshape(-1, 2).sum(axis=1)  # pairs of old bins -> one bin of twice the width
            new = np.zeros(self.bins, np.int64)
            q = self.bins // 4
            new[q : q + merged.size] = merged
            self.hist, self.bound = new, self.bound * 2

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.bound, self.bound, self.bins + 1)

    @property
    def channel_abs_mean(self) -> np.ndarray | None:
        if self.channel_abs_sum is None or not self.channel_count:
            return None
        return self.channel_abs_sum / self.channel_count


def stream_activations(
    model: onnx.ModelProto, names: Sequence[str], feeds: Iterable[Feed], *, total: int | None = None,
    desc: str = "collecting activations",
) -> Iterator[dict[str, np.ndarray]]:
    """Yield, for each feed in turn, the values of the named tensors (graph inputs included)."""
    input_names = {i.name for i in model.graph.input}
    runner = OrtRunner(model, extra_outputs=[n for n in names if n not in input_names])
    try:
        with Progress(total or 0, desc) as bar:
            for feed in feeds:
                out = runner.run(feed)
                yield {n: (feed[n] if n in feed else out[n]) for n in names}
                bar.advance()
    finally:
        runner.close()


def collect_stats(
    model: onnx.ModelProto,
    names: Sequence[str],
    feeds: Iterable[Feed],
    *,
    bins: int = DEFAULT_BINS,
    channel_axis: dict[str, int] | None = None,
    total: int | None = None,
) -> dict[str, TensorStats]:
    """Stream ``feeds`` through ``model`` and return running statistics for each named tensor."""
    if bins % 4:
        raise ValueError("bins must be a multiple of 4")
    stats = {n: TensorStats(n, bins=bins, channel_axis=(channel_axis or {}).get(n)) for n in names}
    for values in stream_activations(model, names, feeds, total=total, desc="calibrating"):
        for n, v in values.items():
            stats[n].update(np.asarray(v))
    return stats
