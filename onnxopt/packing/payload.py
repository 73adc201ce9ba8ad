"""Moving tensor payloads out of a ModelProto and back, so the restored proto serializes identically.

Every TensorProto of the model is visited in one fixed order (:func:`walk_tensors`): graph
initializers, sparse initializers, node attributes (tensor, tensors, sparse tensors), subgraphs,
functions and training graphs. From each, exactly one data field is moved out and cleared:

* ``raw_data``: its bytes (presence is kept: an explicitly empty ``raw_data`` comes back set);
* ``float_data`` / ``double_data``: their packed wire bytes, which are the little-endian values bit
  for bit (NaN payloads included; going through Python floats could quiet a signalling NaN);
* ``int32_data`` / ``int64_data`` / ``uint64_data``: the values, stored in the narrowest integer type
  that holds them exactly (``helper.make_tensor`` keeps int8 and float16 data in ``int32_data``).

String tensors and anything else stay in the skeleton, which is serialized as it is.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from onnxopt.packing.format import CorruptPackError, Reader, write_uvarint


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
#: wire tag of the packed repeated fields moved as bytes (field number << 3 | length-delimited)
WIRE_TAG = {Kind.FLOAT_DATA: 4 << 3 | 2, Kind.DOUBLE_DATA: 10 << 3 | 2}
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


#: bytes per element of raw_data, for the types whose raw_data is exactly elements x this
_ELEMENT_BYTES = {**_ITEMSIZE, TensorProto.COMPLEX64: 8, TensorProto.COMPLEX128: 16}


def implied_len(t: TensorProto, kind: Kind, store: int) -> int | None:
    """The payload length that ``t``'s shape and type give for ``kind`` (None if they give none).

    The index leaves a length out when it equals this (nearly always), so a record costs less.
    """
    count = 1
    for d in t.dims:  # (faster than min() and math.prod() over protobuf's repeated field: 0.6 vs 1.1 us)
        if d < 0:
            return None
        count *= d
    if kind is Kind.RAW_DATA:
        size = _ELEMENT_BYTES.get(t.data_type)
    elif kind is Kind.FLOAT_DATA:
        size = 8 if t.data_type == TensorProto.COMPLEX64 else 4
    elif kind is Kind.DOUBLE_DATA:
        size = 16 if t.data_type == TensorProto.COMPLEX128 else 8
    elif kind in (Kind.INT32_DATA, Kind.INT64_DATA, Kind.UINT64_DATA) and 0 <= store < len(STORE_TYPES):
        size = np.dtype(STORE_TYPES[store]).itemsize
    else:
        return None
    return None if size is None else count * size


def raw_itemsize(data_type: int) -> int:
    """Bytes per element of ``raw_data`` for byte grouping (1 for 8-bit, sub-byte and unknown types)."""
    return _ITEMSIZE.get(data_type, 1)


def dtype_name(data_type: int) -> str:
    try:
        return TensorProto.DataType.Name(data_type).lower()
    except ValueError:
        return f"type{data_type}"


# --------------------------------------------------------------------------- walking


_A = onnx.AttributeProto


def _walk_graph(graph: onnx.GraphProto, out: list[TensorProto]) -> None:
    out.extend(graph.initializer)
    for sparse in graph.sparse_initializer:
        out.append(sparse.values)
        out.append(sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type in _HOLDS_TENSORS:  # (most attributes are ints, floats or strings)
                _walk_attr(attr, out)


_HOLDS_TENSORS = frozenset({_A.TENSOR, _A.TENSORS, _A.SPARSE_TENSOR, _A.SPARSE_TENSORS, _A.GRAPH, _A.GRAPHS})


def _walk_attr(attr: onnx.AttributeProto, out: list[TensorProto]) -> None:
    # dispatch on the declared type: a tensor hidden in a field of another type just stays in the
    # skeleton (packing and unpacking walk identically, so that is still exact)
    kind = attr.type
    if kind == _A.TENSOR:
        out.append(attr.t)
    elif kind == _A.TENSORS:
        out.extend(attr.tensors)
    elif kind == _A.SPARSE_TENSOR:
        out.append(attr.sparse_tensor.values)
        out.append(attr.sparse_tensor.indices)
    elif kind == _A.SPARSE_TENSORS:
        for sparse in attr.sparse_tensors:
            out.append(sparse.values)
            out.append(sparse.indices)
    elif kind == _A.GRAPH:
        _walk_graph(attr.g, out)
    else:
        for g in attr.graphs:
            _walk_graph(g, out)


def walk_tensors(model: onnx.ModelProto) -> list[TensorProto]:
    """Every TensorProto of ``model`` in a fixed order (the pack and unpack sides walk identically)."""
    out: list[TensorProto] = []
    _walk_graph(model.graph, out)
    for function in model.functions:
        for node in function.node:
            for attr in node.attribute:
                if attr.type in _HOLDS_TENSORS:
                    _walk_attr(attr, out)
    for info in model.training_info:
        _walk_graph(info.initialization, out)
        _walk_graph(info.algorithm, out)
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


def take_payload(t: TensorProto) -> Payload | None:
    """Move ``t``'s data field out (clearing it in ``t``); None if it has nothing to move."""
    if t.HasField("raw_data"):
        data = t.raw_data
        t.ClearField("raw_data")
        return Payload(Kind.RAW_DATA, data, raw_itemsize(t.data_type))
    for kind in (Kind.FLOAT_DATA, Kind.DOUBLE_DATA):
        name = FIELD[kind]
        if len(getattr(t, name)):
            data = _packed_wire_bytes(t, name, WIRE_TAG[kind])
            t.ClearField(name)
            return Payload(kind, data, 4 if kind is Kind.FLOAT_DATA else 8)
    for kind in (Kind.INT32_DATA, Kind.INT64_DATA, Kind.UINT64_DATA):
        name = FIELD[kind]
        field = getattr(t, name)
        if len(field):
            values = np.array(field, dtype=np.uint64 if kind is Kind.UINT64_DATA else np.int64)
            store = _narrowest(values)
            data = values.astype(STORE_TYPES[store]).tobytes()
            t.ClearField(name)
            return Payload(kind, data, np.dtype(STORE_TYPES[store]).itemsize, store)
    return None


def field_is_empty(t: TensorProto, kind: Kind) -> bool:
    if kind is Kind.RAW_DATA:
        return not t.HasField("raw_data")
    return len(getattr(t, FIELD[kind])) == 0


def restore_payload(t: TensorProto, kind: Kind, store: int, data: bytes) -> None:
    """Put a payload taken by :func:`take_payload` back into ``t``."""
    if kind is Kind.RAW_DATA:
        t.raw_data = data
    elif kind in WIRE_TAG:
        if len(data) % (4 if kind is Kind.FLOAT_DATA else 8):
            raise CorruptPackError(f"tensor {t.name!r}: {len(data)} bytes is not a whole number of values")
        head = bytearray([WIRE_TAG[kind]])
        write_uvarint(head, len(data))
        t.MergeFromString(bytes(head) + data)
    else:
        dtype = np.dtype(STORE_TYPES[store])
        if len(data) % dtype.itemsize:
            raise CorruptPackError(f"tensor {t.name!r}: {len(data)} bytes is not a whole number of values")
        values = np.frombuffer(data, dtype=dtype)
        getattr(t, FIELD[kind]).extend(values.tolist())
