"""Codec registry: how one tensor payload is coded, how the codec is chosen, and how it is parsed back.

A coded payload has two parts: *meta* (codec parameters, coder tables, lane states; small, stored
inside the compressed index, where similar tables of many tensors compress together) and *bulk*
(everything else, stored in the payload section). Tensor codecs (``Codec``), as ``meta / bulk``::

    RAW     - / the bytes as they are
    ZLIB    - / zlib level 9 stream (wins on tensors with repeats: lookup tables, STFT bases, shapes)
    LZMA    u8 log2(dictionary size) / raw LZMA2 stream (stdlib, C-backed)
    BROTLI  - / brotli stream (Google's C library: its context modelling on the previous bytes codes
            small int8 tensors and bundles without per-tensor tables, and it unpacks at zlib's speed)
    PLANES  u8 itemsize, then per byte plane u8 plane codec + its meta / the RAW planes' bytes
            (the *pool*), minus its last 2 bytes per rANS lane, which ride in the lanes' start
            states (see rans.encode); the decoder recomputes that split from the lane counts
    REF     uvarint index of an earlier record with the same payload / - (deduplication)
    BUNDLE  u8 inner codec, inner meta / inner bulk: small tensors of one itemsize coded together
            (one set of tables for all); this record's data is the bundle's first bytes, and the
            bundle's size is the sum of its members' (this record and its SLICE records)
    SLICE   uvarint bundle number (0 = the file's first BUNDLE record) / -: a later member of a
            bundle, whose bytes follow the previous member's
    GROUPS  u8 itemsize, u8 flags (1: transposed), uvarint row bytes R, u8 group count K, the group
            id of each of the ``raw_len // R`` rows (groups.pack_ids), then per group: uvarint meta
            length, that group's PLANES meta, uvarint bulk length / the groups' PLANES bulks: rows
            (output channels, or fixed-size chunks) sorted by group, each group coded with its own
            tables; bytes after the last whole row end the last group (see groups.py). Flag 2: the
            ids are followed by u8 codec + meta of one plain payload (zlib, LZMA, brotli, ...) /
            its bulk, holding all rows in group order (similar rows side by side help LZ coders)
    SPLIT   u8 itemsize, then per byte plane u8 SplitPlane (+ u8 value for CONST, + uvarint length for
            ZLIB / BROTLI) / the planes' bytes in order (RAW planes as they are): byte grouping with
            each plane compressed by an LZ codec (brotli's context modelling beats order-0 coding
            on some planes)
    CHUNKS  uvarint chunk count K, then per chunk: uvarint decoded bytes, u8 codec, uvarint meta
            length + meta, uvarint bulk bytes, uvarint rANS words, uvarint Huffman words, u32 CRC32
            of the chunk's decoded bytes / per chunk: its bulk, its own rANS words (u16) and its own
            Huffman words (u32), in its own lockstep read order. A large tensor as independent
            chunks of about ``chunk_bytes`` (whole rows of its first axis when they fit), each with
            its own codec choice; the packer writes each chunk out as soon as it is coded (the
            file's stream section), so neither trials nor coded output grow with the tensor

Plane codecs (``PlaneCodec``): RAW (bytes in bulk), CONST (meta: the one byte value), RANS and
HUFFMAN (meta: the stream header; the words are in the file's shared word sections, see lanes.py).

Selection keeps the smallest candidate, with speed-aware exceptions (each a PackOptions knob): Huffman
must beat rANS by 2% (every coder in use costs the unpacker one lockstep pass), and above 16 KB the
slow-decoding payloads must be clearly smaller. LZMA (it unpacks literal-heavy data at a few tens of
MB/s) must beat every other candidate by 2%: its payload carries ``Coded.margin`` and every comparison
(:func:`cheaper`) counts it that much larger, LZMA over grouped rows against plain brotli included.
brotli at quality 11 must beat brotli at quality 9 or 5 by 1% (its literal context modelling decodes
int8 data about 2x slower); rANS and zlib decode such data no faster than brotli-11, so against them
brotli competes on size. Trials are pruned: plane
coder sizes are estimated from histograms (within ~0.1% of the real size), so only the chosen coder
runs; planes whose entropy leaves no room are stored raw at once; LZ codecs on large tensors are
tried on a sample first, and LZMA only where zlib came close (brotli too, on multi-byte elements).
Row groups are planned from per-row histograms (groups.plan) and coded only when the plan saves
bytes; the rows in group order are also offered to the LZ codecs as one payload (up to 4 MB), and
tensors up to 64 KB also offer the LZ codecs their bytes with the last axis outermost.
Candidate order per tensor: byte planes (rANS/Huffman/raw/const), row groups, zlib, LZMA, brotli.
"""

from __future__ import annotations

import dataclasses
import enum
import lzma
import math
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

try:  # a dependency (setup.cfg); packing without it only loses one candidate codec
    import brotli as _brotli
except ImportError:  # pragma: no cover
    _brotli = None

from onnxopt.packing import groups, huffman, rans
from onnxopt.packing.entropy import counts, entropy_bits, plane_histograms
from onnxopt.packing.format import LIMITS, CorruptPackError, Limits, Reader, write_uvarint
from onnxopt.packing.lanes import EncodedStream, LaneStream, interleave_words, out_extent
from onnxopt.packing.planes import split_planes


class Codec(enum.IntEnum):
    RAW = 0
    ZLIB = 1
    LZMA = 2
    PLANES = 3
    REF = 4
    BUNDLE = 5
    SLICE = 6
    GROUPS = 7
    BROTLI = 8
    CHUNKS = 9
    SPLIT = 10


class SplitPlane(enum.IntEnum):
    RAW = 0
    CONST = 1
    ZLIB = 2
    BROTLI = 3


class PlaneCodec(enum.IntEnum):
    RAW = 0
    CONST = 1
    RANS = 2
    HUFFMAN = 3


E = TypeVar("E", SplitPlane, PlaneCodec)


CODEC_NAMES = ("raw", "zlib", "lzma", "huffman", "rans", "groups", "brotli", "split")
#: zlib cannot expand data by more than this factor (deflate's best case is ~1032:1)
ZLIB_MAX_RATIO = 1100


@dataclass(frozen=True)
class PackOptions:
    """Knobs of codec selection (the defaults are what the benchmarks use)."""

    codecs: frozenset[str] = frozenset(CODEC_NAMES)
    #: payloads up to this size stay in the skeleton, compressed with the model structure: a record of
    #: their own costs more unpacking time than they are worth (int8 scales and zero points, 1-4 bytes).
    #: Larger limits unpack faster still but cost size: PP-OCR cls int8 at 8/16/64 bytes: 86.37/86.42/
    #: 86.74% of its weights, 0.33/0.33/0.40 of zlib's unpack throughput (0 bytes: 86.38%, 0.26)
    inline_max_bytes: int = 8
    #: lanes are added until their state overhead reaches this fraction of the tensor's coded size;
    #: more lanes mean fewer lockstep steps (faster unpacking) but more bytes
    lane_overhead: float = 0.0015
    #: an entropy coder must save at least this fraction of a plane over storing it raw
    min_gain: float = 0.005
    #: Huffman is chosen over rANS only when smaller by this fraction (and 64 bytes): each coder
    #: used in a file costs one lockstep pass when unpacking
    huffman_margin: float = 0.02
    #: tensors up to this size try every LZ codec in full; larger ones are sampled first
    lz_full_trial_bytes: int = 1 << 16
    lz_sample_bytes: int = 1 << 15
    lzma_preset: int = 9
    #: LZMA is tried only where zlib came within this factor of the best codec so far
    lzma_probe: float = 1.08
    #: above slow_min_bytes, LZMA must beat the best other codec by this fraction: it decodes literal-
    #: heavy int8 data at 25-90 MB/s, brotli at 100-300 (silero's 49.5 KB encoder weights: 0.54 vs 0.23 ms)
    lzma_margin: float = 0.02
    #: above slow_min_bytes, brotli at quality 10-11 must beat brotli_fast_qualities by this fraction: its
    #: literal context modelling decodes int8 weights about 2x slower (silero's 64 KB LSTM weights: 518 vs
    #: 245 us, and quality 5 was 19 bytes smaller)
    brotli_margin: float = 0.01
    #: payloads up to this size take the smallest candidate whatever its decoding speed
    slow_min_bytes: int = 1 << 14
    #: up to this size LZMA is also tried without literal context (lc=lp=pb=0)
    lzma_small_bytes: int = 1 << 16
    brotli_quality: int = 11
    #: brotli is also tried at these qualities (no literal context modelling: decodes about 2x faster)
    brotli_fast_qualities: tuple[int, ...] = (9, 5)
    #: brotli is tried on multi-byte elements only where zlib came within this factor of the best
    brotli_probe: float = 1.03
    #: at most this many lockstep steps per stream: small planes get extra lanes so that the model's
    #: longest stream (which sets the number of numpy rounds at unpack time) stays short
    max_steps: int = 512
    #: row groups (see groups.py) are planned for payloads of at least this many bytes ...
    group_min_bytes: int = 256
    #: ... and coded when the plan saves at least this fraction of the best size so far
    group_min_gain: float = 0.002
    #: rows of this many elements are tried when no tensor shape gives rows (bundles, 1-d tensors)
    group_chunks: tuple[int, ...] = (64, 256)
    #: payloads up to lz_full_trial_bytes with a shape also try LZ over the tensor with its last axis
    #: outermost (see _try_groups)
    layout_lz: bool = True
    #: the LZ codecs over rows in group order are tried up to this payload size (brotli-11 packs
    #: about 0.4 MB/s)
    group_lz_max_bytes: int = 1 << 22
    #: byte planes compressed one by one with zlib / brotli (Codec.SPLIT) are tried up to this size
    split_max_bytes: int = 1 << 20
    #: rANS planes may use parametric tables (rans.ParamTable). The packer sets this for bundles only:
    #: a bundle's one table is a large share of its size (MTCNN P-net int8: 187 of 5,462 bytes), while on
    #: a single small tensor the curve saved 5-19 bytes and took it from brotli, which decodes faster
    #: (PP-OCR det int8: 5.6% slower unpacking for 122 bytes)
    parametric_tables: bool = False
    #: tensors larger than this are coded as independent chunks (Codec.CHUNKS) ...
    chunk_min_bytes: int = 24 << 20
    #: ... of about this many bytes each (bounds the memory of codec trials and of held output)
    chunk_bytes: int = 16 << 20

    def __post_init__(self) -> None:
        if not 1 <= self.max_steps <= LIMITS.max_steps:
            raise ValueError(f"max_steps must be in 1..{LIMITS.max_steps} (readers refuse longer streams)")
        if not 1 <= self.chunk_bytes <= self.chunk_min_bytes:
            raise ValueError("chunk_bytes must be in 1..chunk_min_bytes")

    @staticmethod
    def from_codecs(codecs: Iterable[str] | None) -> PackOptions:
        if codecs is None:
            return PackOptions()
        chosen = frozenset(c.lower() for c in codecs)
        unknown = chosen - set(CODEC_NAMES)
        if unknown:
            raise ValueError(f"unknown codec(s) {sorted(unknown)}; choose from {', '.join(CODEC_NAMES)}")
        return PackOptions(codecs=chosen)


@dataclass
class Coded:
    """One tensor payload after coding."""

    codec: Codec
    meta: bytes = b""
    bulk: bytes = b""
    rans: list[EncodedStream] = field(default_factory=list)
    huffman: list[EncodedStream] = field(default_factory=list)
    label: str = ""
    hists: list[np.ndarray] | None = None  # byte-plane histograms of the data, when computed
    stream: int = 0  # CHUNKS: bytes already written to the file's stream section (bulk and words)
    margin: float = 0.0  # how much larger it counts when compared (slow to decode: see cheaper)

    @property
    def size(self) -> int:
        """Bytes it occupies (meta counted uncompressed)."""
        words = sum(s.word_bytes for s in self.rans) + sum(s.word_bytes for s in self.huffman)
        return len(self.meta) + len(self.bulk) + words + self.stream


# --------------------------------------------------------------------------- encoding


def cheaper(candidate: Coded, best: Coded) -> bool:
    """Whether ``candidate`` should replace ``best``: smaller, each counted ``Coded.margin`` larger than it
    is (a slow-decoding payload must win clearly)."""
    return candidate.size * (1.0 + candidate.margin) < best.size * (1.0 + best.margin)


def _lzma_filters(dict_log2: int) -> list[dict]:
    return [{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": 1 << dict_log2}]


def _lzma_encode(data: bytes, preset: int, literal_context: bool = True) -> tuple[bytes, bytes]:
    """Raw LZMA2; ``literal_context=False`` sets lc=lp=pb=0 (literals coded without the previous
    byte's bits: an adaptive order-0 coder, better on small int8 data). LZMA2 carries lc/lp/pb in
    its stream, so the decoder needs only the dictionary size."""
    dict_log2 = max(12, min(26, math.ceil(math.log2(max(len(data), 1)))))
    filters = [{"id": lzma.FILTER_LZMA2, "preset": preset, "dict_size": 1 << dict_log2}]
    if not literal_context:
        filters[0].update(lc=0, lp=0, pb=0)
    return bytes([dict_log2]), lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters)


def _lanes_for(n: int, bits_per_element: float, options: PackOptions) -> int:
    """Lane count: overhead (~24 bits per lane) near ``lane_overhead`` of the tensor's coded bits."""
    lanes = int(options.lane_overhead * n * max(bits_per_element, 1.0) / 24)
    return max(1, lanes, -(-n // options.max_steps))


def _decide(
    plane: np.ndarray, hist: np.ndarray, lanes: int, options: PackOptions
) -> tuple[PlaneCodec, np.ndarray | int | None]:
    """Pick a plane codec from histogram-based size estimates (exact enough; see rans/huffman)."""
    n = plane.size
    present = np.flatnonzero(hist)
    if present.size == 1:
        return PlaneCodec.CONST, int(present[0])
    limit = n * (1.0 - options.min_gain)
    floor = entropy_bits(hist) / 8  # no order-0 coder goes below this
    if floor + huffman.table_bytes(hist) >= limit:  # (and tables cost at least about this much)
        return PlaneCodec.RAW, None
    best: tuple[float, PlaneCodec, np.ndarray | None] = (limit, PlaneCodec.RAW, None)
    rans_est = math.inf
    if "rans" in options.codecs:
        rans_est, freqs = rans.estimate_bytes(hist, lanes, options.parametric_tables)
        if rans_est < best[0]:
            best = (rans_est, PlaneCodec.RANS, freqs)
    # each coder used in a file costs the unpacker one lockstep pass: Huffman must clearly win
    margin = 0.0 if math.isinf(rans_est) else max(options.huffman_margin * rans_est, 64)
    if "huffman" in options.codecs and floor + huffman.table_bytes(hist) < best[0] - margin:
        est, lengths = huffman.estimate_bytes(hist, lanes)
        if est < best[0] - margin:
            best = (est, PlaneCodec.HUFFMAN, lengths)
    return best[1], best[2]


def code_planes(data: np.ndarray, itemsize: int, options: PackOptions) -> Coded:
    """Byte-group ``data`` and code each plane with the best of raw / const / rANS / Huffman.

    The RAW planes' bytes form the tensor's *pool*; rANS lanes carry 16 bits each of the pool's tail
    in their start states (see rans.encode), so those bytes are not stored again.
    """
    hists = plane_histograms(data, itemsize)
    planes = split_planes(data, itemsize)
    n = planes[0].size
    bits = sum(min(8.0, entropy_bits(h) / max(n, 1)) for h in hists)
    lanes = _lanes_for(n, bits, options)
    decisions = [_decide(p, h, lanes, options) for p, h in zip(planes, hists)]
    raw = [p for p, (codec, _) in zip(planes, decisions) if codec is PlaneCodec.RAW]
    pool = np.concatenate(raw) if raw else np.zeros(0, dtype=np.uint8)
    avail = pool.size
    used = max(1, min(lanes, n))
    meta = bytearray([itemsize])
    coded = Coded(Codec.PLANES)
    for plane, (codec, info) in zip(planes, decisions):
        meta.append(codec)
        if codec is PlaneCodec.CONST:
            meta.append(info)
        elif codec is PlaneCodec.RANS:
            carry = None
            if avail >= 2 * used:
                carry = np.frombuffer(pool[avail - 2 * used : avail].tobytes(), dtype="<u2")
                avail -= 2 * used
            stream = rans.encode(plane, lanes, info, carry, tail=carry is None)
            meta += stream.header
            coded.rans.append(stream)
        elif codec is PlaneCodec.HUFFMAN:
            stream = huffman.encode(plane, lanes, info)
            meta += stream.header
            coded.huffman.append(stream)
    coded.meta = bytes(meta)
    coded.bulk = pool[:avail].tobytes()
    coded.label = "planes[" + ",".join(c.name.lower() for c, _ in decisions) + "]"
    coded.hists = hists
    return coded


def _sample(data: bytes, size: int, parts: int = 4) -> bytes:
    if len(data) <= size * parts:
        return data
    step = len(data) // parts
    return b"".join(data[i * step : i * step + size] for i in range(parts))


def _row_layouts(size: int, itemsize: int, shape: Sequence[int] | None, options: PackOptions) -> list[tuple[int, bool]]:
    """Candidate (row bytes, transposed) views for row groups: output channels by the tensor's shape
    (first axis; last axis transposed, as MatMul weights keep theirs), else fixed-size chunks."""
    layouts: list[tuple[int, bool]] = []
    dims = [int(d) for d in shape] if shape is not None else []
    if len(dims) >= 2 and all(d > 0 for d in dims) and math.prod(dims) * itemsize == size:
        if dims[0] >= 2:
            layouts.append((size // dims[0], False))
        if dims[-1] >= 2:
            layouts.append((size // dims[-1], True))
        return layouts
    for chunk in options.group_chunks:
        if size >= 4 * chunk * itemsize:
            layouts.append((chunk * itemsize, False))
    return layouts


def code_groups(data: np.ndarray, itemsize: int, row_bytes: int, transposed: bool, ids: np.ndarray,
                options: PackOptions) -> Coded:
    """Code ``data`` as rows of ``row_bytes`` sorted by group ``ids``, each group with code_planes."""
    rows = data.size // row_bytes
    whole = rows * row_bytes
    if ids.size != rows or (transposed and whole != data.size) or row_bytes % itemsize:
        raise ValueError(f"row groups: {ids.size} ids for {data.size} bytes in rows of {row_bytes}")
    k = int(ids.max()) + 1
    view = groups.grouped_view(data[:whole], itemsize, rows, transposed)
    permuted = view[np.argsort(ids, kind="stable")].reshape(-1)
    counts = np.bincount(ids, minlength=k)
    meta = bytearray([itemsize, int(transposed)])
    write_uvarint(meta, row_bytes)
    meta.append(k)
    meta += groups.pack_ids(ids, k)
    coded = Coded(Codec.GROUPS)
    bulks = []
    start = 0
    for g in range(k):
        end = start + int(counts[g]) * row_bytes
        seg = permuted[start:end] if g < k - 1 else np.concatenate([permuted[start:end], data[whole:]])
        start = end
        sub = code_planes(seg, itemsize, options)
        write_uvarint(meta, len(sub.meta))
        meta += sub.meta
        write_uvarint(meta, len(sub.bulk))
        bulks.append(sub.bulk)
        coded.rans += sub.rans
        coded.huffman += sub.huffman
    coded.meta = bytes(meta)
    coded.bulk = b"".join(bulks)
    coded.label = f"groups[{k}{'T' if transposed else ''}x{row_bytes // itemsize}]"
    return coded


def _try_groups(
    arr: np.ndarray, itemsize: int, shape: Sequence[int] | None, best: Coded, options: PackOptions
) -> Coded:
    plan: tuple[float, int, bool, np.ndarray] | None = None
    layouts = _row_layouts(arr.size, itemsize, shape, options)
    for row_bytes, transposed in layouts:
        rows = arr.size // row_bytes
        ids, saved = groups.plan(groups.grouped_view(arr[: rows * row_bytes], itemsize, rows, transposed), itemsize)
        if ids is not None and (plan is None or saved > plan[0]):
            plan = (saved, row_bytes, transposed, ids)
    if plan is not None:
        saved, row_bytes, transposed, ids = plan
        if saved >= max(16.0, options.group_min_gain * best.size):
            coded = code_groups(arr, itemsize, row_bytes, transposed, ids, options)
            if cheaper(coded, best):
                best = coded
        # the same rows in group order as one LZ payload: similar rows side by side help LZ and brotli
        best = _lz_rows(arr, itemsize, row_bytes, transposed, ids, best, options)
    if options.layout_lz and arr.size <= options.lz_full_trial_bytes:
        for row_bytes, transposed in layouts:
            rows = arr.size // row_bytes
            if transposed and rows >= 2:
                # the tensor with its last axis outermost, rows in their own order (two groups: row 0
                # and the rest), as one LZ payload: elements of one kernel tap or one output column
                # side by side (silero's encoder weights: brotli 8,875 bytes as they are, 8,626 so)
                identity = np.ones(rows, dtype=np.uint8)
                identity[0] = 0
                best = _lz_rows(arr, itemsize, row_bytes, transposed, identity, best, options)
    return best


def _lz_rows(arr: np.ndarray, itemsize: int, row_bytes: int, transposed: bool, ids: np.ndarray, best: Coded,
             options: PackOptions) -> Coded:
    """``best``, or the rows of this layout in group order as one LZ payload if that is smaller."""
    lz = options.codecs & {"zlib", "lzma", "brotli"}
    if not lz or arr.size > options.group_lz_max_bytes:
        return best
    rows = arr.size // row_bytes
    view = groups.grouped_view(arr[: rows * row_bytes], itemsize, rows, transposed)
    permuted = np.concatenate([view[np.argsort(ids, kind="stable")].reshape(-1), arr[rows * row_bytes :]])
    lz_only = dataclasses.replace(options, codecs=frozenset(lz))
    inner = choose(permuted.tobytes(), itemsize, lz_only, ceiling=best.size)
    if inner.codec is Codec.RAW:
        return best
    k = int(ids.max()) + 1
    meta = bytearray([itemsize, int(transposed) | 2])
    write_uvarint(meta, row_bytes)
    meta.append(k)
    meta += groups.pack_ids(ids, k)
    meta.append(inner.codec)
    meta += inner.meta
    coded = Coded(Codec.GROUPS, bytes(meta), inner.bulk, inner.rans, inner.huffman, margin=inner.margin)
    coded.label = f"groups[{k}{'T' if transposed else ''}x{row_bytes // itemsize}]:{inner.label}"
    return coded if cheaper(coded, best) else best


def choose(
    data: bytes, itemsize: int, options: PackOptions, shape: Sequence[int] | None = None, ceiling: int | None = None
) -> Coded:
    """Code one payload with every allowed codec worth trying; return the smallest.

    ``shape`` (the tensor's dims, when ``data`` is one tensor) gives the rows for row groups.
    ``ceiling``: a size the caller already has; LZ trials that cannot beat it are pruned (the result
    may then be RAW).
    """
    best = Coded(Codec.RAW, bulk=data, label="raw")
    limit = len(data) if ceiling is None else min(len(data), ceiling)
    if not data:
        return best
    arr = np.frombuffer(data, dtype=np.uint8)
    if itemsize < 1 or len(data) % itemsize:
        itemsize = 1
    hists = None
    if options.codecs & {"rans", "huffman"}:
        planes = code_planes(arr, itemsize, options)
        hists = planes.hists
        if cheaper(planes, best):
            best = planes
    if "groups" in options.codecs and len(data) >= options.group_min_bytes:
        # (without rans/huffman only the rows-in-group-order LZ payload can win: groups of raw planes don't)
        best = _try_groups(arr, itemsize, shape, best, options)
    lz = [c for c in ("zlib", "lzma", "brotli") if c in options.codecs and (c != "brotli" or _brotli is not None)]

    def skip(name: str, zlib_ratio: float) -> bool:
        """LZMA only where zlib came within lzma_probe; brotli likewise on multi-byte elements, within
        brotli_probe (its context modelling suits 1-byte data, which it always gets)."""
        if name == "lzma":
            return zlib_ratio > options.lzma_probe
        if name == "brotli" and itemsize > 1:
            return zlib_ratio > options.brotli_probe
        return False

    if lz and len(data) > options.lz_full_trial_bytes:
        # on a sample: can LZ beat the byte-plane entropy (an optimistic estimate of our coders)?
        sample = _sample(data, options.lz_sample_bytes)
        sarr = np.frombuffer(sample, dtype=np.uint8)
        k = itemsize if len(sample) % itemsize == 0 else 1
        bound = sum(entropy_bits(counts(p)) for p in split_planes(sarr, k)) / 8
        ratio = min(best.size, limit) / len(data)
        target = min(bound, ratio * len(sample)) * 0.99
        kept = []
        zlib_ratio = 0.0
        for name in lz:
            if skip(name, zlib_ratio):
                continue
            size = len(_lz(name, sample, options)[1])
            if name == "zlib":
                zlib_ratio = size / max(target, 1e-9)
            # brotli adapts as it goes: on 1-byte data a sample within 1% of the best may still win
            if size < target * (1.02 if name == "brotli" and itemsize == 1 else 1.0):
                kept.append(name)
        lz = kept
    zlib_ratio = 0.0
    slow = len(data) > options.slow_min_bytes
    for name in lz:
        if skip(name, zlib_ratio):
            continue
        meta, bulk = _lz(name, data, options)
        small = len(data) <= options.lzma_small_bytes
        if name == "lzma" and small:
            alt = _lzma_encode(data, options.lzma_preset, literal_context=False)
            if len(alt[1]) < len(bulk):
                meta, bulk = alt
        size = len(meta) + len(bulk)
        if name == "zlib":
            zlib_ratio = size / min(best.size, limit)
        margin = options.lzma_margin if slow and name == "lzma" else 0.0
        coded = Coded(_LZ_CODECS[name], meta, bulk, label=name, margin=margin)
        if name == "brotli":
            coded = _brotli_quality(coded, data, slow, options)
        if cheaper(coded, best):
            best = coded
    if hists is None:
        hists = plane_histograms(arr, itemsize)
    if "split" in options.codecs and itemsize > 1 and len(data) <= options.split_max_bytes:
        split = code_split(data, itemsize, options, hists)
        if cheaper(split, best):
            best = split
    best.hists = hists
    return best


def code_split(data: bytes, itemsize: int, options: PackOptions, hists: list[np.ndarray] | None = None) -> Coded:
    """Byte planes, each stored raw, constant, or compressed alone with zlib or brotli (Codec.SPLIT)."""
    arr = np.frombuffer(data, dtype=np.uint8)
    planes = split_planes(arr, itemsize)
    hists = hists if hists is not None else plane_histograms(arr, itemsize)
    n = planes[0].size
    meta = bytearray([itemsize])
    bulks: list[bytes] = []
    names = []
    for plane, hist in zip(planes, hists):
        present = np.flatnonzero(hist)
        if present.size == 1:
            meta += bytes([SplitPlane.CONST, int(present[0])])
            names.append("const")
            continue
        raw = plane.tobytes()
        best: tuple[int, SplitPlane, bytes] = (len(raw), SplitPlane.RAW, raw)
        if entropy_bits(hist) < 7.9 * n or n <= 4096:  # (near-uniform mantissa bytes stay raw)
            z = zlib.compress(raw, 9)
            if len(z) + 2 < best[0]:
                best = (len(z) + 2, SplitPlane.ZLIB, z)
            if _brotli is not None and "brotli" in options.codecs:
                b = _lz("brotli", raw, options)[1]
                if len(b) + 2 < best[0]:
                    best = (len(b) + 2, SplitPlane.BROTLI, b)
        meta.append(best[1])
        if best[1] is not SplitPlane.RAW:
            write_uvarint(meta, len(best[2]))
        bulks.append(best[2])
        names.append(best[1].name.lower())
    coded = Coded(Codec.SPLIT, bytes(meta), b"".join(bulks), label=f"split[{','.join(names)}]")
    coded.hists = hists
    return coded


def _plane_layout(r: Reader, raw_len: int, what: str) -> tuple[int, int]:
    """Bytes per value and value count of a payload coded as byte planes, checked against its length."""
    itemsize = r.u8()
    if itemsize < 1 or raw_len % itemsize or raw_len == 0:
        raise CorruptPackError(f"{what}: {raw_len} bytes cannot be split into {itemsize}-byte planes")
    return itemsize, raw_len // itemsize


def _plane_codec(r: Reader, codecs: type[E], plane: int, what: str) -> E:
    """The next byte of ``r`` as a member of the plane-codec enum ``codecs`` (SplitPlane or PlaneCodec)."""
    try:
        return codecs(r.u8())
    except ValueError:
        raise CorruptPackError(f"{what}: unknown plane codec in plane {plane}") from None


def _parse_split(r: Reader, bulk: memoryview, raw_len: int, what: str, limits: Limits) -> Parsed:
    itemsize, n = _plane_layout(r, raw_len, what)
    out = np.empty((n, itemsize), dtype=np.uint8)
    pos = 0
    for p in range(itemsize):
        codec = _plane_codec(r, SplitPlane, p, what)
        if codec is SplitPlane.CONST:
            out[:, p] = r.u8()
            continue
        length = n if codec is SplitPlane.RAW else r.uvarint(len(bulk) - pos, "plane size")
        if length > len(bulk) - pos:
            raise CorruptPackError(f"{what}: plane {p} runs past its payload")
        part = bulk[pos : pos + length]
        pos += length
        if codec is not SplitPlane.RAW:
            inner = Codec.ZLIB if codec is SplitPlane.ZLIB else Codec.BROTLI
            part = parse_payload(inner, memoryview(b""), part, n, f"{what} (plane {p})", limits).data
        out[:, p] = np.frombuffer(part, dtype=np.uint8)
    r.done()
    if pos != len(bulk):
        raise CorruptPackError(f"{what}: planes leave {len(bulk) - pos} payload bytes unused")
    return Parsed(data=out.tobytes(), extent=raw_len)


def chunk_spans(size: int, itemsize: int, shape: Sequence[int] | None, chunk_bytes: int
                ) -> list[tuple[int, int, list[int] | None]]:
    """(start, end, shape of the chunk) for :func:`code_chunks`: whole rows of the first axis when
    a row fits in a chunk (so row groups still see output channels), else element-aligned slices."""
    count = max(1, -(-size // chunk_bytes))
    dims = [int(d) for d in shape] if shape is not None else []
    if len(dims) >= 2 and all(d > 0 for d in dims) and math.prod(dims) * itemsize == size and dims[0] >= count:
        row = size // dims[0]
        per = -(-dims[0] // count)
        return [(r * row, min(dims[0], r + per) * row, [min(dims[0], r + per) - r, *dims[1:]])
                for r in range(0, dims[0], per)]
    per_chunk = -(-size // count)
    step = -(-per_chunk // itemsize) * itemsize
    return [(start, min(size, start + step), None) for start in range(0, size, step)]


def code_chunks(data: bytes | memoryview, itemsize: int, options: PackOptions, shape: Sequence[int] | None,
                emit: Callable[[bytes], None]) -> Coded:
    """Code a large payload as independent chunks (Codec.CHUNKS), handing each chunk's bytes to
    ``emit`` as soon as it is coded; the returned Coded keeps only the metadata."""
    view = memoryview(data).cast("B")
    if itemsize < 1 or len(view) % itemsize:
        itemsize = 1
    spans = chunk_spans(len(view), itemsize, shape, options.chunk_bytes)
    meta = bytearray()
    write_uvarint(meta, len(spans))
    hists: list[np.ndarray] | None = None
    labels: dict[str, int] = {}
    written = 0
    for start, end, chunk_shape in spans:
        part = bytes(view[start:end])
        coded = choose(part, itemsize, options, shape=chunk_shape)
        rans_words = interleave_words(coded.rans, np.uint16).astype("<u2").tobytes()
        huff_words = interleave_words(coded.huffman, np.uint32).astype("<u4").tobytes()
        write_uvarint(meta, len(part))
        meta.append(coded.codec)
        write_uvarint(meta, len(coded.meta))
        meta += coded.meta
        write_uvarint(meta, len(coded.bulk))
        write_uvarint(meta, len(rans_words) // 2)
        write_uvarint(meta, len(huff_words) // 4)
        meta += zlib.crc32(part).to_bytes(4, "little")
        for blob in (coded.bulk, rans_words, huff_words):
            if blob:
                emit(bytes(blob))
                written += len(blob)
        if coded.hists is not None:
            hists = coded.hists if hists is None else [a + b for a, b in zip(hists, coded.hists)]
        labels[coded.label] = labels.get(coded.label, 0) + end - start
        del part, coded
    label = max(labels, key=labels.get) if labels else "raw"
    return Coded(Codec.CHUNKS, bytes(meta), label=f"chunks[{len(spans)}]:{label}", hists=hists, stream=written)


def _parse_chunks(r: Reader, bulk: memoryview, raw_len: int, what: str, limits: Limits) -> Parsed:
    """Decode every chunk of a CHUNKS payload (each alone: its words are its own) into one buffer."""
    count = r.uvarint(max(1, raw_len), "chunk count")
    entries = []
    covered = pos = 0
    for k in range(count):
        size = r.uvarint(raw_len - covered, "chunk size")
        codec = r.u8()
        if codec in (Codec.REF, Codec.SLICE, Codec.BUNDLE, Codec.CHUNKS) or size == 0:
            raise CorruptPackError(f"{what}: malformed chunk {k}")
        meta = r.take(r.uvarint(r.remaining, "chunk metadata size"))
        lengths = [r.uvarint(len(bulk) - pos, "chunk payload size")]
        lengths.append(r.uvarint((len(bulk) - pos - lengths[0]) // 2, "chunk rANS words"))
        lengths.append(r.uvarint((len(bulk) - pos - lengths[0] - 2 * lengths[1]) // 4, "chunk Huffman words"))
        crc = r.u32()
        entries.append((size, codec, meta, pos, *lengths, crc))
        covered += size
        pos += lengths[0] + 2 * lengths[1] + 4 * lengths[2]
    r.done()
    if covered != raw_len or pos != len(bulk):
        raise CorruptPackError(f"{what}: chunks do not add up to the tensor ({covered} of {raw_len} bytes)")
    pieces = []
    for k, (size, codec, meta, start, nbulk, nrans, nhuff, crc) in enumerate(entries):
        piece = f"{what} (chunk {k})"
        words_at = start + nbulk
        parsed = parse_payload(codec, meta, bulk[start:words_at], size, piece, limits)
        if sum(s.nwords for s in parsed.rans) != nrans or sum(s.nwords for s in parsed.huffman) != nhuff:
            raise CorruptPackError(f"{piece}: word counts do not match its streams")
        rans_words = np.frombuffer(bulk[words_at : words_at + 2 * nrans], dtype="<u2")
        huff_words = np.frombuffer(bulk[words_at + 2 * nrans : words_at + 2 * nrans + 4 * nhuff], dtype="<u4")
        decoded = decode_parsed(parsed, rans_words, huff_words, size)
        if zlib.crc32(decoded) != crc:
            raise CorruptPackError(f"{piece}: checksum mismatch after decoding")
        pieces.append(decoded)
        del decoded, parsed
    return Parsed(data=b"".join(pieces), extent=0)


_LZ_CODECS = {"zlib": Codec.ZLIB, "lzma": Codec.LZMA, "brotli": Codec.BROTLI}


def _lz(name: str, data: bytes, options: PackOptions) -> tuple[bytes, bytes]:
    if name == "zlib":
        return b"", zlib.compress(data, 9)
    if name == "brotli":
        return b"", _brotli_at(data, options.brotli_quality)
    return _lzma_encode(data, options.lzma_preset)


def _brotli_quality(coded: Coded, data: bytes, slow: bool, options: PackOptions) -> Coded:
    """brotli at ``options.brotli_quality`` (``coded``) or at one of the fast qualities: with literal context
    modelling (quality 10-11) brotli decodes int8 weights about 2x slower, so above slow_min_bytes it must
    be ``brotli_margin`` smaller than the fast qualities' best to be kept. (Against the other codecs the
    brotli payload then competes on size: rANS and zlib decode such data no faster than brotli-11.)"""
    fast = [Coded(Codec.BROTLI, bulk=_brotli_at(data, q), label=f"brotli-q{q}") for q in options.brotli_fast_qualities]
    if not fast:
        return coded
    quickest = min(fast, key=lambda c: c.size)
    margin = options.brotli_margin if slow and options.brotli_quality >= 10 else 0.0
    return coded if coded.size * (1.0 + margin) < quickest.size else quickest


def _brotli_at(data: bytes, quality: int) -> bytes:
    lgwin = max(10, min(24, math.ceil(math.log2(max(len(data), 1)))))
    return _brotli.compress(data, quality=quality, lgwin=lgwin)


# --------------------------------------------------------------------------- decoding


@dataclass
class Parsed:
    """A record's payload after parsing: direct bytes, or planes waiting for the lockstep decoders."""

    data: bytes | None = None  # for RAW / ZLIB / LZMA
    fills: list[tuple[int, int, np.ndarray | int]] = field(default_factory=list)  # (plane, first, values)
    pool_planes: list[int] = field(default_factory=list)  # PLANES: the RAW planes, in order
    itemsize: int = 1
    extent: int = 0  # bytes the record needs in the output buffer (padding of lanes included)
    rans: list[LaneStream] = field(default_factory=list)
    huffman: list[LaneStream] = field(default_factory=list)
    ref: int = -1  # REF: the record whose payload this is; SLICE: the BUNDLE record
    offset: int = 0  # SLICE: where this record's bytes start in the bundle
    bundle_len: int = -1  # BUNDLE: decoded size of the whole bundle
    segments: list[tuple[int, int, Parsed]] = field(default_factory=list)  # GROUPS: (base, size, planes)
    group_ids: np.ndarray | None = None  # GROUPS: group of each row
    row_bytes: int = 0
    transposed: bool = False


_CODEC_IDS = {int(c): c for c in Codec}


def parse_payload(
    codec: int, meta: memoryview, bulk: memoryview, raw_len: int, what: str, limits: Limits, bundle_len: int = -1
) -> Parsed:
    """Check and parse one coded payload; zlib/LZMA streams are inflated here, bounded by ``raw_len``.

    ``bundle_len``: for a BUNDLE, the bundle's decoded size (the sum of its members' sizes, which
    the container knows from the index).
    """
    kind = _CODEC_IDS.get(codec)  # (Codec(codec) costs more than some payloads take to parse)
    if kind is None:
        raise CorruptPackError(f"{what}: unknown codec id {codec}")
    r = Reader(meta, what)
    if kind is Codec.RAW:
        r.done()
        if len(bulk) != raw_len:
            raise CorruptPackError(f"{what}: raw payload has {len(bulk)} bytes, record says {raw_len}")
        return Parsed(data=bytes(bulk), extent=raw_len)
    if kind is Codec.ZLIB:
        r.done()
        if raw_len > ZLIB_MAX_RATIO * len(bulk) + 64:
            raise CorruptPackError(f"{what}: {len(bulk)} zlib bytes cannot inflate to {raw_len}")
        try:
            inflater = zlib.decompressobj()
            data = inflater.decompress(bulk, raw_len)
            if not inflater.eof:  # the output limit may stop it just before the end of the stream
                data += inflater.decompress(inflater.unconsumed_tail, 1)
            ok = inflater.eof and not inflater.unused_data
        except zlib.error as exc:
            raise CorruptPackError(f"{what}: corrupt zlib stream ({exc})") from None
        if len(data) != raw_len or not ok:
            raise CorruptPackError(f"{what}: zlib stream does not hold exactly {raw_len} bytes")
        return Parsed(data=data, extent=raw_len)
    if kind is Codec.LZMA:
        dict_log2 = r.u8()
        r.done()
        if not 12 <= dict_log2 <= 30:
            raise CorruptPackError(f"{what}: LZMA dictionary size 2**{dict_log2} out of range")
        try:
            inflater = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_lzma_filters(dict_log2))
            data = inflater.decompress(bulk, raw_len)
            if not inflater.eof:
                data += inflater.decompress(b"", 1)
            ok = inflater.eof and not inflater.unused_data
        except lzma.LZMAError as exc:
            raise CorruptPackError(f"{what}: corrupt LZMA stream ({exc})") from None
        if len(data) != raw_len or not ok:
            raise CorruptPackError(f"{what}: LZMA stream does not hold exactly {raw_len} bytes")
        return Parsed(data=data, extent=raw_len)
    if kind is Codec.BROTLI:
        r.done()
        if _brotli is None:
            raise CorruptPackError(f"{what}: brotli-coded payload, but the brotli package is not installed")
        try:
            inflater = _brotli.Decompressor()
            # the output stops growing at the limit: a stream claiming more is refused, not inflated
            data = inflater.process(bytes(bulk), output_buffer_limit=raw_len + 1)
            ok = inflater.is_finished()
        except _brotli.error as exc:
            raise CorruptPackError(f"{what}: corrupt brotli stream ({exc})") from None
        if len(data) != raw_len or not ok:
            raise CorruptPackError(f"{what}: brotli stream does not hold exactly {raw_len} bytes")
        return Parsed(data=data, extent=raw_len)
    if kind in (Codec.REF, Codec.SLICE):
        ref = r.uvarint()
        r.done()
        Reader(bulk, what).done()
        return Parsed(ref=ref, extent=0)
    if kind is Codec.BUNDLE:
        total = bundle_len
        inner = r.u8()
        if inner in (Codec.REF, Codec.SLICE, Codec.BUNDLE, Codec.CHUNKS) or total < raw_len:
            raise CorruptPackError(f"{what}: malformed bundle")
        parsed = parse_payload(inner, r.take(r.remaining), bulk, total, what, limits)
        parsed.bundle_len = total
        return parsed
    if kind is Codec.GROUPS:
        return _parse_groups(r, bulk, raw_len, what, limits)
    if kind is Codec.CHUNKS:
        return _parse_chunks(r, bulk, raw_len, what, limits)
    if kind is Codec.SPLIT:
        return _parse_split(r, bulk, raw_len, what, limits)
    return _parse_planes(r, bulk, raw_len, what, limits)


def _parse_groups(r: Reader, bulk: memoryview, raw_len: int, what: str, limits: Limits) -> Parsed:
    itemsize = r.u8()
    flags = r.u8()
    row_bytes = r.uvarint(raw_len, "row size")
    if itemsize < 1 or flags > 3 or row_bytes < itemsize or row_bytes % itemsize or raw_len % itemsize:
        raise CorruptPackError(f"{what}: malformed row groups")
    rows = raw_len // row_bytes
    k = r.u8()
    if rows < 2 or (flags & 1 and rows * row_bytes != raw_len) or not 2 <= k <= min(groups.MAX_GROUPS, rows):
        raise CorruptPackError(f"{what}: malformed row groups")
    ids = groups.unpack_ids(r.take(groups.ids_bytes(rows, k)), rows, k)
    if int(ids.max()) >= k:
        raise CorruptPackError(f"{what}: row group id out of range")
    counts = np.bincount(ids, minlength=k)
    if not counts.all():
        raise CorruptPackError(f"{what}: empty row group")
    parsed = Parsed(itemsize=itemsize, group_ids=ids, row_bytes=row_bytes, transposed=bool(flags & 1))
    if flags & 2:  # one payload of any plain codec holds the rows in group order
        inner = r.u8()
        if inner in (Codec.REF, Codec.SLICE, Codec.BUNDLE, Codec.GROUPS, Codec.CHUNKS):
            raise CorruptPackError(f"{what}: malformed row groups")
        sub = parse_payload(inner, r.take(r.remaining), bulk, raw_len, what, limits)
        parsed.rans, parsed.huffman = sub.rans, sub.huffman
        parsed.segments.append((0, raw_len, sub))
        parsed.extent = 0 if sub.data is not None else sub.extent
        return parsed
    pos = base = 0
    for g in range(k):
        sub_meta = r.take(r.uvarint(r.remaining, "group metadata size"))
        size = int(counts[g]) * row_bytes + (raw_len - rows * row_bytes if g == k - 1 else 0)
        length = r.uvarint(len(bulk) - pos, "group payload size")
        sub = _parse_planes(Reader(sub_meta, what), bulk[pos : pos + length], size, what, limits)
        if sub.itemsize != itemsize:
            raise CorruptPackError(f"{what}: row group with another element size")
        pos += length
        for stream in sub.rans + sub.huffman:
            stream.dest += base
        parsed.rans += sub.rans
        parsed.huffman += sub.huffman
        parsed.segments.append((base, size, sub))
        base += sub.extent
    r.done()
    if pos != len(bulk):
        raise CorruptPackError(f"{what}: row groups leave {len(bulk) - pos} payload bytes unused")
    parsed.extent = base
    return parsed


def _parse_planes(r: Reader, bulk: memoryview, raw_len: int, what: str, limits: Limits) -> Parsed:
    itemsize, n = _plane_layout(r, raw_len, what)
    parsed = Parsed(itemsize=itemsize, extent=raw_len)
    for p in range(itemsize):
        codec = _plane_codec(r, PlaneCodec, p, what)
        if codec is PlaneCodec.RAW:
            parsed.pool_planes.append(p)
        elif codec is PlaneCodec.CONST:
            parsed.fills.append((p, 0, r.u8()))
        else:
            module = rans if codec is PlaneCodec.RANS else huffman
            stream = module.parse(r, n, limits)
            stream.dest, stream.stride = p, itemsize
            parsed.extent = max(parsed.extent, p + (stream.lanes * stream.steps - 1) * itemsize + 1)
            (parsed.rans if codec is PlaneCodec.RANS else parsed.huffman).append(stream)
    r.done()
    # the RAW planes' pool: its tail rides in rANS start states, the rest is the bulk; streams with
    # no pool bytes left carry their own last two symbols instead
    avail = n * len(parsed.pool_planes)
    for stream in parsed.rans:
        if avail >= 2 * stream.lanes:
            avail -= 2 * stream.lanes
            stream.carry_at = avail
        elif stream.steps >= rans.TAIL_MIN_STEPS:
            stream.tail = True
            stream.steps -= 2
    if len(bulk) != avail:
        raise CorruptPackError(f"{what}: {len(bulk)} bytes of raw planes, expected {avail}")
    pool = np.frombuffer(bulk, dtype=np.uint8)
    for k, p in enumerate(parsed.pool_planes):
        part = pool[k * n : (k + 1) * n]
        if part.size:
            parsed.fills.append((p, 0, part))
    return parsed


def fill_planes(parsed: Parsed, out: np.ndarray, base: int, size: int) -> None:
    """Write a PLANES region's RAW and CONST planes (the lockstep coders write the others)."""
    for offset, part, sub in parsed.segments:
        if sub.data is None:
            fill_planes(sub, out, base + offset, part)
    if not parsed.fills:
        return
    grid = out[base : base + size].reshape(-1, parsed.itemsize)
    for plane, first, fill in parsed.fills:
        if isinstance(fill, int):
            grid[:, plane] = fill
        else:
            grid[first : first + fill.size, plane] = fill


def decode_parsed(parsed: Parsed, rans_words: np.ndarray, huff_words: np.ndarray, size: int) -> bytes:
    """Decode one parsed payload whose streams' words are ``rans_words`` / ``huff_words`` (its own)."""
    if parsed.data is not None:
        return parsed.data
    out = np.zeros(max(parsed.extent, size, out_extent(parsed.rans + parsed.huffman)), dtype=np.uint8)
    fill_planes(parsed, out, 0, size)
    if not rans.decode_batch(parsed.rans, rans_words, out):
        raise CorruptPackError("inconsistent rANS data")
    if not huffman.decode_batch(parsed.huffman, huff_words, out):
        raise CorruptPackError("inconsistent Huffman data")
    place_carries(parsed, out, 0, size)
    return assemble(parsed, out, 0, size)


def decode_alone(coded: Coded, raw_len: int, limits: Limits) -> bytes:
    """Decode one coded payload by itself (the container decodes all tensors' streams together)."""
    parsed = parse_payload(coded.codec, memoryview(coded.meta), memoryview(coded.bulk), raw_len, "payload", limits)
    size = parsed.bundle_len if parsed.bundle_len >= 0 else raw_len
    words = interleave_words(coded.rans, np.uint16), interleave_words(coded.huffman, np.uint32)
    return decode_parsed(parsed, *words, size)[:raw_len]


def assemble(parsed: Parsed, out: np.ndarray, base: int, size: int) -> bytes:
    """A parsed payload's decoded bytes, once the coders have written ``out`` (rows put back in order)."""
    if parsed.data is not None:
        return parsed.data
    if not parsed.segments:
        return out[base : base + size].tobytes()
    parts = []
    for offset, part, sub in parsed.segments:
        start = base + offset
        parts.append(np.frombuffer(sub.data, dtype=np.uint8) if sub.data is not None else out[start : start + part])
    permuted = np.concatenate(parts)
    rows = size // parsed.row_bytes
    whole = rows * parsed.row_bytes
    body = groups.ungroup(
        permuted[:whole].reshape(rows, parsed.row_bytes), parsed.group_ids, parsed.itemsize, parsed.transposed
    )
    return body + permuted[whole:].tobytes() if whole < size else body


def place_carries(parsed: Parsed, out: np.ndarray, base: int, size: int) -> None:
    """Write the bytes the rANS lanes carried (pool bytes or their own last symbols) where they belong."""
    if parsed.segments:
        for offset, part, sub in parsed.segments:
            if sub.data is None:
                place_carries(sub, out, base + offset, part)
        return
    n = size // parsed.itemsize
    for stream in parsed.rans:
        if stream.tail:  # rows steps and steps+1 of the plane (lane j: symbol row * lanes + j)
            lanes, step = stream.lanes, stream.stride
            first = stream.dest + stream.steps * lanes * step  # (dest is absolute)
            out[first : first + lanes * step : step] = stream.carry & 0xFF
            out[first + lanes * step : first + 2 * lanes * step : step] = stream.carry >> 8
            continue
        if stream.carry_at < 0:
            continue
        planes = np.array(parsed.pool_planes, dtype=np.int64)
        data = np.frombuffer(stream.carry.astype("<u2").tobytes(), dtype=np.uint8)
        q = stream.carry_at + np.arange(data.size, dtype=np.int64)
        out[base + (q % n) * parsed.itemsize + planes[q // n]] = data
