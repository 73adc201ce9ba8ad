"""Order-0 entropy bounds: the fewest bytes any order-0 coder can spend on a symbol stream."""

from __future__ import annotations

import numpy as np


def counts(symbols: np.ndarray) -> np.ndarray:
    """Histogram of a uint8 array over all 256 byte values (int64)."""
    return np.bincount(symbols.reshape(-1), minlength=256).astype(np.int64)


def plane_histograms(raw: np.ndarray, itemsize: int) -> list[np.ndarray]:
    """Histograms of the ``itemsize`` byte planes of a uint8 buffer, without splitting it.

    Pairs of planes are counted together through a uint16 view (one 65536-bin count, folded), which
    is several times faster than counting each plane: numpy's bincount widens every input element.
    """
    raw = raw.reshape(-1)
    if itemsize % 2 or raw.size % itemsize or raw.size < 2:
        if itemsize == 1 or raw.size % max(itemsize, 1):
            return [counts(raw)]
        grid = raw.reshape(-1, itemsize)
        return [counts(grid[:, k]) for k in range(itemsize)]
    pairs = np.ascontiguousarray(raw).view("<u2").reshape(-1, itemsize // 2)
    hists = []
    for k in range(itemsize // 2):
        joint = np.bincount(pairs[:, k], minlength=1 << 16).reshape(256, 256)  # [high byte, low byte]
        hists += [joint.sum(axis=0).astype(np.int64), joint.sum(axis=1).astype(np.int64)]
    return hists


def entropy_bits(hist: np.ndarray) -> float:
    """Total order-0 information (bits) of a stream with symbol histogram ``hist``."""
    c = hist[hist > 0].astype(np.float64)
    if c.size <= 1:
        return 0.0
    n = c.sum()
    return float(-(c * np.log2(c / n)).sum())


def plane_bound_bytes(data: bytes | np.ndarray, itemsize: int) -> float:
    """Sum over byte planes of each plane's order-0 entropy, in bytes (what byte-grouped coders see)."""
    raw = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if raw.size == 0:
        return 0.0
    return sum(entropy_bits(h) for h in plane_histograms(raw, itemsize)) / 8


def byte_bound_bytes(data: bytes | np.ndarray) -> float:
    """Order-0 entropy of the plain byte stream (no grouping), in bytes."""
    raw = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    return entropy_bits(counts(raw)) / 8 if raw.size else 0.0
