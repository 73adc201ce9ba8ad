"""A packed file taken apart into its sections, and put back together with some of them changed.

For tests and fuzzing: a changed skeleton or index gets a valid trailer checksum, so that the damage
reaches the readers behind that check (the index records, the payload parsers, the one-call path).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from onnxopt.packing.format import PREFIX, PREFIX_SIZE, SKELETON_ZLIB, Header, read_header
from onnxopt.packing.pack import _inflate


@dataclass
class Sections:
    """The parts of a packed file, in file order (skeleton and index as stored, compressed)."""

    head: Header
    stream: bytes  # the stream section (chunked tensors)
    skeleton: bytes
    index: bytes
    rest: bytes  # payloads and coder words, up to the trailer

    @property
    def rest_start(self) -> int:
        """Where ``rest`` starts in the file."""
        return PREFIX_SIZE + len(self.stream) + len(self.skeleton) + len(self.index)

    def skeleton_raw(self) -> bytes:
        head = self.head
        return _inflate(head.section_codecs & 15, memoryview(self.skeleton), head.skeleton_raw, "model skeleton")

    def index_raw(self) -> bytes:
        return _inflate(self.head.section_codecs >> 4, memoryview(self.index), self.head.index_raw, "tensor index")


def split(data: bytes) -> Sections:
    head = read_header(data)
    pos = PREFIX_SIZE + head.stream_bytes
    skeleton = data[pos : pos + head.skeleton_packed]
    pos += head.skeleton_packed
    index = data[pos : pos + head.index_packed]
    rest = data[pos + head.index_packed : len(data) - head.trailer_bytes]
    return Sections(head, data[PREFIX_SIZE : PREFIX_SIZE + head.stream_bytes], skeleton, index, rest)


def rebuild(
    data: bytes, *, index: bytes | None = None, skeleton_raw: bytes | None = None, fields: dict | None = None
) -> bytes:
    """``data`` with a replaced raw index and/or skeleton (stored zlib-compressed) and/or trailer fields,
    and the trailer checksum made valid for them."""
    parts = split(data)
    head, skeleton, packed_index = parts.head, parts.skeleton, parts.index
    if skeleton_raw is None:
        skeleton_raw = parts.skeleton_raw()
    else:
        skeleton = zlib.compress(skeleton_raw)
        head.skeleton_raw, head.skeleton_packed = len(skeleton_raw), len(skeleton)
        head.section_codecs = (head.section_codecs & 0xF0) | SKELETON_ZLIB
    if index is None:
        index = parts.index_raw()
    else:
        packed_index = zlib.compress(index)
        head.index_raw, head.index_packed = len(index), len(packed_index)
        head.section_codecs = (head.section_codecs & 15) | SKELETON_ZLIB << 4
    for k, v in (fields or {}).items():
        setattr(head, k, v)
    return PREFIX + parts.stream + skeleton + packed_index + parts.rest + head.trailer(skeleton_raw, index)
