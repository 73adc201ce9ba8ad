"""Tensor payloads: which field of a TensorProto holds its data, and taking it out and back.

Every TensorProto of the model is visited in one fixed order (:func:`walk_tensors`), the order of
the serialized model: in each graph the nodes' attributes (tensors, subgraphs, sparse tensors), then
initializers and sparse initializers; then training graphs and functions. From each, one data field
is the payload (:func:`payload_kind`):

* ``raw_data``, when present (an explicitly empty ``raw_data`` stays as it is in the skeleton);
* ``float_data`` / ``double_data``: their packed wire bytes, which are the little-endian values bit
  for bit (NaN payloads included; going through Python floats could quiet a signalling NaN);
* ``int32_data`` / ``int64_data`` / ``uint64_data``: the values, stored in the narrowest integer type
  that holds them exactly (``helper.make_tensor`` keeps int8 and float16 data in ``int32_data``);
  on the wire they are varints, which :func:`int_field_content` writes back exactly.

Most payloads are cut out of the serialized model (:func:`hole_payload`); large ones are taken from
the parsed tensor and set back on it (:func:`take_payload`, :func:`restore_payload`). String tensors
and anything else stay in the skeleton.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from onnxopt.packing.format import CorruptPackError, Reader, write_uvarint
from onnxopt.packing.wire import fields, read_varint


class Kind(enum.IntEnum):
    NONE = 0
    RAW_DATA = 1
    FLOAT_DATA = 2
    INT32_DATA = 3
    INT64_DATA = 4
    DOUBLE_DATA = 5
    UINT64_DATA = 6


FIELD = {
    Kind.RAW_DATA: "raw_data",
    Kind.FLOAT_DATA: "float_data",
    Kind.INT32_DATA: "int32_data",
    Kind.INT64_DATA: "int64_data",
    Kind.DOUBLE_DATA: "double_data",
    Kind.UINT64_DATA: "uint64_data",
}
#: TensorProto field number of each payload field
FIELD_NUMBER = {
    Kind.RAW_DATA: 9,
    Kind.FLOAT_DATA: 4,
    Kind.INT32_DATA: 5,
    Kind.INT64_DATA: 7,
    Kind.DOUBLE_DATA: 10,
    Kind.UINT64_DATA: 11,
}
#: wire tag of each payload field (field number << 3 | length-delimited; the repeated ones are packed)
FIELD_TAG = {kind: number << 3 | 2 for kind, number in FIELD_NUMBER.items()}
#: kinds whose payload is the field's wire content itself (the int fields are varints on the wire)
BYTE_KINDS = frozenset({Kind.RAW_DATA, Kind.FLOAT_DATA, Kind.DOUBLE_DATA})
#: integer storage types for the int fields, narrowest first
STORE_TYPES = ("<i1", "<u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8")

_ITEMSIZE = {
    TensorProto.FLOAT: 4,
    TensorProto.UINT8: 1,
    TensorProto.INT8: 1,
    TensorProto.UINT16: 2,
    TensorProto.INT16: 2,
    TensorProto.INT32: 4,
    TensorProto.INT64: 8,
    TensorProto.BOOL: 1,
    TensorProto.FLOAT16: 2,
    TensorProto.DOUBLE: 8,
    TensorProto.UINT32: 4,
    TensorProto.UINT64: 8,
    TensorProto.COMPLEX64: 4,
    TensorProto.COMPLEX128: 8,
    TensorProto.BFLOAT16: 2,
}


def raw_itemsize(data_type: int) -> int:
    """Bytes per element of ``raw_data`` for byte grouping (1 for 8-bit, sub-byte and unknown types)."""
    return _ITEMSIZE.get(data_type, 1)


def dtype_name(data_type: int) -> str:
    try:
        return TensorProto.DataType.Name(data_type).lower()
    except ValueError:
        return f"type{data_type}"


# --------------------------------------------------------------------------- walking


def walk_node_tensors(nodes: Iterable[onnx.NodeProto], out: list[TensorProto]) -> list[TensorProto]:
    """Append the tensors of ``nodes`` (a graph's or a function's: their attributes, subgraphs included)
    to ``out``; in a graph, what :func:`walk_tensors` visits before its initializers."""
    for node in nodes:
        for attr in node.attribute:
            _walk_attr(attr, out)
    return out


def _walk_graph(graph: onnx.GraphProto, out: list[TensorProto]) -> None:
    walk_node_tensors(graph.node, out)
    out.extend(graph.initializer)
    for sparse in graph.sparse_initializer:
        _walk_sparse(sparse, out)


def _walk_attr(attr: onnx.AttributeProto, out: list[TensorProto]) -> None:
    # every field that can hold a tensor, whatever the declared type, in field-number order
    if attr.HasField("t"):
        out.append(attr.t)
    if attr.HasField("g"):
        _walk_graph(attr.g, out)
    out.extend(attr.tensors)
    for g in attr.graphs:
        _walk_graph(g, out)
    if attr.HasField("sparse_tensor"):
        _walk_sparse(attr.sparse_tensor, out)
    for sparse in attr.sparse_tensors:
        _walk_sparse(sparse, out)


def _walk_sparse(sparse: onnx.SparseTensorProto, out: list[TensorProto]) -> None:
    if sparse.HasField("values"):
        out.append(sparse.values)
    if sparse.HasField("indices"):
        out.append(sparse.indices)


def walk_tensors(model: onnx.ModelProto) -> list[TensorProto]:
    """Every TensorProto of ``model`` in serialization order (field-number order in every message):
    the order :func:`onnxopt.packing.wire.tensor_spans` finds them in the serialized model."""
    out: list[TensorProto] = []
    if model.HasField("graph"):
        _walk_graph(model.graph, out)
    for info in model.training_info:
        if info.HasField("initialization"):
            _walk_graph(info.initialization, out)
        if info.HasField("algorithm"):
            _walk_graph(info.algorithm, out)
    for function in model.functions:
        walk_node_tensors(function.node, out)
        for attr in function.attribute_proto:
            _walk_attr(attr, out)
    return out


# --------------------------------------------------------------------------- taking and restoring


@dataclass
class Payload:
    kind: Kind
    data: bytes
    itemsize: int  # for byte grouping
    store: int = 0  # index into STORE_TYPES for the int fields


def _narrowest(values: np.ndarray) -> int:
    if values.size == 0:
        return 0
    lo, hi = int(values.min()), int(values.max())
    for i, name in enumerate(STORE_TYPES):
        info = np.iinfo(np.dtype(name))
        if info.min <= lo and hi <= info.max:
            return i
    return len(STORE_TYPES) - 1


def _packed_wire_bytes(t: TensorProto, name: str, tag: int) -> bytes:
    """The packed bytes of a repeated fixed-width field, taken from the wire format (bit-exact)."""
    only = TensorProto()
    only.CopyFrom(t)
    for desc, _ in only.ListFields():
        if desc.name != name:
            only.ClearField(desc.name)
    only.DiscardUnknownFields()
    wire = only.SerializeToString()
    r = Reader(wire, "tensor wire format")
    if r.u8() != tag:
        raise ValueError(f"tensor {t.name!r}: unexpected wire layout of {name}")
    size = r.uvarint()
    data = bytes(r.take(size))
    r.done()
    return data


def payload_kind(t: TensorProto) -> Kind | None:
    """Which of ``t``'s data fields holds its payload: ``raw_data`` if present (even empty), else the
    first non-empty repeated field; None for tensors with none (strings, external data)."""
    if t.HasField("raw_data"):
        return Kind.RAW_DATA
    for kind in (Kind.FLOAT_DATA, Kind.DOUBLE_DATA, Kind.INT32_DATA, Kind.INT64_DATA, Kind.UINT64_DATA):
        if len(getattr(t, FIELD[kind])):
            return kind
    return None


def _int_payload(t: TensorProto, kind: Kind) -> Payload:
    values = np.array(getattr(t, FIELD[kind]), dtype=np.uint64 if kind is Kind.UINT64_DATA else np.int64)
    store = _narrowest(values)
    return Payload(kind, values.astype(STORE_TYPES[store]).tobytes(), np.dtype(STORE_TYPES[store]).itemsize, store)


def _byte_itemsize(t: TensorProto, kind: Kind) -> int:
    if kind is Kind.RAW_DATA:
        return raw_itemsize(t.data_type)
    return 4 if kind is Kind.FLOAT_DATA else 8


def take_payload(t: TensorProto) -> Payload | None:
    """Move ``t``'s data field out (clearing it in ``t``); None if it has nothing to move."""
    kind = payload_kind(t)
    if kind is None:
        return None
    if kind is Kind.RAW_DATA:
        p = Payload(kind, t.raw_data, _byte_itemsize(t, kind))
    elif kind in BYTE_KINDS:
        p = Payload(kind, _packed_wire_bytes(t, FIELD[kind], FIELD_TAG[kind]), _byte_itemsize(t, kind))
    else:
        p = _int_payload(t, kind)
    t.ClearField(FIELD[kind])
    return p


def hole_payload(t: TensorProto, wire: memoryview, span: tuple[int, int]) -> tuple[Payload, int, int, int] | None:
    """``t``'s payload as the serialized model ``wire`` holds it, where ``span`` is ``t``'s place there:
    the payload, where its field starts in ``wire`` (its tag), and the (start, end) of the field's
    content (the hole packing cuts out).
    None if ``t`` has no payload or an empty one (the skeleton keeps the empty field as it is)."""
    kind = payload_kind(t)
    if kind is None:
        return None
    number = FIELD_NUMBER[kind]
    found = next((f for f in fields(wire, span[0], span[1]) if f[0] == number), None)
    if found is None:
        raise ValueError(f"tensor {t.name!r}: its {FIELD[kind]} is not in the serialized model")
    _, tag_at, start, end = found
    if start == end:
        return None
    if kind in BYTE_KINDS:
        return Payload(kind, wire[start:end], _byte_itemsize(t, kind)), tag_at, start, end
    return _int_payload(t, kind), tag_at, start, end


def int_field_content(kind: Kind, store: int, data: bytes | memoryview) -> bytes:
    """The wire content (packed varints) of an int field holding ``data`` (values as STORE_TYPES[store])."""
    dtype = np.dtype(STORE_TYPES[store])
    if len(data) % dtype.itemsize:
        raise CorruptPackError(f"{len(data)} bytes is not a whole number of {dtype.name} values")
    t = TensorProto()
    getattr(t, FIELD[kind]).extend(np.frombuffer(data, dtype=dtype).tolist())
    wire = t.SerializeToString()
    _, start = read_varint(wire, 1, len(wire))  # (after the one-byte tag: the length)
    return wire[start:]


def field_is_empty(t: TensorProto, kind: Kind) -> bool:
    if kind is Kind.RAW_DATA:
        return not t.HasField("raw_data")
    return len(getattr(t, FIELD[kind])) == 0


def restore_payload(t: TensorProto, kind: Kind, store: int, data: bytes) -> None:
    """Put a payload taken by :func:`take_payload` back into ``t``."""
    if kind is Kind.RAW_DATA:
        t.raw_data = data
    elif kind in BYTE_KINDS:
        if len(data) % (4 if kind is Kind.FLOAT_DATA else 8):
            raise CorruptPackError(f"tensor {t.name!r}: {len(data)} bytes is not a whole number of values")
        head = bytearray([FIELD_TAG[kind]])
        write_uvarint(head, len(data))
        t.MergeFromString(bytes(head) + data)
    else:
        dtype = np.dtype(STORE_TYPES[store])
        if len(data) % dtype.itemsize:
            raise CorruptPackError(f"tensor {t.name!r}: {len(data)} bytes is not a whole number of values")
        values = np.frombuffer(data, dtype=dtype)
        getattr(t, FIELD[kind]).extend(values.tolist())
