"""Order-0 entropy bounds: the fewest bytes any order-0 coder can spend on a symbol stream."""

from __future__ import annotations

import numpy as np

from onnxopt.packing.planes import split_planes


def counts(symbols: np.ndarray) -> np.ndarray:
    """Histogram of a uint8 array over all 256 byte values (int64)."""
    return np.bincount(symbols.reshape(-1), minlength=256).astype(np.int64)


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
    if itemsize <= 1 or raw.size % itemsize:
        return entropy_bits(counts(raw)) / 8
    return sum(entropy_bits(counts(p)) for p in split_planes(raw, itemsize)) / 8


def byte_bound_bytes(data: bytes | np.ndarray) -> float:
    """Order-0 entropy of the plain byte stream (no grouping), in bytes."""
    raw = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    return entropy_bits(counts(raw)) / 8 if raw.size else 0.0
