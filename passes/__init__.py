"""Built-in rewrite passes, listed explicitly (installed as ``onnxopt.passes``)."""

from __future__ import annotations

from onnxopt.passes_api import Pass

from .canonicalize import Canonicalize
from .cleanup import Cleanup
from .eliminate_identity import EliminateIdentity
from .fold_constants import FoldConstants
from .simplify import CommonSubexpressionElimination, FuseLinear, Simplify, SimplifyExact

#: every built-in pass, by class; the registry keys them by ``Pass.name``
BUILTIN_PASSES: list[type[Pass]] = [
    Cleanup,
    EliminateIdentity,
    Canonicalize,
    FoldConstants,
    Simplify,
    SimplifyExact,
    CommonSubexpressionElimination,
    FuseLinear,
    __import__(f"{__name__}.prune_channels", fromlist=["PruneChannels"]).PruneChannels,
    __import__(f"{__name__}.quantize_int8", fromlist=["QuantizeInt8"]).QuantizeInt8,
    __import__(f"{__name__}.share_weights", fromlist=["ShareWeights"]).ShareWeights,
]

#: the lossless pipeline `python -m onnxopt IN OUT` runs
#: (simplify subsumes eliminate-identity and cleanup; they stay available for --passes)
DEFAULT_PIPELINE: list[str] = ["simplify"]
