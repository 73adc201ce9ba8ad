"""The packed container: byte layout, bounds-checked reading, and the limits checked before allocating.

Layout (all integers little-endian)::

    magic      b"ONNXOPTPK"                      9 bytes
    version    u8                                FORMAT_VERSION
    stream     the bulk of CHUNKS records (large tensors), in record order: written while packing,
               before the index exists
    skeleton   the serialized ModelProto with the moved payloads cut out of it (each field's tag and
               length stay: the holes), compressed (zlib, LZMA or brotli)
    index      compressed list of tensor records with their coder tables (see pack.py)
    payloads   the per-tensor bulk bytes, concatenated in record order (see codecs.py)
    rANS words u16 words of every rANS stream, in the batch decoder's read order (see lanes.py)
    Huffman    u32 words of every Huffman stream, likewise
    trailer    uvarints TRAILER_FIELDS | u32 CRC32 of those field bytes, then of the raw skeleton,
               then of the raw index | u8 the trailer's length without this byte; the file ends here

The trailer is written last, so a file is written front to back with no seeking, and its varints
make the fixed cost of a packed file 25-33 bytes on the real models (format 4's fixed header was 92,
more than the margin by which a 6 KB model's pack beat brotli-11 over the whole file). The sizes of
the payload and word sections are not stored: the records give them, and together they must end
exactly at the trailer.

Every count and length read from a file is checked against the bytes that are actually there and
against :data:`LIMITS` before anything is allocated; any violation raises :class:`CorruptPackError`,
which ``unpack_model`` turns into a one-line :class:`~onnxopt.errors.BadModelError`.
"""

from __future__ import annotations

import itertools
import os
import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"ONNXOPTPK"
FORMAT_VERSION = 6  # 2: index records without data type and shape (the skeleton's); 3: stream section;
#                     4: the skeleton is the serialized model with its payloads cut out (wire.py);
#                     5: a varint trailer instead of a fixed header (92 bytes with the magic);
#                     6: raw deflate for the skeleton and index (SKELETON_DEFLATE)
#: versions this reader accepts: version 6 only adds a section codec, so version 5 files read as before
READABLE_VERSIONS = (5, 6)

PREFIX = MAGIC + bytes([FORMAT_VERSION])  # the magic and the version; everything else the trailer says
PREFIX_SIZE = len(PREFIX)

SKELETON_ZLIB = 1  # (read only: version 5 wrote it; raw deflate is the same stream without zlib's 6 bytes)
SKELETON_LZMA = 2
SKELETON_BROTLI = 3
#: deflate without zlib's header and Adler-32 (the trailer's CRC32 already covers both sections): 6
#: bytes less than zlib, a sixth of a small model's index (MTCNN P-net: 39 -> 33 bytes)
SKELETON_DEFLATE = 4
SECTION_CODECS = frozenset({SKELETON_ZLIB, SKELETON_LZMA, SKELETON_BROTLI, SKELETON_DEFLATE})


class CorruptPackError(ValueError):
    """A packed file is malformed, truncated, tampered with or exceeds a limit (message says which)."""


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 1 << 36


@dataclass(frozen=True)
class Limits:
    """Sanity limits for reading; anything above them is refused before allocating."""

    max_total_bytes: int = min(1 << 40, _physical_memory())  # all decoded tensors together
    max_tensor_bytes: int = 1 << 40
    max_skeleton_bytes: int = (1 << 31) - 1  # protobuf's own limit
    max_index_bytes: int = 1 << 30
    max_records: int = 1 << 24
    max_dims: int = 64
    max_lanes: int = 1 << 28
    #: lockstep steps (symbols per lane) of any stream: bounds the decode loop of a hostile file
    max_steps: int = 1 << 16


LIMITS = Limits()


# --------------------------------------------------------------------------- varints


def write_uvarint(out: bytearray, value: int) -> None:
    if value < 0:
        raise ValueError("uvarint must be >= 0")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def zigzag(value: int) -> int:
    return value * 2 if value >= 0 else -value * 2 - 1


def unzigzag(value: int) -> int:
    return value >> 1 if not value & 1 else -((value + 1) >> 1)


class Reader:
    """Bounds-checked sequential reader over a bytes-like object; every overrun is a CorruptPackError."""

    __slots__ = ("buf", "end", "pos", "what")

    def __init__(self, buf: bytes | memoryview, what: str, pos: int = 0, end: int | None = None) -> None:
        self.buf = memoryview(buf)
        self.pos = pos
        self.end = len(self.buf) if end is None else end
        self.what = what

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def need(self, n: int) -> None:
        if n < 0 or n > self.end - self.pos:
            raise CorruptPackError(
                f"{self.what}: truncated (needs {n} more bytes at offset {self.pos}, has {self.end - self.pos})"
            )

    def take(self, n: int) -> memoryview:
        self.need(n)
        view = self.buf[self.pos : self.pos + n]
        self.pos += n
        return view

    def u8(self) -> int:
        pos = self.pos
        if pos >= self.end:
            self.need(1)
        self.pos = pos + 1
        return self.buf[pos]

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def uvarint(self, limit: int = 1 << 63, name: str = "value") -> int:
        pos = self.pos
        if pos < self.end and self.buf[pos] < 0x80 and self.buf[pos] <= limit:  # one-byte fast path
            self.pos = pos + 1
            return self.buf[pos]
        result = 0
        shift = 0
        while True:
            byte = self.u8()
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 63:
                raise CorruptPackError(f"{self.what}: varint too long at offset {self.pos}")
        if result > limit:
            raise CorruptPackError(f"{self.what}: {name} {result} exceeds the limit {limit}")
        return result

    def svarint(self) -> int:
        return unzigzag(self.uvarint())

    def done(self) -> None:
        if self.pos != self.end:
            raise CorruptPackError(f"{self.what}: {self.end - self.pos} unexpected trailing bytes")


# --------------------------------------------------------------------------- trailer


#: the trailer's fields, in order, each a uvarint
TRAILER_FIELDS = (
    "flags", "records", "section_codecs", "skeleton_raw", "skeleton_packed", "index_raw", "index_packed",
    "stream_bytes",
)


@dataclass
class Header:
    """What the trailer says: the sections' sizes and codecs, and the one checksum of the metadata."""

    records: int
    section_codecs: int  # skeleton codec | index codec << 4
    skeleton_raw: int
    skeleton_packed: int
    index_raw: int
    index_packed: int
    stream_bytes: int = 0
    flags: int = 0
    crc: int = 0  # crc32 of the trailer's fields, then the raw skeleton, then the raw index
    trailer_bytes: int = 0  # (read back: the trailer's size, its length byte included)

    def field_bytes(self) -> bytes:
        out = bytearray()
        for name in TRAILER_FIELDS:
            write_uvarint(out, getattr(self, name))
        return bytes(out)

    def metadata_crc(self, skeleton: bytes, index: bytes) -> int:
        """The CRC the trailer carries for these fields and this skeleton and index (the fields as written:
        a writer's varints are minimal, so re-encoding the values read gives its bytes)."""
        return zlib.crc32(index, zlib.crc32(skeleton, zlib.crc32(self.field_bytes())))

    def trailer(self, skeleton: bytes, index: bytes) -> bytes:
        """The trailer for this skeleton and index: fields, CRC32, and its length in the last byte."""
        body = self.field_bytes() + self.metadata_crc(skeleton, index).to_bytes(4, "little")
        return body + bytes([len(body)])


def check_prefix(data: bytes | memoryview) -> None:
    """The magic and the format version at the start of ``data``."""
    if len(data) < len(MAGIC) or bytes(data[: len(MAGIC)]) != MAGIC:
        raise CorruptPackError("not a packed model (bad magic)")
    if len(data) < PREFIX_SIZE:
        raise CorruptPackError("truncated before the format version")
    version = data[len(MAGIC)]
    if version not in READABLE_VERSIONS:
        raise CorruptPackError(
            f"format version {version} is not supported (this onnxopt reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))})"
        )


def read_header(data: bytes | memoryview, limits: Limits = LIMITS) -> Header:
    """Parse and check the magic, the version and the trailer; the sections the trailer sizes must fit
    between them (the records say how the rest is split). The trailer's CRC is checked once the
    skeleton and index are inflated (:meth:`Header.metadata_crc`)."""
    check_prefix(data)
    if len(data) < PREFIX_SIZE + 1:
        raise CorruptPackError("truncated: no trailer")
    length = data[-1]
    if length < len(TRAILER_FIELDS) + 4 or PREFIX_SIZE + length + 1 > len(data):
        raise CorruptPackError(f"truncated or damaged trailer (declares {length} bytes, file has {len(data)})")
    start = len(data) - 1 - length
    r = Reader(data, "trailer", pos=start, end=len(data) - 5)
    values = {name: r.uvarint() for name in TRAILER_FIELDS}
    r.done()
    head = Header(**values, crc=int.from_bytes(data[-5:-1], "little"), trailer_bytes=length + 1)
    if head.flags != 0:
        raise CorruptPackError(f"unknown trailer flags {head.flags:#x}")
    if {head.section_codecs & 15, head.section_codecs >> 4} - SECTION_CODECS:
        raise CorruptPackError(f"unknown skeleton/index codec {head.section_codecs:#x}")
    if head.records > limits.max_records:
        raise CorruptPackError(f"trailer declares {head.records} tensor records (limit {limits.max_records})")
    if head.skeleton_raw > limits.max_skeleton_bytes:
        raise CorruptPackError(f"trailer declares a {head.skeleton_raw}-byte model skeleton (too large)")
    if head.index_raw > limits.max_index_bytes:
        raise CorruptPackError(f"trailer declares a {head.index_raw}-byte tensor index (too large)")
    room = len(data) - PREFIX_SIZE - head.trailer_bytes
    declared = head.stream_bytes + head.skeleton_packed + head.index_packed
    if declared > room:
        raise CorruptPackError(f"file truncated: trailer declares {declared} bytes of sections, file has {room}")
    return head


# --------------------------------------------------------------------------- symbol sets (coder tables)


def write_symbol_set(out: bytearray, present: list[int]) -> None:
    """Which of the 256 byte values occur: count-1, then a list (<= 32 symbols) or a 32-byte bitmap."""
    out.append(len(present) - 1)
    if len(present) <= 32:
        out += bytes(present)
    else:
        bitmap = bytearray(32)
        for s in present:
            bitmap[s >> 3] |= 1 << (s & 7)
        out += bitmap


def read_symbol_set(reader: Reader) -> list[int]:
    count = reader.u8() + 1
    if count <= 32:
        present = list(reader.take(count))
        if any(b <= a for a, b in itertools.pairwise(present)):
            raise CorruptPackError(f"{reader.what}: symbol list is not strictly increasing")
        return present
    bitmap = reader.take(32)
    present = [i * 8 + b for i in range(32) for b in range(8) if bitmap[i] >> b & 1]
    if len(present) != count:
        raise CorruptPackError(f"{reader.what}: symbol bitmap holds {len(present)} symbols, header says {count}")
    return present


# --------------------------------------------------------------------------- nibble varints (small tables)


def write_nibble_varints(out: bytearray, values: list[int]) -> None:
    """Unsigned ints as 4-bit groups (3 value bits + a continuation bit), two nibbles per byte."""
    nibbles: list[int] = []
    for v in values:
        while v >= 8:
            nibbles.append(8 | (v & 7))
            v >>= 3
        nibbles.append(v)
    if len(nibbles) % 2:
        nibbles.append(0)
    out += bytes(nibbles[i] | (nibbles[i + 1] << 4) for i in range(0, len(nibbles), 2))


def read_nibble_varints(reader: Reader, count: int, limit: int) -> list[int]:
    values: list[int] = []
    value = shift = 0
    while len(values) < count:
        byte = reader.u8()
        for nib in (byte & 15, byte >> 4):
            if len(values) == count:
                break
            value |= (nib & 7) << shift
            if nib & 8:
                shift += 3
                if shift > 60:
                    raise CorruptPackError(f"{reader.what}: table value too long")
                continue
            if value > limit:
                raise CorruptPackError(f"{reader.what}: table value {value} exceeds {limit}")
            values.append(value)
            value = shift = 0
    return values


def nibble_varint_bytes(values) -> int:
    """Bytes :func:`write_nibble_varints` needs for ``values`` (a sequence or array of ints >= 0)."""
    v = np.asarray(values, dtype=np.int64)
    bits = np.where(v > 0, np.floor(np.log2(np.maximum(v, 1))).astype(np.int64) + 1, 0)
    nibbles = int(np.maximum(1, -(-bits // 3)).sum())
    return (nibbles + 1) // 2
