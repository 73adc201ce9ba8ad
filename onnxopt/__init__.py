"""onnxopt: ONNX graph-rewriting optimizer validated against onnxruntime on CPU.

Library API::

    import onnxopt
    result = onnxopt.optimize("in.onnx", "out.onnx")          # lossless pipeline
    print(result.report.to_text())
    session = onnxopt.ort_session("model.onnxpack")            # onnxruntime, no temporary file
"""

from __future__ import annotations

from onnxopt.api import OptimizeResult, optimize
from onnxopt.errors import (
    BadDataError,
    BadModelError,
    OnnxOptError,
    OutputError,
    PassError,
    UsageError,
    ValidationError,
)
from onnxopt.manager import PassManager
from onnxopt.model import load, save
from onnxopt.packing import ort_session
from onnxopt.passes_api import Kind, Pass, PassResult

__version__ = "0.1.0"

__all__ = [
    "BadDataError",
    "BadModelError",
    "Kind",
    "OnnxOptError",
    "OptimizeResult",
    "OutputError",
    "Pass",
    "PassError",
    "PassManager",
    "PassResult",
    "UsageError",
    "ValidationError",
    "__version__",
    "load",
    "optimize",
    "ort_session",
    "save",
]
