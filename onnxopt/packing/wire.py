"""Just enough of protobuf's wire format to find every TensorProto in a serialized ModelProto.

Packing cuts the tensor payloads out of the model's own serialization and keeps the rest (the
*skeleton*) with the payload fields' tags and lengths in place; unpacking splices the decoded bytes
back into those holes and parses the result once. This module finds the holes at pack time. Only
messages that can contain tensors are descended into (:data:`SCHEMA`); everything else is skipped
by its wire type. The order is the serialization's, which is field-number order within each message,
the order :func:`onnxopt.packing.payload.walk_tensors` visits the parsed objects in.
"""

from __future__ import annotations

from collections.abc import Iterator

from onnxopt.packing.format import CorruptPackError

# message kinds
MODEL, GRAPH, NODE, ATTR, TENSOR, SPARSE, TRAINING, FUNCTION = range(8)

#: per message kind: the length-delimited fields that hold messages able to contain tensors
SCHEMA: dict[int, dict[int, int]] = {
    MODEL: {7: GRAPH, 20: TRAINING, 25: FUNCTION},
    GRAPH: {1: NODE, 5: TENSOR, 15: SPARSE},
    NODE: {5: ATTR},
    ATTR: {5: TENSOR, 6: GRAPH, 10: TENSOR, 11: GRAPH, 22: SPARSE, 23: SPARSE},
    SPARSE: {1: TENSOR, 2: TENSOR},
    TRAINING: {1: GRAPH, 2: GRAPH},
    FUNCTION: {7: NODE, 11: ATTR},
}


def read_varint(buf: bytes | memoryview, pos: int, end: int, what: str = "the model skeleton") -> tuple[int, int]:
    """The varint at ``pos`` and the position after it (CorruptPackError if it runs past ``end``)."""
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise CorruptPackError(f"malformed varint in {what}")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def fields(buf: bytes | memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, field start, value start, value end) of each length-delimited field of the message
    in ``buf[start:end]``; fields of other wire types are skipped."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = read_varint(buf, pos, end)
        wire_type = key & 7
        if wire_type == 0:
            _, pos = read_varint(buf, pos, end)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            size, pos = read_varint(buf, pos, end)
            if pos + size > end:
                raise CorruptPackError("a field runs past its message in the model skeleton")
            yield key >> 3, field_start, pos, pos + size
            pos += size
        else:
            raise CorruptPackError(f"unsupported wire type {wire_type} in the model skeleton")
    if pos != end:
        raise CorruptPackError("a fixed-size field runs past its message in the model skeleton")


def tensor_spans(buf: bytes | memoryview) -> list[tuple[int, int]]:
    """(start, end) of every TensorProto in the serialized ModelProto ``buf``, in serialization order."""
    out: list[tuple[int, int]] = []
    _walk(buf, 0, len(buf), MODEL, out)
    return out


def _walk(buf: bytes | memoryview, start: int, end: int, kind: int, out: list[tuple[int, int]]) -> None:
    children = SCHEMA[kind]
    for number, _, value_start, value_end in fields(buf, start, end):
        child = children.get(number)
        if child == TENSOR:
            out.append((value_start, value_end))
        elif child is not None:
            _walk(buf, value_start, value_end, child, out)
