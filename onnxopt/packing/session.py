"""onnxruntime sessions straight from packed files, without writing a temporary .onnx."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import onnx

log = logging.getLogger(__name__)

#: above this the serialized model would break protobuf's 2 GB limit: hand weights over as OrtValues
INLINE_LIMIT = (1 << 31) - (64 << 20)
#: initializers at least this large move to OrtValues when the model is too big to serialize
EXTERNAL_MIN_BYTES = 1024


def _model_from(source: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(source, onnx.ModelProto):
        return source
    from onnxopt.model import load

    return load(source, check=False)


def ort_session(
    source: str | os.PathLike | bytes | onnx.ModelProto,
    *,
    inline_limit: int = INLINE_LIMIT,
    **kwargs: Any,
) -> Any:
    """An ``onnxruntime.InferenceSession`` for a packed (or plain) model, built in memory.

    ``kwargs`` go to InferenceSession (``sess_options``, ``providers``; CPU by default). Models whose
    weights exceed ``inline_limit`` keep their large top-level initializers out of the protobuf and
    pass them with ``SessionOptions.add_external_initializers`` as OrtValues.
    """
    import onnxruntime as ort

    model = _model_from(source)
    kwargs.setdefault("providers", ["CPUExecutionProvider"])
    from onnxopt.model import weight_bytes

    if weight_bytes(model) <= inline_limit:
        return ort.InferenceSession(model.SerializeToString(), **kwargs)
    options = kwargs.pop("sess_options", None) or ort.SessionOptions()
    slim = onnx.ModelProto()
    slim.CopyFrom(model)
    names: list[str] = []
    values: list[Any] = []
    keep: list[np.ndarray] = []
    for t in slim.graph.initializer:
        if t.data_type == onnx.TensorProto.STRING or not t.HasField("raw_data") or len(t.raw_data) < EXTERNAL_MIN_BYTES:
            continue
        array = _array_for(t)
        if array is None:
            continue
        value = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array, t.data_type)
        names.append(t.name)
        values.append(value)
        keep.append(array)
        t.ClearField("raw_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        del t.external_data[:]
        for key, val in (("location", "onnxopt-packed-in-memory"), ("offset", "0"), ("length", str(array.nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = key, val
    log.info("session: %d initializers handed to onnxruntime as OrtValues", len(names))
    options.add_external_initializers(names, values)
    session = ort.InferenceSession(slim.SerializeToString(), sess_options=options, **kwargs)
    session._onnxopt_keepalive = (keep, values)  # OrtValues borrow the numpy buffers
    return session


def _array_for(t: onnx.TensorProto) -> np.ndarray | None:
    """The initializer as a numpy array of the same element size (reinterpreted by onnxruntime)."""
    from onnxopt.packing.payload import raw_itemsize

    itemsize = raw_itemsize(t.data_type)
    if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
        return None
    if itemsize == 1 and t.data_type not in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.BOOL):
        return None  # sub-byte and exotic types stay inline
    dims = tuple(int(d) for d in t.dims)
    count = int(np.prod(dims, dtype=np.int64))
    if count * itemsize != len(t.raw_data):
        return None
    return np.frombuffer(t.raw_data, dtype=f"<u{itemsize}").reshape(dims).copy()
