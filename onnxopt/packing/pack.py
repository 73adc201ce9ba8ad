"""pack_model / unpack_model: a ModelProto to a packed file and back, bit-exactly.

The skeleton is the model's own serialization with the moved payloads cut out: each moved field
keeps its tag and length, and only its content (the *hole*) is gone. Unpacking decodes the payloads,
splices them back into the holes and parses the result once, so no Python code runs per tensor
field. Payloads of up to ``PackOptions.inline_max_bytes`` (int8 scales and zero points) are not moved.

The index (compressed like the skeleton, or stored) holds one record per moved payload, in the
order of the serialized model::

    u8 tag: payload.Kind in bits 0-2, codecs.Codec in bits 3-6, bit 7 set when raw_len is given
    u8 store (integer storage type), for the int fields only
    uvarint place: even = a hole: place / 2 is how many bytes equal to the field's wire tag to pass
        over in the skeleton after the previous hole before reaching this field's tag (almost always
        0, so the index costs next to nothing); odd = a field record: place // 2 is the tensor's
        position in payload.walk_tensors order, and the payload is set on the parsed model (tensors
        of FIELD_MIN_BYTES and more, and all once the holes reach HOLE_BUDGET)
    uvarint raw_len (decoded payload bytes), only with bit 7: the int fields (whose holes hold
        varints) and field records; a hole of raw_data, float_data or double_data is its own length
    REF / SLICE: uvarint record / bundle number, and nothing else (no bulk; the bytes are checked
        by the CRC of the record or bundle they come from)
    others: uvarint meta_len | meta bytes (codec parameters, coder tables, lane states: see
        codecs.py) | uvarint bulk_len (not for RAW, whose bulk is raw_len bytes) | u32 crc32 of the
        decoded payload (BUNDLE: of the whole bundle, covering all its SLICE records)

Keeping every table and lane state in the index lets one compressor squeeze the many similar
tables of a model together. A payload that decodes to anything else than what its CRC32 says is
refused, and the spliced bytes must parse as a ModelProto.

Bulk sits in the payload section in record order, except that of CHUNKS records (large tensors),
which is in the stream section before the skeleton. After the payload section come the shared word
sections of the lockstep coders: all rANS words (u16) then all Huffman words (u32), each in the
order the batch decoder reads them.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import lzma
import os
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import BinaryIO

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from onnxopt.model import copy_fields, tensor_nbytes
from onnxopt.packing import huffman, native, rans
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
from onnxopt.packing.entropy import entropy_bits, plane_histograms
from onnxopt.packing.format import (
    LIMITS,
    PREFIX,
    PREFIX_SIZE,
    SKELETON_BROTLI,
    SKELETON_DEFLATE,
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
    BYTE_KINDS,
    FIELD_TAG,
    STORE_TYPES,
    Kind,
    Payload,
    dtype_name,
    field_is_empty,
    hole_payload,
    int_field_content,
    raw_itemsize,
    restore_payload,
    take_payload,
    walk_node_tensors,
    walk_tensors,
)
from onnxopt.packing.wire import read_varint, tensor_spans

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
    skeleton_bytes: int = 0  # compressed skeleton: the model structure and the inline (tiny) tensors
    container_bytes: int = 0  # magic, version and trailer
    structure_bytes: int = 0  # what the skeleton would be without the inline tensors (the structure alone)
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
        """What the file spends on tensors: everything but the container (magic, version, trailer) and
        the model structure (the skeleton's compressed size without the tiny tensors it holds inline)."""
        return self.file_bytes - self.container_bytes - self.structure_bytes

    def to_dict(self) -> dict:
        return {
            "file_bytes": self.file_bytes,
            "skeleton_bytes": self.skeleton_bytes,
            "container_bytes": self.container_bytes,
            "structure_bytes": self.structure_bytes,
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

    model_tensors = walk_tensors(model)
    for t in model_tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise BadModelError(
                f"tensor {t.name!r} keeps its data in an external file; load the model with onnxopt.load() first",
                advice="")
    as_fields = _field_tensors(model_tensors)
    if as_fields:  # a copy without the field tensors' payloads (fields protobuf does not know are lost)
        first_initializer = len(walk_node_tensors(model.graph.node, [])) if model.HasField("graph") else 0
        skeleton, borrowed = _skeleton_of(model, as_fields, first_initializer)
        tensors = walk_tensors(skeleton)
    else:  # the model itself is the skeleton (every byte of it, unknown fields included); never modified
        skeleton, borrowed, tensors = model, {}, model_tensors
    del model_tensors
    stream_parts: list[bytes] = []
    stream_bytes = 0
    if out is not None:
        out.write(PREFIX)  # (the trailer, written last, says the rest)

    def emit(part: bytes) -> None:
        nonlocal stream_bytes
        stream_bytes += len(part)
        if out is not None:
            out.write(part)
        else:
            stream_parts.append(part)

    # field tensors leave the skeleton before it is serialized (borrowed ones were never in it: their
    # bytes are read one at a time below); the others are cut out of its bytes
    taken: dict[int, Payload | None] = dict.fromkeys(borrowed)
    for i in sorted(as_fields - borrowed.keys()):
        p = take_payload(tensors[i])
        if p is not None:
            taken[i] = p
    serialized = skeleton.SerializeToString()
    wire = memoryview(serialized)
    spans = tensor_spans(wire)
    if len(spans) != len(tensors):
        raise RuntimeError(f"internal error: {len(spans)} tensors in the serialized model, {len(tensors)} walked")
    holes: dict[int, tuple[int, int, int]] = {}  # tensor -> (tag bytes to skip, content start, end) in wire
    inline: dict[int, tuple[Payload, int, int]] = {}  # tiny payloads, which stay in the skeleton
    hole_end = 0
    for i, t in enumerate(tensors):
        if i not in as_fields:
            found = hole_payload(t, wire, spans[i])
            if found is None:
                continue
            p, tag_at, begin, end = found
            if end - begin <= options.inline_max_bytes:
                inline[i] = (Payload(p.kind, bytes(p.data), p.itemsize, p.store), begin, end)
            else:  # the field's tag is the (skip + 1)-th byte of its value after the last hole
                skip = serialized.count(FIELD_TAG[p.kind], hole_end, tag_at)
                taken[i], holes[i] = p, (skip, begin, end)
                hole_end = end
    del spans
    order = sorted(taken)
    skeleton_raw = _cut(wire, [holes[i][1:] for i in order if i in holes])
    # what the structure alone costs compressed: the rest of the skeleton is the inline tensors' cost
    bare = _cut(wire, sorted([h[1:] for h in holes.values()] + [h[1:] for h in inline.values()]))

    # one tensor at a time: find an identical earlier payload (stored once) or code it; only payloads
    # small enough to be bundled keep their bytes afterwards (others: length and CRC)
    raw_len: dict[int, int] = {}
    raw_crc: dict[int, int] = {}
    refs: dict[int, int] = {}
    seen: dict[bytes, int] = {}
    individual: dict[int, Coded] = {}
    for i in order:
        t, p = tensors[i], taken[i]
        if p is None:  # a large raw initializer, read from the model: held only while it is coded
            p = Payload(Kind.RAW_DATA, borrowed[i].raw_data, raw_itemsize(t.data_type))
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
        # (a copy of the small ones: a view would keep the whole serialized model alive)
        taken[i] = Payload(p.kind, b"" if len(p.data) > BUNDLE_MAX else bytes(p.data), p.itemsize, p.store)
    del wire, serialized
    # byte-plane histograms for the report's bounds (a duplicate has its original's)
    hists = {i: individual[refs.get(i, i)].hists or [] for i in taken}
    sizes = {  # (chunked tensors are in the stream section already: never bundled)
        i: (raw_len[i], taken[i].itemsize) for i in individual if raw_len[i] and individual[i].codec != Codec.CHUNKS
    }
    in_bundle = replace(options, parametric_tables=True)
    bundles = plan_bundles(sizes, individual, lambda i: taken[i].data, lambda b, k: choose(b, k, in_bundle))
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
    record_of = {i: k for k, i in enumerate(order)}
    for i in order:
        t, p = tensors[i], taken[i]
        place = 2 * holes[i][0] if i in holes else 2 * i + 1
        bundle = None
        if i in refs:
            body = bytearray()
            write_uvarint(body, record_of[refs[i]])
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
        explicit = i not in holes or p.kind not in BYTE_KINDS
        _write_record(index, p.kind, p.store, coded, place, raw_len[i] if explicit else None, crc)
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
    skel_codec, skel = _deflate_best(skeleton_raw, options.lzma_margin)
    structure_bytes = len(_deflate_best(bare, options.lzma_margin)[1]) if inline else len(skel)
    inline_bytes = sum(len(p.data) for p, _, _ in inline.values())
    at = dict(zip(order, reports))  # the report lists every tensor in walk order
    for i, (p, _, _) in inline.items():
        t = tensors[i]
        planes = plane_histograms(np.frombuffer(p.data, dtype=np.uint8), p.itemsize)
        at[i] = TensorReport(
            name=t.name,
            dtype=dtype_name(t.data_type),
            shape=list(t.dims),
            raw_bytes=len(p.data),
            packed_bytes=round((len(skel) - structure_bytes) * len(p.data) / max(inline_bytes, 1)),
            entropy_bound_bytes=sum(entropy_bits(h) for h in planes) / 8,
            byte_entropy_bound_bytes=entropy_bits(sum(planes)) / 8,
            codec="inline",
        )
    reports = [at[i] for i in sorted(at)]
    index_codec, index_packed = _deflate_best(bytes(index), options.lzma_margin)
    rans_words = interleave_words(rans_streams, np.uint16).astype("<u2").tobytes()
    huff_words = interleave_words(huff_streams, np.uint32).astype("<u4").tobytes()
    header = Header(
        records=len(order),
        section_codecs=skel_codec | index_codec << 4,
        skeleton_raw=len(skeleton_raw),
        skeleton_packed=len(skel),
        index_raw=len(index),
        index_packed=len(index_packed),
        stream_bytes=stream_bytes,
    )
    trailer = header.trailer(skeleton_raw, bytes(index))
    tail = [skel, index_packed, *payloads, rans_words, huff_words, trailer]  # written in turn, never joined
    file_bytes = PREFIX_SIZE + stream_bytes + sum(len(p) for p in tail)
    if out is not None:
        for part in tail:
            out.write(part)
        parts = []
    else:
        parts = [PREFIX, *stream_parts, *tail]
    lockstep = len(rans_words) + len(huff_words)
    result = PackResult(parts=parts, tensors=reports, skeleton_bytes=len(skel), structure_bytes=structure_bytes,
                        index_bytes=len(index_packed), container_bytes=PREFIX_SIZE + len(trailer),
                        file_bytes=file_bytes, lockstep_words=len(rans_words) // 2 + len(huff_words) // 4,
                        lockstep_bytes=lockstep)
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

#: tensors with a payload at least this large are restored as fields of the parsed model ("field"
#: records, found by walk order) rather than spliced into the skeleton's bytes ("hole" records) ...
FIELD_MIN_BYTES = 16 << 20
#: ... and so are all tensors once the spliced payloads reach this much: the spliced model stays far
#: below protobuf's 2 GB limit, and packing copies no more than this into the skeleton
HOLE_BUDGET = 256 << 20


def _field_tensors(tensors: list[onnx.TensorProto]) -> set[int]:
    """Walk positions of the tensors restored as fields: the large ones, and every one past the budget."""
    fields_at: set[int] = set()
    spliced = 0
    for i, t in enumerate(tensors):
        size = tensor_nbytes(t)
        if size >= FIELD_MIN_BYTES or spliced + size > HOLE_BUDGET:
            fields_at.add(i)
        else:
            spliced += size
    return fields_at


def _skeleton_of(
    model: onnx.ModelProto, as_fields: set[int], first_initializer: int
) -> tuple[onnx.ModelProto, dict[int, onnx.TensorProto]]:
    """A copy of ``model`` to strip, in which the raw main-graph initializers restored as fields come
    without their bytes (a full CopyFrom would hold every large weight twice); returns it and, by walk
    position (``first_initializer``: that of the first main-graph initializer), the model's tensors
    whose bytes the packer reads directly."""
    skeleton = onnx.ModelProto()
    copy_fields(model, skeleton, skip="graph")
    if not model.HasField("graph"):
        return skeleton, {}
    skeleton.graph.SetInParent()
    copy_fields(model.graph, skeleton.graph, skip="initializer")
    borrowed: dict[int, onnx.TensorProto] = {}
    for k, t in enumerate(model.graph.initializer):
        if first_initializer + k in as_fields and t.HasField("raw_data"):
            copy_fields(t, skeleton.graph.initializer.add(), skip="raw_data")
            borrowed[first_initializer + k] = t
        else:
            skeleton.graph.initializer.append(t)
    return skeleton, borrowed


def _cut(wire: memoryview, spans: list[tuple[int, int]]) -> bytes:
    """``wire`` without the (sorted, disjoint) ``spans``."""
    kept = []
    cut_at = 0
    for start, end in spans:
        kept.append(wire[cut_at:start])
        cut_at = end
    kept.append(wire[cut_at:])
    return b"".join(kept)


def _splice(skeleton: bytes | memoryview, fills: list[tuple[int, bytes]]) -> bytes:
    """``skeleton`` with each (position, content) of ``fills`` inserted, in order: :func:`_cut` undone."""
    pieces = []
    kept_from = 0
    for at, content in fills:
        pieces += (skeleton[kept_from:at], content)
        kept_from = at
    pieces.append(skeleton[kept_from:])
    return b"".join(pieces)


#: brotli-11 settings tried for the skeleton and index, as (lgwin, mode, lgblock): each is the smallest
#: on some real model (silero's 146 KB skeleton: 6,892 bytes at the defaults, 6,591 at a 2**18 window
#: and 2**16 blocks; PP-OCR det's 4.4 KB index: 3,953 at the defaults, 3,916 in font mode)
SECTION_BROTLI = ((22, 0, 0), (18, 0, 16), (16, 2, 0))


def _raw_deflate(data: bytes) -> bytes:
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    return deflater.compress(data) + deflater.flush()


def _deflate_best(data: bytes, lzma_margin: float) -> tuple[int, bytes]:
    """The smallest of raw deflate-9, LZMA and brotli-11 (at each of SECTION_BROTLI) for a metadata
    section; LZMA only when smaller than the others by ``lzma_margin`` (it decodes a 50 KB skeleton in
    0.24 ms, brotli in 0.04 ms)."""
    fast = [(SKELETON_DEFLATE, _raw_deflate(data))]
    if _brotli is not None:
        fast += [(SKELETON_BROTLI, _brotli.compress(data, quality=11, lgwin=lgwin, mode=mode, lgblock=lgblock))
                 for lgwin, mode, lgblock in SECTION_BROTLI]
    best = min(fast, key=lambda o: len(o[1]))
    slow = lzma.compress(data, format=lzma.FORMAT_ALONE, preset=9)
    return (SKELETON_LZMA, slow) if len(slow) < len(best[1]) * (1.0 - lzma_margin) else best


#: record tag bits: kind in bits 0-2, codec in bits 3-6, and this flag when raw_len is written out
EXPLICIT_LEN = 0x80
INT_KINDS = (Kind.INT32_DATA, Kind.INT64_DATA, Kind.UINT64_DATA)
_REF, _SLICE, _CHUNKS = int(Codec.REF), int(Codec.SLICE), int(Codec.CHUNKS)  # (plain ints: compared per record)
_KIND_OF_TAG = tuple(Kind(k) if k in Kind._value2member_map_ else None for k in range(8))  # (Kind(k) is slow)
#: the tags of bundle slices of byte kinds (no explicit length): nearly every record of a model with many
#: small tensors; by tag, the kind and the wire tag of the field it fills
_SLICE_TAGS = {kind | _SLICE << 3: (kind, FIELD_TAG[kind]) for kind in BYTE_KINDS}


def _write_record(
    index: bytearray, kind: Kind, store: int, coded: Coded, place: int, raw_len: int | None, crc: int | None
) -> None:
    index.append(kind | coded.codec << 3 | (0 if raw_len is None else EXPLICIT_LEN))
    if kind in INT_KINDS:
        index.append(store)
    write_uvarint(index, place)
    if raw_len is not None:
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


class _Record:
    """One index record after reading (class-level defaults: a record sets only what it has)."""

    meta: memoryview | None = None
    packed_len = 0
    crc: int | None = None  # None: covered by another record's CRC (REF: its target; SLICE: its bundle)
    bundle_len = -1  # BUNDLE: the bundle's size (its own and its SLICE records' raw_len)
    ref = -1  # REF: the record it repeats; SLICE: its bundle's number
    hole = -1  # hole records: where the payload goes in the skeleton's bytes
    hole_len = 0  # and the length of the field content it becomes there
    tensor = -1  # field records: the tensor's walk position

    store = 0
    raw_len = 0

    def __init__(self, kind: Kind, store: int, codec: int) -> None:
        self.kind = kind
        self.store = store
        self.codec = codec


def _inflate(codec: int, packed: memoryview, raw_len: int, what: str) -> bytes:
    try:
        if codec in (SKELETON_DEFLATE, SKELETON_ZLIB):
            inflater = zlib.decompressobj(-15 if codec == SKELETON_DEFLATE else 15)
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


def _read_index(raw: bytes, count: int, skeleton: bytes, limits: Limits) -> list[_Record]:
    """The ``count`` records of the index; each hole record is matched to the payload field it fills,
    whose tag and content length the skeleton holds at the place the record gives.

    (Varints are read inline, one-byte ones without a call: this loop runs once per tensor.)
    """
    try:
        return _index_records(raw, count, skeleton, limits)
    except IndexError:
        raise CorruptPackError("tensor index: truncated") from None


def _add_slice(heads: list[_Record], number: int, size: int, max_tensor: int) -> None:
    """Count a slice of ``size`` bytes into the bundle it belongs to (BUNDLE records come first)."""
    if number >= len(heads):
        raise CorruptPackError(f"tensor index: slice of bundle {number} before that bundle")
    head = heads[number]
    head.bundle_len += size
    if head.bundle_len > max_tensor:
        raise CorruptPackError("tensor index: a bundle exceeds the tensor size limit")


def _field_content(skeleton: bytes, at: int, k: int, max_tensor: int) -> tuple[int, int]:
    """The length of the field whose tag is at ``at`` (record ``k``'s) and where its content starts."""
    end = len(skeleton)
    size = skeleton[at + 1] if at + 1 < end else 0x80
    if size < 0x80:
        start = at + 2
    elif at + 2 < end and skeleton[at + 2] < 0x80:  # (two varint bytes: up to 16 KB)
        size, start = (size & 0x7F) | skeleton[at + 2] << 7, at + 3
    else:
        size, start = read_varint(skeleton, at + 1, end)
    if size > max_tensor:
        raise CorruptPackError(f"tensor index: record {k} declares a {size}-byte tensor")
    return size, start


def _index_records(raw: bytes, count: int, skeleton: bytes, limits: Limits) -> list[_Record]:
    records = []
    heads: list[_Record] = []  # the BUNDLE records, by bundle number
    pos = cursor = 0
    max_tensor = limits.max_tensor_bytes
    one_byte = min(0x80, max_tensor + 1)  # field lengths below this are one varint byte within the limit
    unskipped: dict[int, int] = {}  # per tag byte: its occurrences in the skeleton not yet skipped
    new = object.__new__
    for k in range(count):
        tag = raw[pos]
        if tag in _SLICE_TAGS and raw[pos + 1] == 0 and raw[pos + 2] < 0x80:
            # the common record, the general path below cut short: a slice of bundle raw[pos + 2] in the
            # next field with this tag (skip 0); its length is the field's
            kind, tag_byte = _SLICE_TAGS[tag]
            at = skeleton.find(tag_byte, cursor)
            if at < 0:
                raise CorruptPackError(f"tensor index: record {k} does not point at a tensor data field")
            if at + 2 < len(skeleton) and skeleton[at + 1] < one_byte:  # (_field_content's short length, inline)
                hole_len, cursor = skeleton[at + 1], at + 2
            else:
                hole_len, cursor = _field_content(skeleton, at, k, max_tensor)
            number = raw[pos + 2]
            if number < len(heads) and heads[number].bundle_len + hole_len <= max_tensor:  # (_add_slice, inline)
                heads[number].bundle_len += hole_len
            else:
                _add_slice(heads, number, hole_len, max_tensor)
            rec = new(_Record)
            rec.kind, rec.codec, rec.ref = kind, _SLICE, number
            rec.hole, rec.hole_len, rec.raw_len = cursor, hole_len, hole_len
            records.append(rec)
            pos += 3
            continue
        kind = _KIND_OF_TAG[tag & 7]
        if kind is None or kind is Kind.NONE:
            raise CorruptPackError(f"tensor index: unknown payload kind in record {k}")
        codec = tag >> 3 & 15
        if kind in INT_KINDS:
            store = raw[pos + 1]
            pos += 2
            if store >= len(STORE_TYPES):
                raise CorruptPackError(f"tensor index: unknown integer storage type {store}")
        else:
            store = 0
            pos += 1
        place = raw[pos]
        pos += 1
        if place >= 0x80:
            place, pos = read_varint(raw, pos - 1, len(raw), "the tensor index")
        raw_len = -1
        if tag & EXPLICIT_LEN:
            raw_len = raw[pos]
            pos += 1
            if raw_len >= 0x80:
                raw_len, pos = read_varint(raw, pos - 1, len(raw), "the tensor index")
            if raw_len > max_tensor:
                raise CorruptPackError(f"tensor index: record {k} declares a {raw_len}-byte tensor")
        rec = _Record(kind, store, codec)
        if place & 1:
            rec.tensor = place >> 1
            if raw_len < 0:
                raise CorruptPackError(f"tensor index: record {k} gives no size")
        else:
            tag_byte = FIELD_TAG[kind]
            skip = place >> 1
            if tag_byte not in unskipped:
                unskipped[tag_byte] = skeleton.count(tag_byte)
            unskipped[tag_byte] -= skip  # (records skip disjoint stretches: this bounds the work)
            at = skeleton.find(tag_byte, cursor) if unskipped[tag_byte] >= 0 else -1
            for _ in range(skip):
                if at < 0:
                    break
                at = skeleton.find(tag_byte, at + 1)
            if at < 0:
                raise CorruptPackError(f"tensor index: record {k} does not point at a tensor data field")
            hole_len, cursor = _field_content(skeleton, at, k, max_tensor)
            rec.hole, rec.hole_len = cursor, hole_len
            if kind in BYTE_KINDS:
                if raw_len >= 0 and raw_len != hole_len:
                    raise CorruptPackError(f"tensor index: record {k} has two different sizes")
                raw_len = hole_len
            elif raw_len < 0:
                raise CorruptPackError(f"tensor index: record {k} gives no size")
        rec.raw_len = raw_len
        if codec in (_REF, _SLICE):
            ref = raw[pos]
            pos += 1
            if ref >= 0x80:
                ref, pos = read_varint(raw, pos - 1, len(raw), "the tensor index")
            if ref >= count:
                raise CorruptPackError(f"tensor index: record {k} refers to record {ref} of {count}")
            rec.ref = ref
            if codec == _SLICE:
                _add_slice(heads, ref, raw_len, max_tensor)
        else:
            r = Reader(raw, "tensor index", pos=pos)
            rec.meta = r.take(r.uvarint(r.remaining, "metadata size"))
            rec.packed_len = raw_len if codec == Codec.RAW else r.uvarint()
            rec.crc = r.u32()
            pos = r.pos
            if codec == Codec.BUNDLE:
                rec.bundle_len = raw_len
                heads.append(rec)
        records.append(rec)
    if pos != len(raw):
        raise CorruptPackError(f"tensor index: {len(raw) - pos} unexpected trailing bytes")
    return records


#: what reading a malformed file may raise (unpack_model turns each into a BadModelError)
_READ_ERRORS = (CorruptPackError, MemoryError, ValueError, TypeError, IndexError, OverflowError, KeyError, DecodeError)


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
    except _READ_ERRORS as exc:  # (the rest of them)
        log.debug("unpack failed", exc_info=True)
        raise BadModelError(f"{source}: corrupt packed file ({type(exc).__name__}: {exc})", advice=advice) from None


@dataclass
class _Opened:
    """A packed file with its trailer read and its skeleton and index inflated and checked."""

    head: Header
    stream: Reader  # the stream section
    rest: Reader  # the payloads and coder words, up to the trailer
    skeleton: bytes
    index: bytes


def _open(data: memoryview, limits: Limits) -> _Opened:
    head = read_header(data, limits)
    stream = Reader(data, "stream section", pos=PREFIX_SIZE, end=PREFIX_SIZE + head.stream_bytes)
    r = Reader(data, "packed file", pos=PREFIX_SIZE + head.stream_bytes, end=len(data) - head.trailer_bytes)
    skeleton = _inflate(head.section_codecs & 15, r.take(head.skeleton_packed), head.skeleton_raw, "model skeleton")
    index_raw = _inflate(head.section_codecs >> 4, r.take(head.index_packed), head.index_raw, "tensor index")
    if head.metadata_crc(skeleton, index_raw) != head.crc:
        raise CorruptPackError("checksum mismatch in the trailer, the model skeleton or the tensor index")
    return _Opened(head, stream, r, skeleton, index_raw)


def _one_call(opened: _Opened, data: memoryview, limits: Limits) -> bytes | int | None:
    """The one-call path's spliced model bytes (_unpack.c, via native.unpack_spliced), or the int it
    declines the file with; None for files with a stream section, which it leaves to the Python reader."""
    if opened.head.stream_bytes:
        return None
    return native.unpack_spliced(opened.skeleton, opened.index, data, opened.rest.pos, opened.rest.end,
                                 opened.head.records, limits)


def _unpack(data: memoryview, limits: Limits) -> onnx.ModelProto:
    opened = _open(data, limits)
    fast = _one_call(opened, data, limits)
    if type(fast) is bytes:
        return _parse_model(fast)
    spliced, records, decoded, names = _python_splice(opened, limits)
    model = _parse_model(spliced)
    del spliced  # (up to 256 MB of holes: not held while the field records are restored)
    _restore_fields(model, records, decoded, names)
    return model


def reader_verdicts(data: bytes, limits: Limits = LIMITS) -> tuple[bytes | int | None, bytes | str]:
    """For tests and fuzzing, one packed file read both ways: (the one-call path's spliced bytes, its
    decline code, or None where it is not reached; the Python reader's spliced bytes, or its error).
    Wherever the first is bytes, the second must be the same bytes; both are then parsed alike."""
    view = memoryview(data)
    try:
        opened = _open(view, limits)
    except _READ_ERRORS as exc:
        return None, f"{type(exc).__name__}: {exc}"
    fast = _one_call(opened, view, limits)
    try:
        return fast, _python_splice(opened, limits)[0]
    except _READ_ERRORS as exc:
        return fast, f"{type(exc).__name__}: {exc}"


def _python_splice(opened: _Opened, limits: Limits) -> tuple[bytes, list[_Record], list[bytes], _Names]:
    """The reference reader: the skeleton with every hole filled, and the records and their decoded
    payloads (field records are restored once the spliced bytes are parsed: :func:`_restore_fields`)."""
    head, stream, r, skeleton = opened.head, opened.stream, opened.rest, opened.skeleton
    records = _read_index(opened.index, head.records, skeleton, limits)
    if sum(rec.packed_len for rec in records if rec.codec == _CHUNKS) != head.stream_bytes:
        raise CorruptPackError("tensor records do not add up to the stream section")
    total = sum(rec.raw_len for rec in records)
    if total > limits.max_total_bytes:
        raise CorruptPackError(f"declares {total} bytes of tensor data (limit {limits.max_total_bytes})")
    spliced = len(skeleton) + sum(rec.hole_len for rec in records)
    if spliced > limits.max_skeleton_bytes:
        raise CorruptPackError(f"declares a {spliced}-byte model (protobuf's limit is {limits.max_skeleton_bytes})")
    names = _Names(skeleton, records)
    # parse every payload (LZ codecs inflate here), lay out the output buffer; bundle slices and
    # references have no payload of their own (a bundle's size is the sum of its slices: _read_index)
    parsed: dict[int, Parsed] = {}
    offsets: dict[int, int] = {}
    extent = 0
    bundled = 0
    bundle_heads: list[int] = []
    for i, rec in enumerate(records):
        if rec.codec in (_REF, _SLICE):
            if rec.codec == _REF and (rec.ref >= i or records[rec.ref].raw_len != rec.raw_len
                                      or records[rec.ref].kind != rec.kind):
                raise CorruptPackError(f"{names[i]}: bad reference to record {rec.ref}")
            continue
        bulk = (stream if rec.codec == _CHUNKS else r).take(rec.packed_len)
        try:
            p = parse_payload(rec.codec, rec.meta, bulk, rec.raw_len, f"tensor record {i}", limits, rec.bundle_len)
        except CorruptPackError as exc:  # (named only now: naming parses the model)
            raise CorruptPackError(str(exc).replace(f"tensor record {i}", str(names[i]), 1)) from None
        if p.bundle_len >= 0:
            bundle_heads.append(i)
            bundled += p.bundle_len
            if bundled > limits.max_total_bytes:
                raise CorruptPackError(f"declares {bundled} bytes of bundled tensors (limit {limits.max_total_bytes})")
        parsed[i] = p
        offsets[i] = extent
        for s in p.rans + p.huffman:
            s.dest += extent
        extent += p.extent
    if extent > limits.max_total_bytes + (1 << 24):
        raise CorruptPackError(f"needs a {extent}-byte buffer (limit {limits.max_total_bytes})")
    rans_streams = [s for p in parsed.values() for s in p.rans]
    huff_streams = [s for p in parsed.values() for s in p.huffman]
    rans_words = np.frombuffer(r.take(2 * sum(s.nwords for s in rans_streams)), dtype="<u2")
    huff_words = np.frombuffer(r.take(4 * sum(s.nwords for s in huff_streams)), dtype="<u4")
    r.done()
    stream.done()
    out = np.zeros(max(extent, out_extent(rans_streams + huff_streams)), dtype=np.uint8)
    for i, p in parsed.items():
        if p.fills or p.segments:
            fill_planes(p, out, offsets[i], p.bundle_len if p.bundle_len >= 0 else records[i].raw_len)
    if not rans.decode_batch(rans_streams, rans_words, out):
        raise CorruptPackError("rANS data is inconsistent (corrupt word section or stream headers)")
    if not huffman.decode_batch(huff_streams, huff_words, out):
        raise CorruptPackError("Huffman data is inconsistent (corrupt word section or stream headers)")
    for i, p in parsed.items():
        if p.rans:
            place_carries(p, out, offsets[i], p.bundle_len if p.bundle_len >= 0 else records[i].raw_len)
    # decode, check and splice: the skeleton's bytes with every hole filled parse into the model
    decoded: list[bytes] = []
    bundles: list[bytes] = []  # by bundle number
    cursors: list[int] = []  # where each bundle's next slice starts
    fills: list[tuple[int, bytes]] = []  # (hole, its content)
    view = memoryview(skeleton)
    for i, rec in enumerate(records):
        codec = rec.codec
        if codec == _SLICE:
            number = rec.ref
            at = cursors[number]
            cursors[number] = at + rec.raw_len
            payload = bundles[number][at : at + rec.raw_len]
        elif codec == _REF:
            payload = decoded[rec.ref]
        else:
            p = parsed[i]
            payload = assemble(p, out, offsets[i], p.bundle_len if p.bundle_len >= 0 else rec.raw_len)
            if p.bundle_len >= 0:  # one CRC for the whole bundle
                if zlib.crc32(payload) != rec.crc:
                    raise CorruptPackError(_bundle_damage(records, i, len(bundles), names))
                bundles.append(payload)
                cursors.append(rec.raw_len)
                payload = payload[: rec.raw_len]
            elif zlib.crc32(payload) != rec.crc:
                raise CorruptPackError(f"{names[i]}: checksum mismatch after decoding")
        decoded.append(payload)
        if rec.hole >= 0:
            if rec.kind not in BYTE_KINDS:
                payload = int_field_content(rec.kind, rec.store, payload)
                if len(payload) != rec.hole_len:
                    raise CorruptPackError(f"{names[i]}: its values do not fill the skeleton's field")
            fills.append((rec.hole, payload))
    return _splice(view, fills), records, decoded, names


def _restore_fields(model: onnx.ModelProto, records: list[_Record], decoded: list[bytes], names: _Names) -> None:
    """Set the payloads of field records (large tensors) on the parsed model's tensors."""
    if not any(rec.tensor >= 0 for rec in records):
        return
    tensors = walk_tensors(model)
    for i, rec in enumerate(records):
        if rec.tensor < 0:
            continue
        if rec.tensor >= len(tensors) or not field_is_empty(tensors[rec.tensor], rec.kind):
            raise CorruptPackError(f"{names[i]}: no tensor with an empty data field at walk position {rec.tensor}")
        t = tensors[rec.tensor]
        try:
            restore_payload(t, rec.kind, rec.store, decoded[i])
        except (ValueError, TypeError) as exc:
            raise CorruptPackError(f"tensor {t.name!r}: cannot restore its data ({exc})") from None


def _parse_model(spliced: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(spliced)
    except DecodeError as exc:
        raise CorruptPackError(f"model skeleton is not a ModelProto once its tensors are in ({exc})") from None
    return model


def _bundle_damage(records: list[_Record], head: int, number: int, names: _Names) -> str:
    held = [head] + [k for k, rec in enumerate(records) if rec.codec == _SLICE and rec.ref == number]
    listed = ", ".join(repr(names.name(k)) for k in held[:8]) + (", ..." if len(held) > 8 else "")
    return f"checksum mismatch after decoding the bundle of {len(held)} tensors {listed}"


class _RecordName:
    """What error messages call record k; naming it (parsing the model) waits until a message is made."""

    __slots__ = ("k", "names")

    def __init__(self, names: _Names, k: int) -> None:
        self.names = names
        self.k = k

    def __str__(self) -> str:
        found = self.names.name(self.k)
        return f"tensor record {self.k}" if found == f"record {self.k}" else f"tensor {found!r}"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


class _Names:
    """Names for error messages, worked out only when one is needed: ``names[k]`` is "tensor 'x'" for
    record k (or "tensor record k" when the damaged file does not say)."""

    def __init__(self, skeleton: bytes, records: list[_Record]) -> None:
        self.skeleton = skeleton
        self.records = records
        self.known: list[str | None] | None = None

    def name(self, k: int) -> str:
        if self.known is None:
            self.known = self._resolve()
        found = self.known[k] if k < len(self.known) else None
        return found if found is not None else f"record {k}"

    def __getitem__(self, k: int) -> _RecordName:
        return _RecordName(self, k)

    def _resolve(self) -> list[str | None]:
        """Splice zeros into the holes, parse, and name each hole by the tensor holding it."""
        known: list[str | None] = [None] * len(self.records)
        try:
            holes = []  # (where the hole's content starts in the spliced bytes, record)
            filled = 0
            for k, rec in enumerate(self.records):
                if rec.hole >= 0:
                    holes.append((rec.hole + filled, k))
                    filled += rec.hole_len
            wire = _splice(self.skeleton, [(rec.hole, bytes(rec.hole_len)) for rec in self.records if rec.hole >= 0])
            model = onnx.ModelProto.FromString(wire)
            tensors = walk_tensors(model)
            spans = tensor_spans(wire)
            if len(spans) != len(tensors):
                return known
            starts = [start for start, _ in spans]
            for at, k in holes:
                j = bisect.bisect_right(starts, at) - 1
                if j >= 0 and at < spans[j][1]:
                    known[k] = tensors[j].name
            for k, rec in enumerate(self.records):
                if 0 <= rec.tensor < len(tensors):
                    known[k] = tensors[rec.tensor].name
        except Exception:  # (a damaged file: the record numbers will do)
            log.debug("cannot name the tensor records", exc_info=True)
        return known
