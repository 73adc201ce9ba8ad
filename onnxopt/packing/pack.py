"""pack_model / unpack_model: a ModelProto to a packed file and back, bit-exactly.

The index (compressed like the skeleton, or stored) holds one record per walked TensorProto::

    u8 tag: payload.Kind in bits 0-2 (NONE = nothing moved: the tag is 0 and the record ends here),
        codecs.Codec in bits 3-6, bit 7 set when raw_len is given explicitly
    u8 store (integer storage type), for the int fields only
    uvarint raw_len (decoded payload bytes), only with bit 7: otherwise the skeleton's shape and
        data type give it (payload.implied_len)
    REF / SLICE: uvarint record / bundle number, and nothing else (no bulk; the bytes are checked
        by the CRC of the record or bundle they come from)
    others: uvarint meta_len | meta bytes (codec parameters, coder tables, lane states: see
        codecs.py) | uvarint bulk_len (not for RAW, whose bulk is raw_len bytes) | u32 crc32 of the
        decoded payload (BUNDLE: of the whole bundle, covering all its SLICE records)

Keeping every table and lane state in the index lets one compressor squeeze the many similar
tables of a model together. Records are matched to the skeleton's tensors by walk order; data type
and shape are the skeleton's (format 1 repeated them in every record), and a payload that decodes to
anything else than what its CRC32 says is refused.

Bulk sits in the payload section in record order, except that of CHUNKS records (large tensors),
which is in the stream section before the skeleton. After the payload section come the shared word
sections of the lockstep coders: all rANS words (u16) then all Huffman words (u32), each in the
order the batch decoder reads them.
"""

from __future__ import annotations

import hashlib
import logging
import lzma
import os
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import BinaryIO

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from onnxopt.model import copy_fields, tensor_nbytes
from onnxopt.packing import huffman, rans
from onnxopt.packing.bundles import THRESHOLDS, Bundle, plan_bundles
from onnxopt.packing.codecs import (
    Codec,
    Coded,
    PackOptions,
    Parsed,
    _brotli,
    assemble,
    choose,
    code_chunks,
    fill_planes,
    parse_payload,
    place_carries,
)
from onnxopt.packing.entropy import entropy_bits
from onnxopt.packing.format import (
    LIMITS,
    PREFIX_SIZE,
    SKELETON_BROTLI,
    SKELETON_LZMA,
    SKELETON_ZLIB,
    CorruptPackError,
    Header,
    Limits,
    Reader,
    read_header,
    write_uvarint,
)
from onnxopt.packing.lanes import interleave_words, out_extent
from onnxopt.packing.payload import (
    STORE_TYPES,
    Kind,
    Payload,
    dtype_name,
    field_is_empty,
    implied_len,
    raw_itemsize,
    restore_payload,
    take_payload,
    walk_tensors,
)

log = logging.getLogger(__name__)

@dataclass
class TensorReport:
    """What happened to one tensor: sizes, the order-0 bounds and the codec chosen."""

    name: str
    dtype: str
    shape: list[int]
    raw_bytes: int
    packed_bytes: int  # coded data + coder words + its index metadata before index compression
    entropy_bound_bytes: float  # order-0 entropy of the byte planes (the symbols our coders see)
    byte_entropy_bound_bytes: float  # order-0 entropy of the plain bytes
    codec: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PackResult:
    """A packed file (as the consecutive ``parts`` it is written from) and its report.

    When :func:`pack_model` wrote the file itself (``out=``), ``parts`` is empty.
    """

    parts: list[bytes]
    tensors: list[TensorReport] = field(default_factory=list)
    skeleton_bytes: int = 0  # compressed model structure
    index_bytes: int = 0  # compressed tensor records
    file_bytes: int = 0
    lockstep_words: int = 0  # rANS and Huffman words (0: unpacking runs no lockstep decoder)
    lockstep_bytes: int = 0  # their bytes

    @property
    def data(self) -> bytes:
        """The whole file in one buffer (a copy of every part: write ``parts`` instead when saving)."""
        if not self.parts and self.file_bytes:
            raise ValueError("this packed model was written to a file, not kept in memory")
        return b"".join(self.parts)

    @property
    def raw_bytes(self) -> int:
        return sum(t.raw_bytes for t in self.tensors)

    @property
    def packed_bytes(self) -> int:
        return sum(t.packed_bytes for t in self.tensors)

    @property
    def entropy_bound_bytes(self) -> float:
        return sum(t.entropy_bound_bytes for t in self.tensors)

    @property
    def byte_entropy_bound_bytes(self) -> float:
        return sum(t.byte_entropy_bound_bytes for t in self.tensors)

    @property
    def tensor_bytes_in_file(self) -> int:
        """What the file spends on tensors: everything but the fixed header and the model skeleton."""
        return self.file_bytes - PREFIX_SIZE - self.skeleton_bytes

    def to_dict(self) -> dict:
        return {
            "file_bytes": self.file_bytes,
            "skeleton_bytes": self.skeleton_bytes,
            "index_bytes": self.index_bytes,
            "raw_bytes": self.raw_bytes,
            "packed_bytes": self.packed_bytes,
            "tensor_bytes_in_file": self.tensor_bytes_in_file,
            "entropy_bound_bytes": round(self.entropy_bound_bytes, 1),
            "byte_entropy_bound_bytes": round(self.byte_entropy_bound_bytes, 1),
            "ratio": round(self.packed_bytes / self.raw_bytes, 5) if self.raw_bytes else None,
            "tensors": [t.to_dict() for t in self.tensors],
        }


# --------------------------------------------------------------------------- packing


def pack_model(
    model: onnx.ModelProto,
    *,
    codecs: Sequence[str] | None = None,
    options: PackOptions | None = None,
    out: BinaryIO | None = None,
) -> PackResult:
    """Pack ``model`` (weights loaded in memory) into the packed format; ``model`` is not modified.

    ``codecs`` limits the codecs tried (names from :data:`codecs.CODEC_NAMES`; raw is always the
    fallback). Raises :class:`onnxopt.errors.BadModelError` for tensors whose data is still external.
    With ``out`` (a seekable binary file at the position the packed file starts), the file is written
    there as it is produced: large tensors' chunks go out as soon as they are coded and nothing of
    them is held (the header is written last); otherwise the result holds the file as ``parts``.
    """
    from onnxopt.errors import UsageError

    if options is None:
        try:
            options = PackOptions.from_codecs(codecs)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return _pack(model, options, out)


def _pack(model: onnx.ModelProto, options: PackOptions, out: BinaryIO | None) -> PackResult:
    from onnxopt.errors import BadModelError

    skeleton, borrowed = _skeleton_of(model)
    tensors = list(walk_tensors(skeleton))
    stream_parts: list[bytes] = []
    stream_bytes = 0
    if out is not None:
        start = out.tell()
        out.write(bytes(PREFIX_SIZE))  # the header's place; written once the sections are known

    def emit(part: bytes) -> None:
        nonlocal stream_bytes
        stream_bytes += len(part)
        if out is not None:
            out.write(part)
        else:
            stream_parts.append(part)

    # one tensor at a time: take its bytes, find an identical earlier payload (stored once) or code it;
    # only payloads small enough to be bundled keep their bytes afterwards (others: length and CRC)
    taken: dict[int, Payload] = {}
    raw_len: dict[int, int] = {}
    raw_crc: dict[int, int] = {}
    refs: dict[int, int] = {}
    seen: dict[bytes, int] = {}
    individual: dict[int, Coded] = {}
    for i, t in enumerate(tensors):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise BadModelError(
                f"tensor {t.name!r} keeps its data in an external file; load the model with onnxopt.load() first",
                advice="")
        source = borrowed.get(i)
        if source is not None:  # a large raw initializer: read from the model, never copied into the skeleton
            p = Payload(Kind.RAW_DATA, source.raw_data, raw_itemsize(t.data_type))
        else:
            p = take_payload(t)
            if p is None:
                continue
        raw_len[i], raw_crc[i] = len(p.data), zlib.crc32(p.data)
        if len(p.data) > 16:
            key = hashlib.blake2b(p.data, digest_size=20, person=bytes([p.kind, p.store])).digest()
            if key in seen:
                refs[i] = seen[key]
            else:
                seen[key] = i
        if i not in refs and len(p.data) > options.chunk_min_bytes:
            individual[i] = code_chunks(p.data, p.itemsize, options, t.dims, emit)
        elif i not in refs:
            individual[i] = choose(p.data, p.itemsize, options, shape=t.dims)
        if len(p.data) > BUNDLE_MAX:
            p = Payload(p.kind, b"", p.itemsize, p.store)
        taken[i] = p
    # byte-plane histograms for the report's bounds (a duplicate has its original's)
    hists = {i: individual[refs.get(i, i)].hists or [] for i in taken}
    sizes = {  # (chunked tensors are in the stream section already: never bundled)
        i: (raw_len[i], taken[i].itemsize) for i in individual if raw_len[i] and individual[i].codec != Codec.CHUNKS
    }
    bundles = plan_bundles(sizes, individual, lambda i: taken[i].data, lambda b, k: choose(b, k, options))
    head_of: dict[int, Bundle] = {b.members[0]: b for b in bundles}
    bundle_number = {head: k for k, head in enumerate(sorted(head_of))}
    member_of: dict[int, tuple[Bundle, int]] = {}
    for b in bundles:
        for m, off in zip(b.members, b.offsets):
            member_of[m] = (b, off)

    index = bytearray()
    payloads: list[bytes] = []
    rans_streams = []
    huff_streams = []
    reports: list[TensorReport] = []
    for i, t in enumerate(tensors):
        p = taken.get(i)
        if p is None:
            index.append(Kind.NONE)
            continue
        bundle = None
        if i in refs:
            body = bytearray()
            write_uvarint(body, refs[i])
            coded = Coded(Codec.REF, bytes(body), label=f"ref[{tensors[refs[i]].name}]")
            size = coded.size
        elif i in member_of:
            bundle = member_of[i][0]
            body = bytearray()
            if i in head_of:
                body.append(bundle.coded.codec)
                body += bundle.coded.meta
                coded = Coded(Codec.BUNDLE, bytes(body), bundle.coded.bulk, bundle.coded.rans, bundle.coded.huffman)
            else:  # the offset follows from the bundle's earlier members
                write_uvarint(body, bundle_number[bundle.members[0]])
                coded = Coded(Codec.SLICE, bytes(body))
            coded.label = f"bundle[{len(bundle.members)}]:{bundle.coded.label}"
            size = round(bundle.coded.size * raw_len[i] / max(bundle.total, 1))
        else:
            coded = individual[i]
            size = coded.size
        rans_streams += coded.rans
        huff_streams += coded.huffman
        if coded.codec != Codec.CHUNKS:  # (their bulk is in the stream section already)
            payloads.append(coded.bulk)
        crc = bundle.crc if coded.codec == Codec.BUNDLE else raw_crc[i]
        _write_record(index, t, p.kind, p.store, coded, raw_len[i], crc)
        reports.append(
            TensorReport(
                name=t.name,
                dtype=dtype_name(t.data_type),
                shape=list(t.dims),
                raw_bytes=raw_len[i],
                packed_bytes=size,
                entropy_bound_bytes=sum(entropy_bits(h) for h in hists[i]) / 8,
                byte_entropy_bound_bytes=entropy_bits(sum(hists[i])) / 8 if hists[i] else 0.0,
                codec=coded.label,
            )
        )
    skeleton_raw = skeleton.SerializeToString()
    skel_codec, skel = _deflate_best(skeleton_raw, options.lzma_margin)
    index_codec, index_packed = _deflate_best(bytes(index), options.lzma_margin)
    rans_words = interleave_words(rans_streams, np.uint16).astype("<u2").tobytes()
    huff_words = interleave_words(huff_streams, np.uint32).astype("<u4").tobytes()
    header = Header(
        records=len(tensors),
        section_codecs=skel_codec | index_codec << 4,
        skeleton_raw=len(skeleton_raw),
        skeleton_packed=len(skel),
        skeleton_crc=zlib.crc32(skeleton_raw),
        index_raw=len(index),
        index_packed=len(index_packed),
        index_crc=zlib.crc32(index),
        payload_bytes=sum(len(p) for p in payloads),
        rans_words=len(rans_words) // 2,
        huffman_words=len(huff_words) // 4,
        stream_bytes=stream_bytes,
    )
    tail = [skel, index_packed, *payloads, rans_words, huff_words]  # written in turn, never joined
    file_bytes = PREFIX_SIZE + stream_bytes + sum(len(p) for p in tail)
    if out is not None:
        for part in tail:
            out.write(part)
        end = out.tell()
        out.seek(start)
        out.write(header.pack())
        out.seek(end)
        parts = []
    else:
        parts = [header.pack(), *stream_parts, *tail]
    result = PackResult(parts=parts, tensors=reports, skeleton_bytes=len(skel), index_bytes=len(index_packed),
                        file_bytes=file_bytes, lockstep_words=header.rans_words + header.huffman_words,
                        lockstep_bytes=header.words_bytes)
    log.info(
        "packed %d tensors: %d -> %d bytes (order-0 bound %.0f), file %d bytes",
        len(reports),
        result.raw_bytes,
        result.packed_bytes,
        result.entropy_bound_bytes,
        result.file_bytes,
    )
    return result


def pack_file(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    codecs: Sequence[str] | None = None,
    options: PackOptions | None = None,
) -> PackResult:
    """Pack ``model`` straight into the file ``path`` (atomically: the old file or the new, whole).

    Large tensors are written chunk by chunk as they are coded, so packing holds neither their
    coded bytes nor the whole file in memory.
    """
    from onnxopt.errors import OutputError
    from onnxopt.model import atomic_output

    with atomic_output(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                result = pack_model(model, codecs=codecs, options=options, out=f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise OutputError(f"{path}: write failed ({exc.strerror})") from None
    return result


#: only payloads up to this size are ever bundled (bundles.THRESHOLDS)
BUNDLE_MAX = max(THRESHOLDS)

#: main-graph raw initializers at least this large stay out of the skeleton copy (read from the model)
BORROW_BYTES = 4096


def _skeleton_of(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[int, onnx.TensorProto]]:
    """A copy of ``model`` to strip, in which large raw main-graph initializers come without their
    bytes (a full CopyFrom would hold every weight twice); returns it and, by position in
    :func:`walk_tensors` order (main-graph initializers come first), the model's tensors whose bytes
    the packer reads directly."""
    skeleton = onnx.ModelProto()
    copy_fields(model, skeleton, skip="graph")
    copy_fields(model.graph, skeleton.graph, skip="initializer")
    borrowed: dict[int, onnx.TensorProto] = {}
    for k, t in enumerate(model.graph.initializer):
        if (t.HasField("raw_data") and t.data_location != onnx.TensorProto.EXTERNAL
                and tensor_nbytes(t) >= BORROW_BYTES):
            copy_fields(t, skeleton.graph.initializer.add(), skip="raw_data")
            borrowed[k] = t
        else:
            skeleton.graph.initializer.append(t)
    return skeleton, borrowed


def _deflate_best(data: bytes, lzma_margin: float) -> tuple[int, bytes]:
    """The smallest of zlib-9, LZMA and brotli-11 for a metadata section; LZMA only when smaller than the
    others by ``lzma_margin`` (it decodes a 50 KB skeleton in 0.24 ms, brotli in 0.04 ms)."""
    fast = [(SKELETON_ZLIB, zlib.compress(data, 9))]
    if _brotli is not None:
        fast.append((SKELETON_BROTLI, _brotli.compress(data, quality=11)))
    best = min(fast, key=lambda o: len(o[1]))
    slow = lzma.compress(data, format=lzma.FORMAT_ALONE, preset=9)
    return (SKELETON_LZMA, slow) if len(slow) < len(best[1]) * (1.0 - lzma_margin) else best


#: record tag bits: kind in bits 0-2, codec in bits 3-6, and this flag when raw_len is written out
EXPLICIT_LEN = 0x80
INT_KINDS = (Kind.INT32_DATA, Kind.INT64_DATA, Kind.UINT64_DATA)
_KIND_OF_TAG = tuple(Kind(k) if k in Kind._value2member_map_ else None for k in range(8))  # (Kind(k) is slow)


def _write_record(
    index: bytearray, t: onnx.TensorProto, kind: Kind, store: int, coded: Coded, raw_len: int, crc: int | None
) -> None:
    implied = implied_len(t, kind, store) == raw_len
    index.append(kind | coded.codec << 3 | (0 if implied else EXPLICIT_LEN))
    if kind in INT_KINDS:
        index.append(store)
    if not implied:
        write_uvarint(index, raw_len)
    if coded.codec in (Codec.REF, Codec.SLICE):  # meta is the record or bundle number; no bulk, no CRC
        index += coded.meta
        return
    write_uvarint(index, len(coded.meta))
    index += coded.meta
    if coded.codec != Codec.RAW:
        write_uvarint(index, len(coded.bulk) + coded.stream)
    index += crc.to_bytes(4, "little")


# --------------------------------------------------------------------------- unpacking


@dataclass
class _Record:
    kind: Kind
    store: int = 0
    codec: int = 0
    raw_len: int = 0
    meta: memoryview | None = None
    packed_len: int = 0
    crc: int | None = None  # None: covered by another record's CRC (REF: its target; SLICE: its bundle)
    bundle_len: int = -1  # BUNDLE: the bundle's size (its own and its SLICE records' raw_len)
    ref: int = -1  # REF: the record it repeats; SLICE: its bundle's number


class _Link:
    """A REF or SLICE record after parsing: the record holding its bytes, and where they start there."""

    __slots__ = ("offset", "ref")
    # what the later stages read of a Parsed: a link has no payload of its own
    rans = huffman = fills = segments = ()
    extent = 0
    bundle_len = -1

    def __init__(self, ref: int, offset: int = 0) -> None:
        self.ref = ref
        self.offset = offset


def _inflate(codec: int, packed: memoryview, raw_len: int, what: str) -> bytes:
    try:
        if codec == SKELETON_ZLIB:
            inflater = zlib.decompressobj()
            out = inflater.decompress(packed, raw_len)
            if not inflater.eof:
                out += inflater.decompress(inflater.unconsumed_tail, 1)
            ok = inflater.eof and not inflater.unused_data
        elif codec == SKELETON_BROTLI:
            if _brotli is None:
                raise CorruptPackError(f"{what} is brotli-coded, but the brotli package is not installed")
            inflater = _brotli.Decompressor()
            out = inflater.process(bytes(packed), output_buffer_limit=raw_len + 1)
            ok = inflater.is_finished()
        else:
            lz = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE)
            out = lz.decompress(packed, raw_len)
            if not lz.eof:
                out += lz.decompress(b"", 1)
            ok = lz.eof and not lz.unused_data
    except (zlib.error, lzma.LZMAError) as exc:
        raise CorruptPackError(f"{what} is corrupt ({exc})") from None
    except Exception as exc:  # brotli.error (the module may be missing, so it cannot be named here)
        if _brotli is None or not isinstance(exc, _brotli.error):
            raise
        raise CorruptPackError(f"{what} is corrupt ({exc})") from None
    if not ok or len(out) != raw_len:
        raise CorruptPackError(f"{what} does not decompress to the declared {raw_len} bytes")
    return out


def _read_index(raw: bytes, tensors: list[onnx.TensorProto], limits: Limits) -> list[_Record]:
    r = Reader(raw, "tensor index")
    records = []
    for t in tensors:
        tag = r.u8()
        kind = _KIND_OF_TAG[tag & 7]
        if kind is None:
            raise CorruptPackError(f"tensor index: unknown payload kind in record {len(records)}")
        if kind is Kind.NONE:
            if tag:
                raise CorruptPackError(f"tensor index: malformed empty record {len(records)}")
            records.append(_Record(kind))
            continue
        codec = tag >> 3 & 15
        store = r.u8() if kind in INT_KINDS else 0
        if store >= len(STORE_TYPES):
            raise CorruptPackError(f"tensor index: unknown integer storage type {store}")
        if tag & EXPLICIT_LEN:
            raw_len = r.uvarint(limits.max_tensor_bytes, "declared tensor size")
        else:
            raw_len = implied_len(t, kind, store)
            if raw_len is None or raw_len > limits.max_tensor_bytes:
                raise CorruptPackError(f"tensor {t.name!r}: its shape gives no valid size ({list(t.dims)})")
        if codec == Codec.REF or codec == Codec.SLICE:
            rec = _Record(kind, store, codec, raw_len)
            rec.ref = r.uvarint(len(tensors), "record number")
            records.append(rec)
            continue
        meta = r.take(r.uvarint(r.remaining, "metadata size"))
        packed_len = raw_len if codec == Codec.RAW else r.uvarint()
        crc = r.u32()
        records.append(_Record(kind, store, codec, raw_len, meta, packed_len, crc))
    r.done()
    heads = [rec for rec in records if rec.codec == Codec.BUNDLE and rec.kind is not Kind.NONE]
    for rec in heads:
        rec.bundle_len = rec.raw_len
    seen = 0
    for rec in records:
        if rec.kind is Kind.NONE:
            continue
        if rec.codec == Codec.BUNDLE:
            seen += 1
        elif rec.codec == Codec.SLICE:
            number = rec.ref
            if number >= seen:
                raise CorruptPackError(f"tensor index: slice of bundle {number} before that bundle")
            heads[number].bundle_len += rec.raw_len
            if heads[number].bundle_len > limits.max_tensor_bytes:
                raise CorruptPackError("tensor index: a bundle exceeds the tensor size limit")
    return records


def unpack_model(data: bytes, source: str = "packed file", *, limits: Limits = LIMITS) -> onnx.ModelProto:
    """Restore the exact ModelProto from a packed file's bytes.

    Any malformed, truncated, tampered or oversized input raises :class:`onnxopt.errors.BadModelError`
    with a one-line message naming ``source``; no other exception escapes for bad input.
    """
    from onnxopt.errors import BadModelError

    advice = "the file is damaged or was not written by this onnxopt: pack the original model again"
    try:
        return _unpack(memoryview(data), limits)
    except CorruptPackError as exc:
        raise BadModelError(f"{source}: corrupt packed file: {exc}", advice=advice) from None
    except MemoryError:
        raise BadModelError(f"{source}: corrupt packed file: declared sizes do not fit in memory",
                            advice=advice) from None
    except (ValueError, TypeError, IndexError, OverflowError, KeyError, DecodeError) as exc:
        log.debug("unpack failed", exc_info=True)
        raise BadModelError(f"{source}: corrupt packed file ({type(exc).__name__}: {exc})", advice=advice) from None


def _unpack(data: memoryview, limits: Limits) -> onnx.ModelProto:
    head = read_header(data, limits)
    stream = Reader(data, "stream section", pos=PREFIX_SIZE, end=PREFIX_SIZE + head.stream_bytes)
    r = Reader(data, "packed file", pos=PREFIX_SIZE + head.stream_bytes)
    skeleton_raw = _inflate(head.section_codecs & 15, r.take(head.skeleton_packed), head.skeleton_raw, "model skeleton")
    if zlib.crc32(skeleton_raw) != head.skeleton_crc:
        raise CorruptPackError("model skeleton checksum mismatch")
    index_raw = _inflate(head.section_codecs >> 4, r.take(head.index_packed), head.index_raw, "tensor index")
    if zlib.crc32(index_raw) != head.index_crc:
        raise CorruptPackError("tensor index checksum mismatch")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(skeleton_raw)
    except DecodeError as exc:
        raise CorruptPackError(f"model skeleton is not a ModelProto ({exc})") from None
    tensors = list(walk_tensors(model))
    if len(tensors) != head.records:
        raise CorruptPackError(f"index has {head.records} records but the model has {len(tensors)} tensors")
    records = _read_index(index_raw, tensors, limits)
    if sum(rec.packed_len for rec in records if rec.codec != Codec.CHUNKS) != head.payload_bytes:
        raise CorruptPackError("tensor records do not add up to the payload section")
    if sum(rec.packed_len for rec in records if rec.codec == Codec.CHUNKS) != head.stream_bytes:
        raise CorruptPackError("tensor records do not add up to the stream section")
    total = sum(rec.raw_len for rec in records)
    if total > limits.max_total_bytes:
        raise CorruptPackError(f"declares {total} bytes of tensor data (limit {limits.max_total_bytes})")
    # parse every payload (LZ codecs inflate here), lay out the output buffer
    parsed: list[Parsed | _Link | None] = []
    offsets: list[int] = []
    extent = 0
    bundled = 0
    bundle_heads: list[int] = []
    cursors: list[int] = []
    members: dict[int, list[str]] = {}  # bundle record -> names of the tensors it holds
    for i, (rec, t) in enumerate(zip(records, tensors)):
        if rec.kind is Kind.NONE:
            parsed.append(None)
            offsets.append(-1)
            continue
        if not field_is_empty(t, rec.kind):
            raise CorruptPackError(f"tensor {t.name!r}: payload field is already set in the model skeleton")
        if rec.codec == Codec.SLICE:  # the next bytes of a bundle (no payload of its own)
            number = rec.ref
            if number >= len(bundle_heads) or cursors[number] + rec.raw_len > parsed[bundle_heads[number]].bundle_len:
                raise CorruptPackError(f"tensor {t.name!r}: bundle slice outside its bundle")
            p = _Link(bundle_heads[number], cursors[number])
            cursors[number] += rec.raw_len
            members[p.ref].append(t.name)
            parsed.append(p)
            offsets.append(extent)
            continue
        if rec.codec == Codec.REF:  # a repeat of an earlier record's payload
            if rec.ref >= i or parsed[rec.ref] is None or records[rec.ref].raw_len != rec.raw_len:
                raise CorruptPackError(f"tensor {t.name!r}: bad reference to record {rec.ref}")
            parsed.append(_Link(rec.ref))
            offsets.append(extent)
            continue
        bulk = (stream if rec.codec == Codec.CHUNKS else r).take(rec.packed_len)
        p = parse_payload(rec.codec, rec.meta, bulk, rec.raw_len, f"tensor {t.name!r}", limits, rec.bundle_len)
        if p.bundle_len >= 0:
            members[i] = [t.name]
            bundle_heads.append(i)
            cursors.append(rec.raw_len)
            bundled += p.bundle_len
            if bundled > limits.max_total_bytes:
                raise CorruptPackError(f"declares {bundled} bytes of bundled tensors (limit {limits.max_total_bytes})")
        parsed.append(p)
        offsets.append(extent)
        for s in p.rans + p.huffman:
            s.dest += extent
        extent += p.extent
    if any(cursors[k] != parsed[head].bundle_len for k, head in enumerate(bundle_heads)):
        raise CorruptPackError("a bundle holds bytes no tensor uses")
    if extent > limits.max_total_bytes + (1 << 24):
        raise CorruptPackError(f"needs a {extent}-byte buffer (limit {limits.max_total_bytes})")
    rans_streams = [s for p in parsed if p for s in p.rans]
    huff_streams = [s for p in parsed if p for s in p.huffman]
    if sum(s.nwords for s in rans_streams) != head.rans_words:
        raise CorruptPackError("rANS streams do not add up to the rANS word section")
    if sum(s.nwords for s in huff_streams) != head.huffman_words:
        raise CorruptPackError("Huffman streams do not add up to the Huffman word section")
    rans_words = np.frombuffer(r.take(2 * head.rans_words), dtype="<u2")
    huff_words = np.frombuffer(r.take(4 * head.huffman_words), dtype="<u4")
    r.done()
    stream.done()
    out = np.zeros(max(extent, out_extent(rans_streams + huff_streams)), dtype=np.uint8)
    for rec, p, off in zip(records, parsed, offsets):
        if p is None or not (p.fills or p.segments):
            continue
        fill_planes(p, out, off, p.bundle_len if p.bundle_len >= 0 else rec.raw_len)
    if not rans.decode_batch(rans_streams, rans_words, out):
        raise CorruptPackError("rANS data is inconsistent (corrupt word section or stream headers)")
    if not huffman.decode_batch(huff_streams, huff_words, out):
        raise CorruptPackError("Huffman data is inconsistent (corrupt word section or stream headers)")
    for rec, p, off in zip(records, parsed, offsets):
        if p is not None and p.rans:
            place_carries(p, out, off, p.bundle_len if p.bundle_len >= 0 else rec.raw_len)
    decoded: list[bytes | None] = []
    bundles: dict[int, bytes] = {}
    for i, (rec, p, off) in enumerate(zip(records, parsed, offsets)):
        if p is None:
            decoded.append(None)
            continue
        if rec.codec == Codec.REF:
            payload = decoded[p.ref]
        elif rec.codec == Codec.SLICE:
            payload = bundles[p.ref][p.offset : p.offset + rec.raw_len]
        else:
            size = p.bundle_len if p.bundle_len >= 0 else rec.raw_len
            full = assemble(p, out, off, size)
            if p.bundle_len >= 0:
                bundles[i] = full
                payload = full[: rec.raw_len]
            else:
                payload = full
        decoded.append(payload)
        t = tensors[i]
        if i in members:  # one CRC for the whole bundle
            if zlib.crc32(bundles[i]) != rec.crc:
                names = ", ".join(repr(n) for n in members[i][:8]) + (", ..." if len(members[i]) > 8 else "")
                raise CorruptPackError(
                    f"checksum mismatch after decoding the bundle of {len(members[i])} tensors {names}"
                )
        elif rec.crc is not None and zlib.crc32(payload) != rec.crc:
            raise CorruptPackError(f"tensor {t.name!r}: checksum mismatch after decoding")
        try:
            restore_payload(t, rec.kind, rec.store, payload)
        except (ValueError, TypeError) as exc:
            raise CorruptPackError(f"tensor {t.name!r}: cannot restore its data ({exc})") from None
    return model
