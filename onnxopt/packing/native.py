"""The compiled lane-decoder loops (``_lanes.c``) and one-call unpacker (``_unpack.c``), when built.

``pip install`` compiles ``onnxopt/packing/_lanes.c`` and ``_unpack.c`` as one optional extension:
without a C compiler the install still succeeds and unpacking uses the Python reader and the numpy
decoders in rans.py and huffman.py, which read the same files (about 5-10x slower on int8 models).
``ONNXOPT_NATIVE=0`` at start-up (or :func:`set_native`) forces those (the tests check that both
agree). Where the CPU has AVX2, the rANS loop decodes eight lanes at a time (``ONNXOPT_SIMD=0`` or
:func:`set_simd` turn that off: the same bytes either way).

The loops are called through ctypes: they take plain arrays, so their C stays a pair of loops. The
one-call unpacker is a CPython function (:func:`unpack_spliced`): it exists to take the per-call cost
out of small files, and it returns a bytes object (ctypes would cost a microsecond per pointer).
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
from functools import lru_cache
from types import ModuleType

import numpy as np

from onnxopt.packing.format import Limits
from onnxopt.packing.lanes import TABLE_SIZE, LaneBatch

log = logging.getLogger(__name__)

_P = ctypes.c_void_p
_I = ctypes.c_int64


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    spec = importlib.util.find_spec("onnxopt.packing._lanes")
    if spec is None or not spec.origin:
        log.debug("compiled lane decoder not built; using the numpy decoders")
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError as exc:  # a stale or foreign build
        log.debug("compiled lane decoder unusable (%s); using the numpy decoders", exc)
        return None
    lib.rans_decode.restype = _I
    lib.rans_decode.argtypes = [_I, _P, _P, _P, _P, _I, _P, _I]
    lib.huffman_decode.restype = _I
    lib.huffman_decode.argtypes = [_I, _P, _P, _P, _P, _P, _I, _P, _I]
    lib.rans_header.restype = _I
    lib.rans_header.argtypes = [_P, _I, _I, _P, _P]
    lib.rans_simd.restype = _I
    lib.rans_simd.argtypes = [_I]
    lib.rans_simd(os.environ.get("ONNXOPT_SIMD", "1") != "0")
    return lib


def set_simd(on: bool | None = None) -> bool:
    """Use the AVX2 rANS lanes (where the CPU has them) or the scalar loop only (``None``: leave it);
    returns whether they are used. Both decode the same files to the same bytes; ``ONNXOPT_SIMD=0``
    starts with them off."""
    lib = _library()
    return bool(lib.rans_simd(-1 if on is None else int(on)) & 1) if lib is not None else False


def simd_supported() -> bool:
    """Whether the compiled loops have AVX2 rANS lanes for this CPU."""
    lib = _library()
    return bool(lib.rans_simd(-1) & 2) if lib is not None else False


#: whether the compiled module may be used (ONNXOPT_NATIVE=0 at start-up: no; :func:`set_native`)
_enabled = os.environ.get("ONNXOPT_NATIVE", "1") != "0"


def set_native(on: bool | None = None) -> bool:
    """Use the compiled module where it is built (True), or the Python reader and numpy loops only
    (False; ``None``: leave it); returns whether it is used. Both read the same files to the same bytes.
    (The switch is a variable rather than a look-up of ONNXOPT_NATIVE per call: that took about a
    microsecond, several times per unpack.)"""
    global _enabled
    if on is not None:
        _enabled = bool(on)
    return available()


def available() -> bool:
    """True when the compiled module is built and not switched off (ONNXOPT_NATIVE=0, :func:`set_native`)."""
    return _enabled and _library() is not None


@lru_cache(maxsize=1)
def _module() -> ModuleType | None:
    try:
        module = importlib.import_module("onnxopt.packing._lanes") if _library() is not None else None
    except ImportError:  # (the shared object loaded through ctypes, but not as a module: a foreign build)
        return None
    return module if hasattr(module, "unpack_spliced") else None  # (a build older than _unpack.c: loops only)


def unpack_spliced(skeleton: bytes, index: bytes, data: memoryview, start: int, end: int, records: int,
                   limits: Limits) -> bytes | int:
    """The model's serialized bytes, every payload spliced into the skeleton, in one C call (_unpack.c);
    or an int when that path declines the file: 1, a codec or record type it leaves to the Python reader;
    2, anything the Python reader would refuse (which that reader then names); 3, out of memory; 4, no
    compiled module. ``data[start:end]`` runs from the first payload to the trailer."""
    module = _module() if available() else None
    if module is None:
        return 4
    bounds = (limits.max_tensor_bytes, limits.max_total_bytes, limits.max_skeleton_bytes, limits.max_lanes,
              limits.max_steps)
    return module.unpack_spliced(skeleton, index, data, start, end, records, *(min(b, 1 << 62) for b in bounds))


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def rans_header(view: memoryview, lanes: int) -> tuple[int, np.ndarray, np.ndarray] | None:
    """Parse a rANS stream header after its lane count (see rans.parse): (bytes read, decode table,
    start states), or None when the header is inconsistent (rans.parse's Python reader then says why)."""
    block = np.empty(TABLE_SIZE + lanes, dtype=np.uint32)  # the table, then the states: one pointer
    at = _ptr(block)
    buf = bytes(view)  # (ctypes passes a bytes object's own buffer; a copy of a few hundred bytes)
    used = _library().rans_header(buf, len(buf), lanes, at, at + 4 * TABLE_SIZE)
    return None if used < 0 else (int(used), block[:TABLE_SIZE], block[TABLE_SIZE:])


def rans_loop(batch: LaneBatch, out: np.ndarray) -> np.ndarray | None:
    """Run every lane of ``batch`` to its end; the final states, or None if the words ran out.

    Like the numpy loop, this advances ``batch.read`` by the words consumed and works on the batch's
    own state array (``batch.states``, which the batch made for this decode).
    """
    lib = _library()
    x = np.ascontiguousarray(batch.states, dtype=np.uint32)
    tab = np.ascontiguousarray(batch.tables, dtype=np.uint32)
    w = np.require(batch.words, np.uint16, "CA")  # (aligned: the word section may start at an odd offset)
    read = lib.rans_decode(len(batch.ordered), _ptr(batch.layout), _ptr(x), _ptr(tab), _ptr(w), w.size, _ptr(out),
                           out.size)
    if read < 0:  # (-3: a lane ended outside the start states, which the caller would check otherwise)
        return None
    batch.read = int(read)
    return x


def huffman_loop(batch: LaneBatch, out: np.ndarray) -> bool:
    """Run every lane of ``batch`` to its end; False if the words ran out (see :func:`rans_loop`)."""
    lib = _library()
    buf = np.ascontiguousarray(batch.states, dtype=np.uint64)
    bits = np.full(batch.total_lanes, 32, dtype=np.int64)
    tab = np.ascontiguousarray(batch.tables, dtype=np.uint16)
    w = np.require(batch.words, np.uint32, "CA")
    read = lib.huffman_decode(
        len(batch.ordered), _ptr(batch.layout), _ptr(buf), _ptr(bits), _ptr(tab), _ptr(w), w.size, _ptr(out), out.size
    )
    if read < 0:
        return False
    batch.read = int(read)
    return True
