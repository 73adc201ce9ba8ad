"""Byte grouping (ZipNN's idea): split multi-byte elements into byte planes and put them back.

A float32 tensor becomes four planes: three of mantissa bytes (nearly uniform) and one holding the
sign and the top seven exponent bits, whose entropy is low (2-3 bits per byte on trained weights).
Coding each plane with its own table uses that; a coder over the interleaved bytes cannot.
"""

from __future__ import annotations

import numpy as np


def split_planes(data: np.ndarray, itemsize: int) -> list[np.ndarray]:
    """Planes of a little-endian byte buffer: ``planes[k][i]`` is byte ``k`` of element ``i`` (contiguous)."""
    raw = data.reshape(-1)
    if itemsize == 1:
        return [raw]
    grid = raw.reshape(-1, itemsize)
    return [np.ascontiguousarray(grid[:, k]) for k in range(itemsize)]


def merge_planes(planes: list[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
    """Inverse of :func:`split_planes`: interleave equal-length uint8 planes into one byte array."""
    k = len(planes)
    n = planes[0].size if planes else 0
    if out is None:
        out = np.empty(n * k, dtype=np.uint8)
    if k == 1:
        out[:] = planes[0]
        return out
    grid = out.reshape(n, k)
    for j, plane in enumerate(planes):
        grid[:, j] = plane
    return out
