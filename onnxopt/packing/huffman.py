"""Canonical Huffman, order-0, over byte symbols, length-limited to 12 bits; numpy-vectorized.

Code lengths come from package-merge (optimal under the 12-bit limit). Decoding is table-driven: each
lane keeps a 64-bit bit buffer, peeks 12 bits, and one lookup in a 4096-entry table gives the symbol
and its length. Lanes (see :mod:`onnxopt.packing.lanes`) refill 32 bits when fewer than 12 are left;
bits are stored MSB-first in 32-bit words.

Payload::

    uvarint lanes | symbol set | code length per symbol (4 bits each, low nibble first)
    | lanes x u32 first word of each lane | uvarint number of further words

The further 32-bit words live in the file's shared Huffman word section, in decoder read order.
"""

from __future__ import annotations

import heapq

import numpy as np

from onnxopt.packing import native
from onnxopt.packing.format import (
    CorruptPackError,
    Limits,
    Reader,
    read_symbol_set,
    write_symbol_set,
    write_uvarint,
)
from onnxopt.packing.lanes import EncodedStream, LaneBatch, LaneStream

MAX_LEN = 12
TABLE = 1 << MAX_LEN
WORD_BITS = 32


def _plain_lengths(weights: list[int]) -> list[int]:
    """Unrestricted Huffman code lengths (heap construction)."""
    heap = [(w, i, [i]) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    lengths = [0] * len(weights)
    tie = len(weights)
    while len(heap) > 1:
        w1, _, a = heapq.heappop(heap)
        w2, _, b = heapq.heappop(heap)
        for s in a:
            lengths[s] += 1
        for s in b:
            lengths[s] += 1
        heapq.heappush(heap, (w1 + w2, tie, a + b))
        tie += 1
    return lengths


def code_lengths(hist: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Optimal code lengths (0 for absent symbols) with no code longer than ``max_len``.

    Plain Huffman when it already respects the limit, else package-merge.
    """
    hist = np.asarray(hist, dtype=np.int64)
    sym = np.flatnonzero(hist)
    m = sym.size
    lengths = np.zeros(hist.size, dtype=np.int64)
    if m == 0:
        return lengths
    if m == 1:
        lengths[sym] = 1
        return lengths
    plain = _plain_lengths(hist[sym].tolist())
    if max(plain) <= max_len:
        lengths[sym] = plain
        return lengths
    order = np.argsort(hist[sym], kind="stable")
    leaf_w = hist[sym][order].astype(np.float64)
    leaf_c = np.zeros((m, m), dtype=np.int32)
    leaf_c[np.arange(m), order] = 1
    cur_w, cur_c = leaf_w, leaf_c
    for _ in range(max_len - 1):
        pairs = cur_w.size // 2
        pk_w = cur_w[0 : 2 * pairs : 2] + cur_w[1 : 2 * pairs : 2]
        pk_c = cur_c[0 : 2 * pairs : 2] + cur_c[1 : 2 * pairs : 2]
        w = np.concatenate([leaf_w, pk_w])
        c = np.concatenate([leaf_c, pk_c])
        keep = np.argsort(w, kind="stable")
        cur_w, cur_c = w[keep], c[keep]
    lengths[sym] = cur_c[: 2 * m - 2].sum(axis=0)
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes (shorter first, then by symbol) for ``lengths``."""
    codes = np.zeros(lengths.size, dtype=np.uint64)
    present = np.flatnonzero(lengths)
    order = present[np.lexsort((present, lengths[present]))]
    code = 0
    prev = int(lengths[order[0]]) if order.size else 0
    for s in order.tolist():
        code <<= int(lengths[s]) - prev
        prev = int(lengths[s])
        codes[s] = code
        code += 1
    return codes


def table_bytes(lengths: np.ndarray) -> int:
    present = int(np.count_nonzero(lengths))
    return 1 + (present if present <= 32 else 32) + (present + 1) // 2


def estimate_bytes(hist: np.ndarray, lanes: int) -> tuple[float, np.ndarray]:
    """Approximate payload size for ``lanes`` lanes, and the code lengths used."""
    lengths = code_lengths(hist)
    bits = float((hist * lengths).sum())
    return bits / 8 + table_bytes(lengths) + 3.5 * lanes + 2, lengths


def encode(plane: np.ndarray, lanes: int, lengths: np.ndarray | None = None) -> EncodedStream:
    """Huffman-code a uint8 plane holding at least two distinct values, in ``lanes`` lanes."""
    n = plane.size
    if lengths is None:
        lengths = code_lengths(np.bincount(plane, minlength=256))
    codes = canonical_codes(lengths)
    lanes = max(1, min(lanes, n))
    steps = -(-n // lanes)
    pad = steps * lanes - n
    filler = int(np.flatnonzero(lengths)[np.argmin(lengths[lengths > 0])])
    symbols = plane if not pad else np.concatenate([plane, np.full(pad, filler, np.uint8)])
    grid = symbols.reshape(steps, lanes).T  # grid[j, t]: step t of lane j (symbol t * lanes + j)
    ln = lengths.astype(np.int64)[grid]
    ends = np.cumsum(ln, axis=1)  # bits consumed by each lane after each step
    starts = ends - ln
    if steps >= 2:
        per_lane = np.maximum(1, -(-(ends[:, steps - 2] + MAX_LEN) // WORD_BITS))
    else:
        per_lane = np.ones(lanes, dtype=np.int64)
    base = np.concatenate([[0], np.cumsum(per_lane)])
    total = int(base[-1])
    # place every code at its bit offset: it touches word (offset >> 5) and maybe the next one
    widx = (base[:-1, None] + (starts >> 5)).ravel()
    shifted = codes[grid].ravel() << (64 - (starts & 31) - ln).ravel().astype(np.uint64)
    hi = (shifted >> np.uint64(32)).astype(np.float64)
    lo = (shifted & np.uint64(0xFFFFFFFF)).astype(np.float64)
    acc = np.bincount(widx, weights=hi, minlength=total + 1)  # codes never overlap: sum == OR
    acc += np.bincount(widx + 1, weights=lo, minlength=total + 1)[: acc.size]
    lane_words = acc[:total].astype(np.uint32)
    # word j >= 1 of lane i is read after the first step t whose consumed bits exceed 32*j - 12
    lane_of = np.repeat(np.arange(lanes, dtype=np.int64), per_lane - 1)
    later = np.ones(total, dtype=bool)
    later[base[:-1]] = False
    j = np.flatnonzero(later) - base[:-1][lane_of]
    big = np.int64(1) << 40
    flat = (ends + (np.arange(lanes, dtype=np.int64) * big)[:, None]).ravel()
    step = np.searchsorted(flat, WORD_BITS * j - MAX_LEN + lane_of * big, side="right") - lane_of * steps
    head = bytearray()
    write_uvarint(head, lanes)
    present = np.flatnonzero(lengths)
    write_symbol_set(head, present.tolist())
    nib = lengths[present].astype(np.uint8)
    if nib.size % 2:
        nib = np.append(nib, 0)
    head += (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8).tobytes()
    head += lane_words[base[:-1]].astype("<u4").tobytes()
    write_uvarint(head, int(j.size))
    return EncodedStream(
        lanes=lanes,
        steps=steps,
        header=bytes(head),
        words=lane_words[later],
        word_step=step,
        word_lane=lane_of,
    )


def _decode_table(present: list[int], lengths: list[int]) -> np.ndarray:
    """4096 uint16 entries: symbol | length << 8 (unused windows decode as length 12)."""
    ln = np.array(lengths, dtype=np.int64)
    sym = np.array(present, dtype=np.int64)
    order = np.lexsort((sym, ln))
    span = 1 << (MAX_LEN - ln[order])
    entries = np.repeat(sym[order] | (ln[order] << 8), span)
    table = np.full(TABLE, MAX_LEN << 8, dtype=np.uint16)
    table[: entries.size] = entries
    return table


def parse(r: Reader, n: int, limits: Limits) -> LaneStream:
    """Read one stream header for an ``n``-symbol plane (its later words are in the shared section)."""
    lanes = r.uvarint()
    if not 1 <= lanes <= min(n, limits.max_lanes) or -(-n // lanes) > limits.max_steps:
        raise CorruptPackError(f"{r.what}: Huffman lane count {lanes} invalid for {n} symbols")
    present = read_symbol_set(r)
    if len(present) < 2:
        raise CorruptPackError(f"{r.what}: Huffman table needs at least two symbols")
    packed = np.frombuffer(r.take((len(present) + 1) // 2), dtype=np.uint8)
    lengths = np.stack([packed & 15, packed >> 4], axis=1).ravel()[: len(present)].astype(np.int64)
    if lengths.min() < 1 or lengths.max() > MAX_LEN:
        raise CorruptPackError(f"{r.what}: Huffman code lengths outside 1..{MAX_LEN}")
    if int((1 << (MAX_LEN - lengths)).sum()) > TABLE:
        raise CorruptPackError(f"{r.what}: Huffman code lengths violate the Kraft inequality")
    first = np.frombuffer(r.take(4 * lanes), dtype="<u4")
    steps = -(-n // lanes)
    nwords = r.uvarint(steps * lanes)
    return LaneStream(
        lanes=lanes, steps=steps, nwords=nwords, init=first, table=_decode_table(present, lengths.tolist())
    )


def decode_batch(streams: list[LaneStream], words: np.ndarray, out: np.ndarray) -> bool:
    """Decode all ``streams`` in lockstep into ``out`` (uint8); False if the data is inconsistent."""
    if not streams:
        return words.size == 0
    if native.available():
        batch = LaneBatch(streams, words, np.uint64)
        ok = native.huffman_loop(batch, out)
    else:
        batch = LaneBatch(streams, words.astype(np.uint64), np.uint64)
        ok = _numpy_loop(batch, out)
    return ok and batch.all_read()


def _numpy_loop(batch: LaneBatch, out: np.ndarray) -> bool:
    """The reference decoder loop, one numpy call per operation over the live lanes of a step."""
    buf = batch.states
    tab = batch.tables.astype(np.uint16, copy=False)
    total = batch.total_lanes
    bits = np.full(total, WORD_BITS, dtype=np.uint64)
    window = np.empty(total, dtype=np.uint64)
    entry = np.empty(total, dtype=np.uint16)
    used = np.empty(total, dtype=np.uint16)
    pos, step_stride, tbase = batch.pos, batch.step_stride, batch.tbase
    alive = batch.alive_lanes
    last = batch.max_steps - 1
    for t in range(batch.max_steps):
        a = alive[t]
        bu, bi, wi, en, us, pa = buf[:a], bits[:a], window[:a], entry[:a], used[:a], pos[:a]
        np.subtract(bi, MAX_LEN, out=wi)
        np.right_shift(bu, wi, out=wi)
        np.bitwise_and(wi, TABLE - 1, out=wi)
        np.bitwise_or(wi, tbase[:a], out=wi)
        tab.take(wi, out=en)
        out[pa] = en  # the low byte is the symbol
        np.add(pa, step_stride[:a], out=pa)
        np.right_shift(en, 8, out=us)
        np.subtract(bi, us, out=bi)
        if t == last:
            break
        idx = (bits[: alive[t + 1]] < MAX_LEN).nonzero()[0]
        if idx.size:
            chunk = batch.next_words(idx.size)
            if chunk is None:
                return False
            buf[idx] = (buf[idx] << np.uint64(WORD_BITS)) | chunk
            bits[idx] += np.uint64(WORD_BITS)
    return True
