"""Packed model files: lossless entropy-coded weights that unpack bit-exactly (see format.py).

Public API::

    pack_model(model, codecs=None) -> PackResult      # .data bytes, .tensors reports, .to_dict()
    pack_file(model, path, codecs=None) -> PackResult # written as produced (large models)
    unpack_model(data, source)     -> onnx.ModelProto  # bit-exact; BadModelError on any bad input
    is_packed(data)                -> bool
    ort_session(path_or_bytes, **kwargs) -> onnxruntime.InferenceSession   # no temporary file
"""

from __future__ import annotations

from onnxopt.packing.codecs import CODEC_NAMES, PackOptions
from onnxopt.packing.format import MAGIC, Limits
from onnxopt.packing.pack import PackResult, TensorReport, pack_file, pack_model, unpack_model
from onnxopt.packing.session import ort_session

__all__ = [
    "CODEC_NAMES",
    "MAGIC",
    "Limits",
    "PackOptions",
    "PackResult",
    "TensorReport",
    "is_packed",
    "ort_session",
    "pack_file",
    "pack_model",
    "unpack_model",
]


def is_packed(data: bytes) -> bool:
    """True when ``data`` starts with the packed-file magic header."""
    return bytes(data[: len(MAGIC)]) == MAGIC
