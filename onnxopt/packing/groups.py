"""Row groups: a tensor's rows (output channels) coded in a few groups, each with its own coder tables.

Weights are scaled per output channel: trained layers have channels of very different magnitude
(batch norm folded into convolutions, embedding rows of frequent and rare tokens), and int8 weights
quantized with one scale per tensor spread those channels over very different value ranges. One
order-0 table per tensor codes every channel with the tensor's average distribution; a table per
group of similar channels comes much closer to what each channel needs (on int8 models 1-20% smaller
than the tensor's own order-0 bound, below what brotli's context modelling reaches).

The tensor is viewed as ``A`` rows: along its first axis (Conv ``[O, I, kh, kw]``, Gemm ``[N, K]``,
embeddings) or, *transposed*, along its last axis (MatMul ``[K, N]``). Rows are clustered by the
histogram of their most significant byte (the int8 value, or a float's sign and exponent bits):
first by magnitude quantiles, then by a few Lloyd iterations that move each row to the group whose
table codes it in the fewest bits. The group count (2-16) minimizes the estimated size, table and
per-row group ids included; the codec is used only when the real coded size wins.

This module plans the grouping and packs the ids; codecs.py codes and parses the groups.
"""

from __future__ import annotations

import numpy as np

MAX_GROUPS = 16
GROUP_COUNTS = (2, 4, 8, 16)
ITERATIONS = 5
#: estimated bytes a group adds besides its coded symbols (stream headers, lane states, lengths)
GROUP_OVERHEAD = 10


def id_width(groups: int) -> int:
    """Bits per stored group id."""
    return 1 if groups <= 2 else 2 if groups <= 4 else 4


def ids_bytes(rows: int, groups: int) -> int:
    return -(-rows * id_width(groups) // 8)


def pack_ids(ids: np.ndarray, groups: int) -> bytes:
    """Group ids as ``id_width`` bits each, least significant first within a byte."""
    w = id_width(groups)
    per = 8 // w
    padded = np.zeros(-(-ids.size // per) * per, dtype=np.uint8)
    padded[: ids.size] = ids
    grid = padded.reshape(-1, per).astype(np.uint16)
    shifts = (np.arange(per, dtype=np.uint16) * w)[None, :]
    return (grid << shifts).sum(axis=1).astype(np.uint8).tobytes()


def unpack_ids(data: bytes | memoryview, rows: int, groups: int) -> np.ndarray:
    """Inverse of :func:`pack_ids` (``data`` must hold exactly :func:`ids_bytes` bytes)."""
    w = id_width(groups)
    per = 8 // w
    raw = np.frombuffer(data, dtype=np.uint8)
    shifts = (np.arange(per, dtype=np.uint8) * w)[None, :]
    ids = (raw[:, None] >> shifts) & np.uint8((1 << w) - 1)
    return ids.reshape(-1)[:rows]


def grouped_view(data: np.ndarray, itemsize: int, rows: int, transposed: bool) -> np.ndarray:
    """The payload as ``[rows, row_bytes]``: rows along the first axis, or along the last if transposed."""
    if not transposed:
        return data.reshape(rows, -1)
    return np.ascontiguousarray(data.reshape(-1, rows, itemsize).transpose(1, 0, 2)).reshape(rows, -1)


def ungroup(permuted: np.ndarray, ids: np.ndarray, itemsize: int, transposed: bool) -> bytes:
    """Bytes of the original payload from its rows sorted by group (stable), ``[rows, row_bytes]``."""
    perm = np.argsort(ids, kind="stable")
    rows = np.empty_like(permuted)
    rows[perm] = permuted
    if transposed:
        return rows.reshape(rows.shape[0], -1, itemsize).transpose(1, 0, 2).tobytes()
    return rows.tobytes()


def _row_hists(view: np.ndarray, itemsize: int) -> np.ndarray:
    """Per-row histogram of the most significant byte of each element, ``[rows, 256]`` float64."""
    rows = view.shape[0]
    top = view.reshape(rows, -1, itemsize)[:, :, itemsize - 1]
    if rows * 256 <= top.size * 4:
        idx = top.astype(np.int64) + (np.arange(rows, dtype=np.int64) * 256)[:, None]
        return np.bincount(idx.reshape(-1), minlength=rows * 256).reshape(rows, 256).astype(np.float64)
    hists = np.zeros((rows, 256), dtype=np.float64)
    for k in range(top.shape[1]):  # few elements per row: count column by column
        np.add.at(hists, (np.arange(rows), top[:, k]), 1.0)
    return hists


def _entropy_bits(hists: np.ndarray) -> float:
    """Order-0 bits of each row of ``hists`` (groups x 256), summed, plus an estimate of their tables."""
    total = hists.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(hists > 0, np.log2(hists / np.maximum(total, 1)), 0.0)
    present = np.count_nonzero(hists, axis=1)
    tables = np.where(present > 1, present * 1.3 + 4, 1) + GROUP_OVERHEAD
    return float(-(hists * logs).sum() + 8 * tables.sum())


def _group_hists(ids: np.ndarray, groups: int, hists: np.ndarray) -> np.ndarray:
    width = hists.shape[1]
    idx = (ids.astype(np.int64)[:, None] * width + np.arange(width)).reshape(-1)
    return np.bincount(idx, weights=hists.reshape(-1), minlength=groups * width).reshape(groups, width)


def _magnitude_key(itemsize: int) -> np.ndarray:
    s = np.arange(256, dtype=np.int64)
    if itemsize == 1:  # |int8 value| (also orders uint8 data by distance from the middle well enough)
        return np.abs(np.where(s >= 128, s - 256, s)).astype(np.float64)
    return (s & 0x7F).astype(np.float64)  # sign dropped: the exponent's high bits


def plan(view: np.ndarray, itemsize: int) -> tuple[np.ndarray | None, float]:
    """Group ids for the rows of ``view`` (``[rows, row_bytes]``) and the estimated bytes saved.

    ``None`` when no grouping is estimated to save anything.
    """
    if view.shape[0] < 2:
        return None, 0.0
    return plan_hists(_row_hists(view, itemsize), itemsize)


def plan_hists(hists: np.ndarray, itemsize: int) -> tuple[np.ndarray | None, float]:
    """:func:`plan` from per-row histograms of the most significant byte (``[rows, 256]``)."""
    rows = hists.shape[0]
    key = (hists @ _magnitude_key(itemsize)) / np.maximum(hists.sum(axis=1), 1)
    hists = hists[:, hists.any(axis=0)]  # only the symbols present
    single = _entropy_bits(hists.sum(axis=0, keepdims=True))
    order = np.argsort(key, kind="stable")
    best_bits, best_ids = single, None
    for groups in GROUP_COUNTS:
        if groups > rows:
            break
        ids = np.empty(rows, dtype=np.int64)
        ids[order] = np.arange(rows) * groups // rows
        for _ in range(ITERATIONS):
            g = _group_hists(ids, groups, hists)
            logp = np.log2((g + 0.02) / (g.sum(axis=1, keepdims=True) + 5.12))
            new = (hists @ logp.T).argmax(axis=1)
            if np.array_equal(new, ids):
                break
            ids = new
        used, ids = np.unique(ids, return_inverse=True)
        if used.size < 2:
            continue
        g = _group_hists(ids, used.size, hists)
        bits = _entropy_bits(g) + 8 * ids_bytes(rows, used.size)
        if bits < best_bits:
            best_bits, best_ids = bits, ids.astype(np.uint8)
    return best_ids, (single - best_bits) / 8
