"""Calibration: activation ranges from streamed histograms, and quantization parameters.

Every method works on :class:`onnxopt.activations.TensorStats` (running min/max and a histogram over
``[-bound, bound]`` that grows by exact bin merging), so memory is bounded by the number of bins,
whatever the number of calibration samples. All methods return a range ``(lo, hi)`` with
``lo <= 0 <= hi`` for asymmetric uint8 quantization:

- ``minmax``: the observed range;
- ``percentile``: each tail clipped at ``100 - percentile`` percent of the values (as onnxruntime's
  percentile calibrator does for asymmetric ranges);
- ``entropy``: the range minimizing KL(P || Q) between the clipped histogram P and its 256-level
  quantized version Q (TensorRT's method, extended to asymmetric ranges);
- ``mse``: the range minimizing the expected squared quantization error (rounding noise inside the
  range plus clipping error outside), searched jointly over both ends.

Weights are quantized symmetric int8 per output channel (``quantize_weight``), with the scale either
max-abs or MSE-optimal clipping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxopt.errors import UsageError

METHODS = ("minmax", "percentile", "entropy", "mse")
QMAX_U8 = 255
QMAX_S8 = 127


@dataclass(frozen=True)
class QParams:
    """Per-tensor uint8 affine quantization: ``x = scale * (q - zero_point)``."""

    scale: float
    zero_point: int

    @property
    def lo(self) -> float:
        return self.scale * (0 - self.zero_point)

    @property
    def hi(self) -> float:
        return self.scale * (QMAX_U8 - self.zero_point)


def qparams_u8(lo: float, hi: float) -> QParams:
    """uint8 parameters covering ``[lo, hi]`` (widened to include 0 so that 0 is exact)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError(f"non-finite range [{lo}, {hi}]")
    span = hi - lo
    if span <= 0.0 or span < 1e-30:
        return QParams(1.0, 0)  # constant-zero tensor: any scale represents it exactly
    scale = np.float32(span / QMAX_U8)
    scale = float(max(scale, np.float32(1e-12)))
    zp = int(np.clip(round(-lo / scale), 0, QMAX_U8))
    return QParams(scale, zp)


# ----------------------------------------------------------------------------- histogram helpers


def _hist(stats) -> tuple[np.ndarray, np.ndarray]:
    """(counts, bin centers) of a TensorStats histogram as float64."""
    counts = np.asarray(stats.hist, np.float64)
    edges = np.linspace(-stats.bound, stats.bound, counts.size + 1)
    return counts, 0.5 * (edges[:-1] + edges[1:])


def _observed(stats) -> tuple[float, float]:
    if stats.count == 0 or not np.isfinite(stats.min) or not np.isfinite(stats.max):
        raise ValueError(f"tensor {stats.name!r}: no finite values seen during calibration")
    return min(float(stats.min), 0.0), max(float(stats.max), 0.0)


def range_minmax(stats) -> tuple[float, float]:
    return _observed(stats)


def range_percentile(stats, percentile: float = 99.999) -> tuple[float, float]:
    """Clip each tail at ``(100 - percentile)%`` of the values, never beyond the observed range."""
    if not 50.0 < percentile <= 100.0:
        raise UsageError(f"percentile must be in (50, 100], got {percentile}")
    lo0, hi0 = _observed(stats)
    counts, _ = _hist(stats)
    total = counts.sum()
    if total == 0:
        return lo0, hi0
    edges = np.linspace(-stats.bound, stats.bound, counts.size + 1)
    cdf = np.cumsum(counts) / total
    tail = 1.0 - percentile / 100.0
    i_hi = int(np.searchsorted(cdf, 1.0 - tail))  # first bin where cdf >= 1 - tail
    i_lo = int(np.searchsorted(cdf, tail, side="right"))  # first bin where cdf > tail
    hi = min(hi0, float(edges[min(i_hi + 1, counts.size)]))
    lo = max(lo0, float(edges[i_lo]))
    return min(lo, 0.0), max(hi, 0.0)


class _Prefix:
    """Prefix sums of a histogram (counts, counts*x, counts*x^2) for O(log n) range errors."""

    def __init__(self, counts: np.ndarray, centers: np.ndarray):
        self.x = centers
        self.c = np.concatenate([[0.0], np.cumsum(counts)])
        self.cx = np.concatenate([[0.0], np.cumsum(counts * centers)])
        self.cxx = np.concatenate([[0.0], np.cumsum(counts * centers * centers)])

    def error(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Expected squared uint8 quantization error on [lo, hi], for arrays of candidates.

        Inside the range: rounding noise ``s^2 / 12``; below ``lo`` / above ``hi``: squared distance
        to the clipping edge, summed exactly from the prefix sums.
        """
        i = np.searchsorted(self.x, lo, side="left")  # bins strictly below lo: [0, i)
        j = np.searchsorted(self.x, hi, side="right")  # bins above hi: [j, n)
        n_lo, sx_lo, sxx_lo = self.c[i], self.cx[i], self.cxx[i]
        n_hi = self.c[-1] - self.c[j]
        sx_hi = self.cx[-1] - self.cx[j]
        sxx_hi = self.cxx[-1] - self.cxx[j]
        below = sxx_lo - 2 * lo * sx_lo + lo * lo * n_lo
        above = sxx_hi - 2 * hi * sx_hi + hi * hi * n_hi
        inside = self.c[j] - self.c[i]
        s = (hi - lo) / QMAX_U8
        return below + above + inside * s * s / 12.0


def range_mse(stats, grid: int = 96) -> tuple[float, float]:
    """Range minimizing the expected squared quantization error, both ends searched jointly."""
    lo0, hi0 = _observed(stats)
    counts, centers = _hist(stats)
    if counts.sum() == 0 or hi0 - lo0 <= 0:
        return lo0, hi0
    pre = _Prefix(counts, centers)
    f = np.concatenate([[0.0], np.geomspace(0.01, 1.0, grid)])
    los = lo0 * f if lo0 < 0 else np.zeros(1)
    his = hi0 * f if hi0 > 0 else np.zeros(1)
    L, H = (a.ravel() for a in np.meshgrid(los, his, indexing="ij"))
    ok = (H - L) > 0
    L, H = L[ok], H[ok]
    err = pre.error(L, H)
    b = int(np.argmin(err))
    lo_b, hi_b = float(L[b]), float(H[b])
    # refine around the best point
    fl = np.linspace(0.9, 1.1, 41)
    L2 = np.clip(lo_b * fl, lo0, 0.0) if lo_b < 0 else np.zeros(1)
    H2 = np.clip(hi_b * fl, 0.0, hi0) if hi_b > 0 else np.zeros(1)
    L2, H2 = (a.ravel() for a in np.meshgrid(L2, H2, indexing="ij"))
    ok = (H2 - L2) > 0
    if ok.any():
        e2 = pre.error(L2[ok], H2[ok])
        j = int(np.argmin(e2))
        if e2[j] < err[b]:
            return float(L2[ok][j]), float(H2[ok][j])
    return lo_b, hi_b


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    ps, qs = p.sum(), q.sum()
    if ps <= 0 or qs <= 0:
        return np.inf
    p = p / ps
    q = q / qs
    m = p > 0
    if np.any(q[m] <= 0):
        return np.inf
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def _expand_levels(counts: np.ndarray, levels: int) -> np.ndarray:
    """Merge ``counts`` into ``levels`` equal groups and spread each group's mass uniformly back over
    its non-empty bins (the 'candidate distribution' of TensorRT's entropy calibration)."""
    n = counts.size
    group = np.minimum((np.arange(n) * levels) // max(n, 1), levels - 1)
    nonzero = counts > 0
    g_sum = np.bincount(group, weights=counts, minlength=levels)
    g_nz = np.bincount(group, weights=nonzero.astype(np.float64), minlength=levels)
    return np.where(nonzero, g_sum[group] / np.maximum(g_nz[group], 1.0), 0.0)


def range_entropy(stats, levels: int = QMAX_U8 + 1, n_candidates: int = 64) -> tuple[float, float]:
    """Range minimizing KL(P || Q): P is the histogram clipped to the range with the outliers folded
    into the edge bins, Q the range's own bins quantized to ``levels`` levels (no outliers), as in
    TensorRT's calibrator. Candidates shrink both ends of the observed range by the same factor
    (for one-sided ranges such as Relu outputs this is TensorRT's threshold search); ranges that
    cover fewer histogram bins than levels are skipped.
    """
    lo0, hi0 = _observed(stats)
    counts, _ = _hist(stats)
    nb = counts.size
    width = 2 * stats.bound / nb
    if hi0 - lo0 <= 0 or counts.sum() == 0:
        return lo0, hi0
    best = (np.inf, lo0, hi0)
    for f in np.geomspace(0.02, 1.0, n_candidates):
        lo, hi = lo0 * f, hi0 * f
        i0 = int(np.clip(np.floor((lo + stats.bound) / width), 0, nb - 1))
        i1 = int(np.clip(np.ceil((hi + stats.bound) / width), i0 + 1, nb))
        if i1 - i0 < levels:
            continue
        inner = counts[i0:i1]
        p = inner.copy()
        p[0] += counts[:i0].sum()
        p[-1] += counts[i1:].sum()
        q = _expand_levels(inner, levels)
        kl = _kl(p, q)
        if kl < best[0] - 1e-12:
            best = (kl, lo, hi)
    return float(best[1]), float(best[2])


def compute_range(stats, method: str, *, percentile: float = 99.999) -> tuple[float, float]:
    """The activation range for ``stats`` by ``method`` (one of METHODS)."""
    if method == "minmax":
        return range_minmax(stats)
    if method == "percentile":
        return range_percentile(stats, percentile)
    if method == "entropy":
        return range_entropy(stats)
    if method == "mse":
        return range_mse(stats)
    raise UsageError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")


# ----------------------------------------------------------------------------- weights


def weight_scales(w: np.ndarray, axis: int | None, method: str = "minmax", qmax: int = QMAX_S8) -> np.ndarray:
    """Symmetric int8 scales for ``w``: one per slice along ``axis`` (None: one for the tensor).

    ``mse`` picks, per channel, the clipping threshold among 32 candidates in [0.5, 1] x max|w|
    that minimizes the squared error of the rounded weights.
    """
    w = np.asarray(w, np.float32)
    if axis is None:
        flat = w.reshape(1, -1)
    else:
        flat = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    amax = np.abs(flat).max(axis=1) if flat.size else np.zeros(flat.shape[0], np.float32)
    if method == "mse" and flat.size:
        best_err = np.full(amax.shape, np.inf)
        best = amax.copy()
        for f in np.linspace(0.5, 1.0, 32):
            t = amax * f
            s = np.where(t > 0, t / qmax, 1.0)[:, None]
            q = np.clip(np.round(flat / s), -qmax, qmax) * s
            err = ((q - flat) ** 2).sum(axis=1)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best = np.where(better, t, best)
        amax = best
    elif method not in ("minmax", "mse"):
        raise UsageError(f"unknown weight method {method!r}; choose minmax or mse")
    scales = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    scales = np.maximum(scales, np.float32(1e-12))
    return scales if axis is not None else scales.reshape(())


def quantize_weight(w: np.ndarray, scales: np.ndarray, axis: int | None, qmax: int = QMAX_S8) -> np.ndarray:
    """Round ``w`` to int8 with symmetric ``scales`` along ``axis`` (zero point 0)."""
    w = np.asarray(w, np.float32)
    if axis is None:
        s = np.float32(scales)
    else:
        shape = [1] * w.ndim
        shape[axis] = -1
        s = np.asarray(scales, np.float32).reshape(shape)
    return np.asarray(np.clip(np.round(w / s), -qmax, qmax), dtype=np.int8)


def quantize_bias(b: np.ndarray, input_scale: float, w_scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias at scale ``input_scale * w_scale`` (per channel); returns (q, bias scales)."""
    scale = (np.float32(input_scale) * np.asarray(w_scales, np.float32)).astype(np.float32)
    scale = np.broadcast_to(scale, np.shape(b)).astype(np.float32)
    q = np.round(np.asarray(b, np.float64) / scale)
    q = np.asarray(np.clip(q, -(2**31) + 1, 2**31 - 1), dtype=np.int32)
    return q, scale
