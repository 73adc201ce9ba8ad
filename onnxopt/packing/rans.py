"""Interleaved rANS (range asymmetric numeral systems), order-0, over byte symbols; numpy-vectorized.

rANS spends ``-log2(p)`` bits per symbol up to the 12-bit quantization of the probabilities, so unlike
Huffman it goes far below 1 bit per symbol when one value dominates (sparse or pruned tensors) and
sits within a fraction of a percent of the order-0 entropy on ordinary planes.

Parameters: 12-bit probabilities (``M = 4096``), 32-bit states kept in ``[2**16, 2**32)``, 16-bit
renormalization words, so a lane reads at most one word per symbol. The stream is split into lanes
(see :mod:`onnxopt.packing.lanes`); the encoder runs the lanes' steps backwards and stores the words
in the order the decoder reads them.

Payload::

    uvarint lanes | symbol set | u8 table precision P | freq-1 per symbol but the last, as nibble
    varints (the last is 2**P - sum; the decoder scales all by 2**(12-P))
    | lane states (bitmap of 3-byte states, then 3 or 4 bytes each: see pack_states)
    | uvarint number of words

Small planes may store a coarser table (P < 12) when that saves more table bytes than it costs in
coded bits, or (format 6) a *parametric* table (see :class:`ParamTable`) in place of the symbol set,
precision and frequencies: ``u8 0 | u8 lo | u8 hi | u8 mu | u16 ratio | zigzag uvarint slope``; the zero
stands where a symbol set's count-1 byte would be, which no rANS stream has (it needs two symbols).

The 16-bit words themselves live in the file's shared rANS word section (see lanes.py).

The decoder checks at the end that every lane returned to a start state (``2**16`` plus 16 carried
bits) and that every word was read exactly once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onnxopt.packing import native
from onnxopt.packing.format import (
    CorruptPackError,
    Limits,
    Reader,
    nibble_varint_bytes,
    read_nibble_varints,
    read_symbol_set,
    write_nibble_varints,
    write_symbol_set,
    write_uvarint,
    zigzag,
)
from onnxopt.packing.lanes import EncodedStream, LaneBatch, LaneStream

PRECISION = 12
M = 1 << PRECISION
LOW = 1 << 16  # lower bound of a normalized state
STATE_BYTES = 4
#: a stream this long (in steps) or longer may carry its lanes' last two symbols in the start states
TAIL_MIN_STEPS = 3


def quantize(hist: np.ndarray, precision: int = PRECISION) -> np.ndarray:
    """Frequencies summing to ``2**precision`` (present symbols >= 1) close to ``hist``'s, by greedy cost."""
    hist = hist.astype(np.int64)
    present = hist > 0
    total = int(hist.sum())
    scale = 1 << precision
    freqs = np.where(present, np.maximum(1, (hist * scale) // max(total, 1)), 0).astype(np.int64)
    diff = scale - int(freqs.sum())
    weights = hist.astype(np.float64)
    safe = np.maximum(freqs, 1).astype(np.float64)
    while diff != 0:
        safe[:] = np.maximum(freqs, 1)
        if diff > 0:  # give a slot to the symbol that gains most bits
            gain = np.where(present, weights * np.log2((safe + 1) / safe), -1.0)
            k = min(diff, max(1, int(present.sum())))
            pick = np.argpartition(-gain, k - 1)[:k]
            freqs[pick] += 1
            diff -= k
        else:  # take a slot from the symbol that loses least
            loss = np.where(freqs > 1, weights * np.log2(safe / np.maximum(safe - 1, 1)), np.inf)
            k = min(-diff, int((freqs > 1).sum()))
            pick = np.argpartition(loss, k - 1)[:k]
            freqs[pick] -= 1
            diff += k
    return freqs


def coded_bits(hist: np.ndarray, freqs: np.ndarray) -> float:
    """Bits the symbols cost under ``freqs`` (excluding tables, states and word rounding)."""
    mask = hist > 0
    return float(-(hist[mask] * np.log2(freqs[mask] / freqs.sum())).sum())


def table_bytes(freqs: np.ndarray) -> int:
    """Serialized size of a frequency table at its own precision (see :func:`encode`)."""
    present = np.flatnonzero(freqs)
    head = 2 + (present.size if present.size <= 32 else 32)
    return head + nibble_varint_bytes(freqs[present[:-1]] - 1)


#: small planes try coarser tables (cheaper to store, slightly costlier symbols) down to this precision
MIN_TABLE_PRECISION = 5
SMALL_PLANE = 1 << 16


def best_table(hist: np.ndarray) -> np.ndarray:
    """Quantized frequencies (at some precision <= 12) minimizing coded bits plus table bits."""
    best = quantize(hist)
    n = int(hist.sum())
    if n >= SMALL_PLANE:
        return best
    cost = coded_bits(hist, best) + 8 * table_bytes(best)
    low = max(MIN_TABLE_PRECISION, int(np.count_nonzero(hist) - 1).bit_length())
    for precision in range(PRECISION - 2, low - 1, -2):
        freqs = quantize(hist, precision)
        c = coded_bits(hist, freqs) + 8 * table_bytes(freqs)
        if c < cost:
            best, cost = freqs, c
    return best


def _precision_of(freqs: np.ndarray) -> int:
    return int(freqs.sum()).bit_length() - 1


# --------------------------------------------------------------------------- parametric tables

#: the byte that marks a parametric table where a symbol set's count-1 byte would be
PARAM_MARK = 0
#: parametric tables are tried on planes up to this many symbols whose explicit table costs at least
#: PARAM_MIN_TABLE bytes (on larger planes the table is a negligible share)
PARAM_MAX_SYMBOLS = 1 << 16
PARAM_MIN_TABLE = 24
PARAM_MAX_SLOPE = 1 << 16  # bound of |slope| (hostile headers)


@dataclass(frozen=True)
class ParamTable:
    """A frequency table named by a curve instead of listed: symbols are read as int8 values (byte
    ``b`` is ``v = b ^ 0x80`` in 0..255, int8 order), the table covers ``lo..hi`` and peaks at ``mu``.

    Weights fall away from the peak by a ratio that changes linearly with the distance, in integers
    only (the decoder in C must build the same table bit for bit): ``w(0) = 2**24`` and
    ``w(d + 1) = w(d) * r(d) >> 16`` with ``r(d) = clamp(ratio - slope * d, 0, 65535)``. A constant
    ratio is a discrete Laplacian; a positive slope bends it towards a Gaussian, a negative one gives
    heavier tails. Each symbol of the range gets ``1 + w * (4096 - n) // sum(w)``; what rounding leaves
    goes to the peak. Int8 weights are close to such curves: on MTCNN P-net's bundle of 6,606 int8
    weights the curve costs 0.7% more coded bits than the best explicit table, which itself costs 187
    bytes; the curve costs 6-7.
    """

    lo: int
    hi: int
    mu: int
    ratio: int
    slope: int

    def freqs(self) -> np.ndarray:
        """The 12-bit frequencies, indexed by byte value."""
        return param_freqs(self.lo, self.hi, self.mu, self.ratio, self.slope)

    def header(self) -> bytes:
        out = bytearray([PARAM_MARK, self.lo, self.hi, self.mu])
        out += self.ratio.to_bytes(2, "little")
        write_uvarint(out, zigzag(self.slope))
        return bytes(out)


def param_freqs(lo: int, hi: int, mu: int, ratio: int, slope: int) -> np.ndarray:
    """:class:`ParamTable`'s frequencies by byte value (plain Python ints: the reference for the C reader)."""
    side = max(mu - lo, hi - mu)
    w = [1 << 24]
    for d in range(side):
        r = min(65535, max(0, ratio - slope * d))
        w.append(w[-1] * r >> 16)
    n = hi - lo + 1
    weights = [w[abs(v - mu)] for v in range(lo, hi + 1)]
    total = sum(weights)
    f = [1 + x * (M - n) // total for x in weights]
    f[mu - lo] += M - sum(f)
    out = np.zeros(256, dtype=np.int64)
    out[np.arange(lo, hi + 1) ^ 0x80] = f
    return out


def fit_param(hist: np.ndarray) -> tuple[float, ParamTable] | None:
    """The curve of :class:`ParamTable` that codes ``hist`` (by byte value) in the fewest bits, by
    coordinate descent from a Laplacian fitted to the mean distance; (bits, table), or None."""
    by_v = hist[np.arange(256) ^ 0x80].astype(np.float64)  # histogram in int8 order
    present = np.flatnonzero(by_v)
    if present.size < 2:
        return None
    lo, hi = int(present[0]), int(present[-1])
    n = float(by_v.sum())
    v = np.arange(256, dtype=np.float64)
    cum = np.cumsum(by_v)
    median = int(np.searchsorted(cum, n / 2))
    mode = int(np.argmax(by_v))
    counts = by_v[lo : hi + 1]

    def bits(t: ParamTable) -> float:
        f = param_freqs(t.lo, t.hi, t.mu, t.ratio, t.slope)[np.arange(lo, hi + 1) ^ 0x80]
        return float(-(counts * np.log2(f / M)).sum())

    best: tuple[float, ParamTable] | None = None
    for mu in sorted({median, mode}):
        spread = max(float((by_v * np.abs(v - mu)).sum() / n), 0.05)
        ratio = min(65535, max(1, round(65536 * np.exp(-1.0 / spread))))
        t = ParamTable(lo, hi, mu, ratio, 0)
        cost = bits(t)
        step_r, step_s = 2048, 64
        while step_r >= 1 or step_s >= 1:
            moved = False
            for dr, ds in ((step_r, 0), (-step_r, 0), (0, step_s), (0, -step_s)):
                if (dr == 0 and step_s < 1) or (ds == 0 and step_r < 1):
                    continue
                r, sl = t.ratio + dr, t.slope + ds
                if not 0 <= r <= 65535 or abs(sl) > PARAM_MAX_SLOPE:
                    continue
                cand = ParamTable(lo, hi, mu, r, sl)
                c = bits(cand)
                if c < cost:
                    t, cost, moved = cand, c, True
            if not moved:
                step_r, step_s = step_r // 2, step_s // 2
        if best is None or cost < best[0]:
            best = (cost, t)
    return best


def estimate_bytes(
    hist: np.ndarray, lanes: int, parametric: bool = True
) -> tuple[float, np.ndarray | ParamTable]:
    """Approximate payload size for ``lanes`` lanes, and the table used: quantized frequencies, or (with
    ``parametric``) on a small plane a :class:`ParamTable` where that is smaller."""
    freqs = best_table(hist)
    size = coded_bits(hist, freqs) / 8 + table_bytes(freqs)
    table: np.ndarray | ParamTable = freqs
    if parametric and hist.sum() <= PARAM_MAX_SYMBOLS and table_bytes(freqs) >= PARAM_MIN_TABLE:
        fitted = fit_param(hist)
        curve = math.inf if fitted is None else fitted[0] / 8 + len(fitted[1].header())
        if curve < size:
            size, table = curve, fitted[1]
    return size + 3 * lanes + 3, table


def encode(
    plane: np.ndarray,
    lanes: int,
    freqs: np.ndarray | ParamTable | None = None,
    carry: np.ndarray | None = None,
    tail: bool = False,
) -> EncodedStream:
    """rANS-code a uint8 plane holding at least two distinct values, in ``lanes`` lanes.

    ``carry`` (one uint16 per lane) is stored for free in the lanes' start states: the decoder ends
    each lane in state ``2**16 + carry`` instead of ``2**16`` ("bits back"). With ``tail`` (and at
    least 3 steps) the carried bits are the lanes' own last two symbols, which are then not coded.
    """
    n = plane.size
    if freqs is None:
        freqs = best_table(np.bincount(plane, minlength=256))
    stored: np.ndarray | ParamTable = freqs
    if isinstance(freqs, ParamTable):
        freqs = freqs.freqs()
    table_precision = _precision_of(freqs)
    freqs = freqs << (PRECISION - table_precision)  # what the decoder works with
    lanes = max(1, min(lanes, n))
    steps = -(-n // lanes)
    pad = steps * lanes - n
    symbols = plane if not pad else np.concatenate([plane, np.full(pad, int(np.argmax(freqs)), np.uint8)])
    grid = symbols.reshape(steps, lanes)  # grid[t, j]: step t of lane j
    if tail and steps >= TAIL_MIN_STEPS:
        carry = grid[steps - 2].astype(np.uint16) | (grid[steps - 1].astype(np.uint16) << 8)
        steps -= 2
        grid = grid[:steps]
        symbols = grid.reshape(-1)
    start = np.full(lanes, LOW, dtype=np.uint32)
    if carry is not None:
        start |= carry.astype(np.uint32)
    if lanes == 1:
        x, words, word_step, word_lane = _encode_one_lane(symbols, freqs, int(start[0]))
        return _stream(lanes, steps, stored, table_precision, x, words, word_step, word_lane)
    freq32 = freqs.astype(np.uint32)
    cum32 = (np.cumsum(freqs) - freqs).astype(np.uint32)
    x = start
    words: list[np.ndarray] = []
    word_lane: list[np.ndarray] = []
    word_step: list[np.ndarray] = []
    for t in range(steps - 1, -1, -1):
        row = grid[t]
        f = freq32[row]
        big = np.flatnonzero(x >= (f << np.uint32(32 - PRECISION)))
        if big.size:  # the decoder reads these words right after decoding step t
            words.append((x[big] & np.uint32(0xFFFF)).astype(np.uint16))
            word_lane.append(big)
            word_step.append(np.full(big.size, t, dtype=np.int64))
            x[big] >>= np.uint32(16)
        q = x // f
        x = (q << np.uint32(PRECISION)) + (x - q * f) + cum32[row]
    empty = np.zeros(0, dtype=np.int64)
    return _stream(
        lanes,
        steps,
        stored,
        table_precision,
        x,
        np.concatenate(words) if words else np.zeros(0, dtype=np.uint16),
        np.concatenate(word_step) if word_step else empty,
        np.concatenate(word_lane) if word_lane else empty,
    )


def _encode_one_lane(
    symbols: np.ndarray, freqs: np.ndarray, x: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The same coder for a single lane, in plain Python ints (numpy calls cost more than they do here)."""
    f_of = freqs.tolist()
    cum = (np.cumsum(freqs) - freqs).tolist()
    words: list[int] = []
    steps: list[int] = []
    shift = 32 - PRECISION
    seq = symbols.tolist()
    for t in range(len(seq) - 1, -1, -1):
        s = seq[t]
        f = f_of[s]
        if x >= f << shift:
            words.append(x & 0xFFFF)
            steps.append(t)
            x >>= 16
        q, r = divmod(x, f)
        x = (q << PRECISION) + r + cum[s]
    words.reverse()
    steps.reverse()
    return (
        np.array([x], dtype=np.uint32),
        np.array(words, dtype=np.uint16),
        np.array(steps, dtype=np.int64),
        np.zeros(len(words), dtype=np.int64),
    )


def _stream(
    lanes: int,
    steps: int,
    stored: np.ndarray | ParamTable,
    table_precision: int,
    x: np.ndarray,
    words: np.ndarray,
    word_step: np.ndarray,
    word_lane: np.ndarray,
) -> EncodedStream:
    head = bytearray()
    write_uvarint(head, lanes)
    if isinstance(stored, ParamTable):
        head += stored.header()
    else:
        present = np.flatnonzero(stored)
        write_symbol_set(head, present.tolist())
        head.append(table_precision)
        write_nibble_varints(head, (stored[present[:-1]] - 1).tolist())
    head += pack_states(x)
    write_uvarint(head, int(words.size))
    return EncodedStream(
        lanes=lanes, steps=steps, header=bytes(head), words=words, word_step=word_step, word_lane=word_lane
    )


def pack_states(x: np.ndarray) -> bytes:
    """Lane states: a bitmap (bit set: the state is below 2**24) then 3 or 4 little-endian bytes each.

    Final rANS states are spread about evenly over log2 in [16, 32): half of them fit in 3 bytes,
    which saves about 3 bits per lane over plain u32s.
    """
    x = x.astype(np.uint32)
    short = x < np.uint32(1 << 24)
    grid = x.astype("<u4").view(np.uint8).reshape(-1, 4)
    keep = np.ones_like(grid, dtype=bool)
    keep[:, 3] = ~short
    return np.packbits(short, bitorder="little").tobytes() + grid[keep].tobytes()


def read_states(r: Reader, lanes: int) -> np.ndarray:
    """Inverse of :func:`pack_states`; every length is checked against the bytes present first."""
    short = np.unpackbits(np.frombuffer(r.take(-(-lanes // 8)), dtype=np.uint8), bitorder="little")
    if short[lanes:].any():
        raise CorruptPackError(f"{r.what}: rANS state bitmap has padding bits set")
    short = short[:lanes].astype(bool)
    n_short = int(short.sum())
    raw = np.frombuffer(r.take(4 * lanes - n_short), dtype=np.uint8)
    grid = np.zeros((lanes, 4), dtype=np.uint8)
    keep = np.ones((lanes, 4), dtype=bool)
    keep[:, 3] = ~short
    grid[keep] = raw
    states = grid.view("<u4").reshape(-1)
    if (states < LOW).any() or ((states >= (1 << 24)) == short).any():
        raise CorruptPackError(f"{r.what}: rANS lane state out of range")
    return states


def _decode_table(present: list[int], freqs: list[int]) -> np.ndarray:
    """4096 uint32 entries: symbol | freq << 8 | (slot - cum) << 20."""
    f = np.array(freqs, dtype=np.int64)
    sym = np.repeat(np.array(present, dtype=np.int64), f)
    start = np.repeat(np.cumsum(f) - f, f)
    freq_of = np.repeat(f, f)
    bias = np.arange(M, dtype=np.int64) - start
    return (sym | (freq_of << 8) | (bias << 20)).astype(np.uint32)


def parse(r: Reader, n: int, limits: Limits) -> LaneStream:
    """Read one stream header for an ``n``-symbol plane (its words are in the shared section)."""
    lanes = r.uvarint()
    if not 1 <= lanes <= min(n, limits.max_lanes) or -(-n // lanes) > limits.max_steps:
        raise CorruptPackError(f"{r.what}: rANS lane count {lanes} invalid for {n} symbols")
    header = native.rans_header(r.buf[r.pos : r.end], lanes) if native.available() else None
    if header is None:  # no compiled reader, or a fault it found: this one names it
        table, states = _read_table_and_states(r, lanes)
    else:  # (the same read in C: most of a small stream's unpacking time)
        used, table, states = header
        r.pos += used
    steps = -(-n // lanes)
    nwords = r.uvarint(steps * lanes)
    return LaneStream(lanes=lanes, steps=steps, nwords=nwords, init=states, table=table)


def _read_table_and_states(r: Reader, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """The header after the lane count: the decode table and the lanes' start states (reference reader)."""
    if r.pos < r.end and r.buf[r.pos] == PARAM_MARK:
        table = _read_param_table(r)
        present = np.flatnonzero(table).tolist()
        return _decode_table(present, table[present].tolist()), read_states(r, lanes)
    present = read_symbol_set(r)
    if len(present) < 2:
        raise CorruptPackError(f"{r.what}: rANS table needs at least two symbols")
    table_precision = r.u8()
    if not 1 <= table_precision <= PRECISION:
        raise CorruptPackError(f"{r.what}: rANS table precision {table_precision} out of range")
    scale = 1 << table_precision
    freqs = [f + 1 for f in read_nibble_varints(r, len(present) - 1, scale)]
    last = scale - sum(freqs)
    if last < 1:
        raise CorruptPackError(f"{r.what}: rANS frequencies do not sum to {scale}")
    freqs = [f << (PRECISION - table_precision) for f in [*freqs, last]]
    states = read_states(r, lanes)
    return _decode_table(present, freqs), states


def _read_param_table(r: Reader) -> np.ndarray:
    r.u8()
    lo, hi, mu = r.u8(), r.u8(), r.u8()
    ratio = int.from_bytes(r.take(2), "little")
    slope = r.svarint()
    if not lo <= mu <= hi or lo == hi:
        raise CorruptPackError(f"{r.what}: parametric rANS table range {lo}..{hi} around {mu} is invalid")
    if abs(slope) > PARAM_MAX_SLOPE:
        raise CorruptPackError(f"{r.what}: parametric rANS table slope {slope} out of range")
    return param_freqs(lo, hi, mu, ratio, slope)


def decode_batch(streams: list[LaneStream], words: np.ndarray, out: np.ndarray) -> bool:
    """Decode all ``streams`` in lockstep into ``out`` (uint8); False if the data is inconsistent.

    Each stream's ``carry`` is set to the 16 bits its lanes carried (see :func:`encode`).
    """
    if not streams:
        return words.size == 0
    if native.available():  # (the C loop checks that every lane ended in a start state)
        batch = LaneBatch(streams, words, np.uint32)
        x = native.rans_loop(batch, out)
    else:
        batch = LaneBatch(streams, words.astype(np.uint32), np.uint32)
        x = _numpy_loop(batch, out)
        if x is not None and not bool(((x >> np.uint32(16)) == 1).all()):
            return False
    if x is None or not batch.all_read():
        return False
    for stream, (lo, hi) in zip(batch.ordered, batch.lane_ranges):
        stream.carry = x[lo:hi].astype(np.uint16)
    return True


def _numpy_loop(batch: LaneBatch, out: np.ndarray) -> np.ndarray | None:
    """The reference decoder loop, one numpy call per operation over the live lanes of a step."""
    x = batch.states
    tab = batch.tables.astype(np.uint32, copy=False)
    total = batch.total_lanes
    slot = np.empty(total, dtype=np.uint32)
    entry = np.empty(total, dtype=np.uint32)
    freq = np.empty(total, dtype=np.uint32)
    pos, step_stride, tbase = batch.pos, batch.step_stride, batch.tbase
    alive = batch.alive_lanes
    last = batch.max_steps - 1
    for t in range(batch.max_steps):
        a = alive[t]
        xa, sl, en, fr, pa = x[:a], slot[:a], entry[:a], freq[:a], pos[:a]
        np.bitwise_and(xa, M - 1, out=sl)
        np.bitwise_or(sl, tbase[:a], out=sl)
        tab.take(sl, out=en)  # (methods: the np.* wrappers cost a microsecond per call)
        out[pa] = en  # the low byte is the symbol
        np.add(pa, step_stride[:a], out=pa)
        np.right_shift(en, 8, out=fr)
        np.bitwise_and(fr, M - 1, out=fr)
        np.right_shift(xa, PRECISION, out=xa)
        np.multiply(xa, fr, out=xa)
        np.right_shift(en, 20, out=en)
        np.add(xa, en, out=xa)
        if t == last:
            break
        idx = (x[: alive[t + 1]] < LOW).nonzero()[0]
        if idx.size:
            chunk = batch.next_words(idx.size)
            if chunk is None:
                return None
            x[idx] = (x[idx] << np.uint32(16)) | chunk
    return x
