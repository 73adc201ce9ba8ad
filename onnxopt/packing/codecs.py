"""Codec registry: how one tensor payload is coded, how the codec is chosen, and how it is parsed back.

Tensor codecs (``Codec``)::

    RAW     the bytes as they are
    ZLIB    zlib level 9 (wins on tensors with repeats: lookup tables, STFT bases, shape constants)
    LZMA    raw LZMA2 (stdlib, C-backed), payload ``u8 log2(dict size) | stream``
    PLANES  byte grouping: ``u8 itemsize`` then, per byte plane, ``u8 plane codec | its header``
    REF     the same payload as an earlier record: ``uvarint record index`` (deduplication)
    BUNDLE  small tensors of one itemsize coded together (one set of tables for all of them):
            ``uvarint bundle bytes | u8 inner codec | inner payload``; this record's own data is the
            bundle's first bytes
    SLICE   a later member of a bundle: ``uvarint bundle number`` (0 = the file's first BUNDLE
            record); its bytes follow the previous member's in that bundle

Plane codecs (``PlaneCodec``): RAW (the plane's bytes), CONST (one byte: every symbol equal), RANS and
HUFFMAN (a stream header; the stream's words are in the file's shared word sections, see lanes.py).

Selection tries the candidates and keeps the smallest. Expensive trials are pruned: entropy-coder sizes
are estimated exactly enough from histograms and only the winner is run (both when they are close),
and LZ codecs on large tensors are tried on a sample first and run on the whole tensor only when the
sample says they can beat byte grouping.
"""

from __future__ import annotations

import enum
import lzma
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from onnxopt.packing import huffman, rans
from onnxopt.packing.entropy import counts, entropy_bits
from onnxopt.packing.format import CorruptPackError, Limits, Reader
from onnxopt.packing.lanes import EncodedStream, LaneStream
from onnxopt.packing.planes import split_planes


class Codec(enum.IntEnum):
    RAW = 0
    ZLIB = 1
    LZMA = 2
    PLANES = 3
    REF = 4
    BUNDLE = 5
    SLICE = 6


class PlaneCodec(enum.IntEnum):
    RAW = 0
    CONST = 1
    RANS = 2
    HUFFMAN = 3


CODEC_NAMES = ("raw", "zlib", "lzma", "huffman", "rans")
#: zlib cannot expand data by more than this factor (deflate's best case is ~1032:1)
ZLIB_MAX_RATIO = 1100


@dataclass(frozen=True)
class PackOptions:
    """Knobs of codec selection (the defaults are what the benchmarks use)."""

    codecs: frozenset[str] = frozenset(CODEC_NAMES)
    #: lanes are added until their state overhead reaches this fraction of the tensor's coded size;
    #: more lanes mean fewer lockstep steps (faster unpacking) but more bytes
    lane_overhead: float = 0.004
    #: an entropy coder must save at least this fraction of a plane over storing it raw
    min_gain: float = 0.005
    #: tensors up to this size try every LZ codec in full; larger ones are sampled first
    lz_full_trial_bytes: int = 1 << 16
    lz_sample_bytes: int = 1 << 15
    lzma_preset: int = 9
    #: at most this many lockstep steps per stream: small planes get extra lanes so that the model's
    #: longest stream (which sets the number of numpy rounds at unpack time) stays short
    max_steps: int = 512

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
    payload: bytes
    rans: list[EncodedStream] = field(default_factory=list)
    huffman: list[EncodedStream] = field(default_factory=list)
    label: str = ""

    @property
    def size(self) -> int:
        return len(self.payload) + sum(s.word_bytes for s in self.rans) + sum(s.word_bytes for s in self.huffman)


# --------------------------------------------------------------------------- encoding


def _lzma_filters(dict_log2: int) -> list[dict]:
    return [{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": 1 << dict_log2}]


def _lzma_encode(data: bytes, preset: int) -> bytes:
    dict_log2 = max(12, min(26, math.ceil(math.log2(max(len(data), 1)))))
    filters = [{"id": lzma.FILTER_LZMA2, "preset": preset, "dict_size": 1 << dict_log2}]
    return bytes([dict_log2]) + lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters)


def _lanes_for(n: int, bits_per_element: float, options: PackOptions) -> int:
    """Lane count: overhead (~24 bits per lane) near ``lane_overhead`` of the tensor's coded bits."""
    lanes = int(options.lane_overhead * n * max(bits_per_element, 1.0) / 24)
    return max(1, lanes, -(-n // options.max_steps))


def _code_plane(
    plane: np.ndarray, hist: np.ndarray, lanes: int, options: PackOptions
) -> tuple[PlaneCodec, bytes, EncodedStream | None]:
    n = plane.size
    present = np.flatnonzero(hist)
    if present.size == 1:
        return PlaneCodec.CONST, bytes([int(present[0])]), None
    candidates: list[tuple[float, PlaneCodec, np.ndarray]] = []
    if "rans" in options.codecs:
        est, freqs = rans.estimate_bytes(hist, lanes)
        candidates.append((est, PlaneCodec.RANS, freqs))
    if "huffman" in options.codecs:
        est, lengths = huffman.estimate_bytes(hist, lanes)
        candidates.append((est, PlaneCodec.HUFFMAN, lengths))
    candidates.sort(key=lambda c: c[0])
    best: tuple[int, PlaneCodec, bytes, EncodedStream | None] = (n, PlaneCodec.RAW, plane.tobytes(), None)
    limit = n * (1.0 - options.min_gain)
    for est, codec, table in candidates:
        if est >= limit or (candidates and est > candidates[0][0] * 1.02):
            continue
        stream = rans.encode(plane, lanes, table) if codec is PlaneCodec.RANS else huffman.encode(plane, lanes, table)
        size = len(stream.header) + stream.word_bytes
        if size < best[0] and size < limit:
            best = (size, codec, stream.header, stream)
    return best[1], best[2], best[3]


def code_planes(data: np.ndarray, itemsize: int, options: PackOptions) -> Coded:
    """Byte-group ``data`` and code each plane with the best of raw / const / rANS / Huffman."""
    planes = split_planes(data, itemsize)
    hists = [counts(p) for p in planes]
    n = planes[0].size
    bits = sum(min(8.0, entropy_bits(h) / max(n, 1)) for h in hists)
    lanes = _lanes_for(n, bits, options)
    out = bytearray([itemsize])
    coded = Coded(Codec.PLANES, b"")
    labels = []
    for plane, hist in zip(planes, hists):
        codec, head, stream = _code_plane(plane, hist, lanes, options)
        out.append(codec)
        out += head
        labels.append(codec.name.lower())
        if codec is PlaneCodec.RANS:
            coded.rans.append(stream)
        elif codec is PlaneCodec.HUFFMAN:
            coded.huffman.append(stream)
    coded.payload = bytes(out)
    coded.label = "planes[" + ",".join(labels) + "]"
    return coded


def _sample(data: bytes, size: int, parts: int = 4) -> bytes:
    if len(data) <= size * parts:
        return data
    step = len(data) // parts
    return b"".join(data[i * step : i * step + size] for i in range(parts))


def choose(data: bytes, itemsize: int, options: PackOptions) -> Coded:
    """Code one payload with every allowed codec worth trying; return the smallest."""
    best = Coded(Codec.RAW, data, label="raw")
    if not data:
        return best
    arr = np.frombuffer(data, dtype=np.uint8)
    if itemsize < 1 or len(data) % itemsize:
        itemsize = 1
    if options.codecs & {"rans", "huffman"}:
        planes = code_planes(arr, itemsize, options)
        if planes.size < best.size:
            best = planes
    lz = [c for c in ("zlib", "lzma") if c in options.codecs]
    if lz and len(data) > options.lz_full_trial_bytes:
        # on a sample: can LZ beat the byte-plane entropy (an optimistic estimate of our coders)?
        sample = _sample(data, options.lz_sample_bytes)
        sarr = np.frombuffer(sample, dtype=np.uint8)
        k = itemsize if len(sample) % itemsize == 0 else 1
        bound = sum(entropy_bits(counts(p)) for p in split_planes(sarr, k)) / 8
        ratio = best.size / len(data)
        target = min(bound, ratio * len(sample)) * 0.99
        lz = [c for c in lz if len(_lz(c, sample, options)) < target]
    for name in lz:
        payload = _lz(name, data, options)
        if len(payload) < best.size:
            best = Coded(Codec.ZLIB if name == "zlib" else Codec.LZMA, payload, label=name)
    return best


def _lz(name: str, data: bytes, options: PackOptions) -> bytes:
    if name == "zlib":
        return zlib.compress(data, 9)
    return _lzma_encode(data, options.lzma_preset)


# --------------------------------------------------------------------------- decoding


@dataclass
class Parsed:
    """A record's payload after parsing: direct bytes, or planes waiting for the lockstep decoders."""

    data: bytes | None = None  # for RAW / ZLIB / LZMA
    fills: list[tuple[int, np.ndarray | int]] = field(default_factory=list)  # (plane, bytes or const)
    itemsize: int = 1
    extent: int = 0  # bytes the record needs in the output buffer (padding of lanes included)
    rans: list[LaneStream] = field(default_factory=list)
    huffman: list[LaneStream] = field(default_factory=list)
    ref: int = -1  # REF: the record whose payload this is; SLICE: the BUNDLE record
    offset: int = 0  # SLICE: where this record's bytes start in the bundle
    bundle_len: int = -1  # BUNDLE: decoded size of the whole bundle


def parse_payload(codec: int, payload: memoryview, raw_len: int, what: str, limits: Limits) -> Parsed:
    """Check and parse one payload; zlib/LZMA streams are inflated here, bounded by ``raw_len``."""
    try:
        kind = Codec(codec)
    except ValueError:
        raise CorruptPackError(f"{what}: unknown codec id {codec}") from None
    if kind is Codec.RAW:
        if len(payload) != raw_len:
            raise CorruptPackError(f"{what}: raw payload has {len(payload)} bytes, record says {raw_len}")
        return Parsed(data=bytes(payload), extent=raw_len)
    if kind is Codec.ZLIB:
        if raw_len > ZLIB_MAX_RATIO * len(payload) + 64:
            raise CorruptPackError(f"{what}: {len(payload)} zlib bytes cannot inflate to {raw_len}")
        try:
            inflater = zlib.decompressobj()
            data = inflater.decompress(payload, raw_len)
            if not inflater.eof:  # the output limit may stop it just before the end of the stream
                data += inflater.decompress(inflater.unconsumed_tail, 1)
            ok = inflater.eof and not inflater.unused_data
        except zlib.error as exc:
            raise CorruptPackError(f"{what}: corrupt zlib stream ({exc})") from None
        if len(data) != raw_len or not ok:
            raise CorruptPackError(f"{what}: zlib stream does not hold exactly {raw_len} bytes")
        return Parsed(data=data, extent=raw_len)
    if kind is Codec.LZMA:
        r = Reader(payload, what)
        dict_log2 = r.u8()
        if not 12 <= dict_log2 <= 30:
            raise CorruptPackError(f"{what}: LZMA dictionary size 2**{dict_log2} out of range")
        try:
            inflater = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_lzma_filters(dict_log2))
            data = inflater.decompress(r.take(r.remaining), raw_len)
            if not inflater.eof:
                data += inflater.decompress(b"", 1)
            ok = inflater.eof and not inflater.unused_data
        except lzma.LZMAError as exc:
            raise CorruptPackError(f"{what}: corrupt LZMA stream ({exc})") from None
        if len(data) != raw_len or not ok:
            raise CorruptPackError(f"{what}: LZMA stream does not hold exactly {raw_len} bytes")
        return Parsed(data=data, extent=raw_len)
    if kind is Codec.REF:
        r = Reader(payload, what)
        ref = r.uvarint()
        r.done()
        return Parsed(ref=ref, extent=0)
    if kind is Codec.SLICE:
        r = Reader(payload, what)
        number = r.uvarint()
        r.done()
        return Parsed(ref=number, extent=0)
    if kind is Codec.BUNDLE:
        r = Reader(payload, what)
        total = r.uvarint(limits.max_tensor_bytes, "bundle size")
        inner = r.u8()
        if inner in (Codec.REF, Codec.SLICE, Codec.BUNDLE) or total < raw_len:
            raise CorruptPackError(f"{what}: malformed bundle")
        parsed = parse_payload(inner, r.take(r.remaining), total, what, limits)
        parsed.bundle_len = total
        return parsed
    return _parse_planes(payload, raw_len, what, limits)


def _parse_planes(payload: memoryview, raw_len: int, what: str, limits: Limits) -> Parsed:
    r = Reader(payload, what)
    itemsize = r.u8()
    if itemsize < 1 or raw_len % itemsize or raw_len == 0:
        raise CorruptPackError(f"{what}: {raw_len} bytes cannot be split into {itemsize}-byte planes")
    n = raw_len // itemsize
    parsed = Parsed(itemsize=itemsize, extent=raw_len)
    for p in range(itemsize):
        try:
            codec = PlaneCodec(r.u8())
        except ValueError:
            raise CorruptPackError(f"{what}: unknown plane codec in plane {p}") from None
        if codec is PlaneCodec.RAW:
            parsed.fills.append((p, np.frombuffer(r.take(n), dtype=np.uint8)))
        elif codec is PlaneCodec.CONST:
            parsed.fills.append((p, r.u8()))
        else:
            module = rans if codec is PlaneCodec.RANS else huffman
            stream = module.parse(r, n, limits.max_lanes)
            stream.dest, stream.stride = p, itemsize
            parsed.extent = max(parsed.extent, p + (stream.lanes * stream.steps - 1) * itemsize + 1)
            (parsed.rans if codec is PlaneCodec.RANS else parsed.huffman).append(stream)
    r.done()
    return parsed
