"""Packed model files: lossless entropy-coded weights that unpack bit-exactly (see format.py)."""

from __future__ import annotations

import onnx

MAGIC = b"ONNXOPTPK"


def is_packed(data: bytes) -> bool:
    """True when ``data`` starts with the packed-file magic header."""
    return data[: len(MAGIC)] == MAGIC


def unpack_model(data: bytes, source: str = "packed file") -> onnx.ModelProto:
    from onnxopt.errors import BadModelError

    raise BadModelError(f"{source}: packed files are not supported yet")
