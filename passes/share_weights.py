"""share-weights: k-means weight sharing (Deep Compression, Han et al. 2016). LOSSY.

Each large float weight of a Conv, ConvTranspose, Gemm or MatMul (and each embedding table read by
Gather) is stored as ``2**bits`` shared values: a uint8 index tensor of the weight's shape, a codebook
of at most ``2**bits`` values in the weight's dtype and (``per_channel``, the default) a scale and an
offset per output channel, decoded by ``Gather(codebook, Cast(indices, int32)) * scale + offset``
whose output keeps the weight's name (Gather takes int32/int64 indices only). onnxruntime folds those nodes when it
loads the model, so inference runs the same float kernels as before (no speed change); the file
stores 1 byte per weight instead of 4 (fp32) and, packed (``--pack``), close to ``bits`` bits.

Per-channel scales: each output channel is divided by its largest magnitude before sharing, so one
codebook serves filters whose scales differ by orders of magnitude (a BatchNorm folded into a Conv
scales each filter by its own factor); k-means then weighs every value by its channel's scale
squared, which makes it minimise the error of the weights themselves, not of the normalised ones.
Then each channel's scale and offset are refitted by least squares: one codebook leaves each channel
an error of non-zero mean, a systematic shift of that output (PP-OCR det at 8 bits: 13.6 dB output
SQNR without the offset, uniform levels 20.7), which the offset removes.

The codebook is a local optimum of 1-D k-means (Lloyd's iterations until no value changes cluster),
started from values spread linearly between min and max — Deep Compression found that start best,
because it keeps the rare large weights that matter most. It runs on the sorted distinct values with
prefix sums, so one iteration costs O(clusters x log(values)).

Invariants: graph inputs, outputs and every tensor name stay as they were; with ``per_channel``
off, a tensor with at most ``2**bits`` distinct values is stored exactly; biases, small tensors
(< ``min_elements``) and weights that are not plain float initializers are left alone. The
fidelity budget is the run's (cosine 0.99, 20 dB) unless ``--min-*`` flags say otherwise.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.context import PassContext
from onnxopt.errors import UsageError
from onnxopt.passes_api import Kind, Pass, PassResult

log = logging.getLogger(__name__)

#: op type -> input positions that hold weights worth sharing (not biases)
WEIGHT_INPUTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1), "Gather": (0,)}
FLOAT_DTYPES = (np.float32, np.float16)
MAX_ITERATIONS = 100


def kmeans_1d(values: np.ndarray, clusters: int, weights: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Codebook (ascending) and uint8 indices of 1-D k-means over ``values`` (any shape).

    Lloyd's iterations on the sorted distinct values weighted by their counts (or by the sum of
    ``weights``, broadcastable to ``values``, over their occurrences), from a linear start between
    min and max; stops when no value changes cluster. Clusters that end up empty are dropped, so the
    codebook may be shorter than ``clusters``; with at most ``clusters`` distinct values the codebook
    is exactly those values.
    """
    flat = values.reshape(-1)
    uniq, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.reshape(-1)
    if len(uniq) <= clusters:
        return uniq.astype(values.dtype), inverse.reshape(values.shape).astype(np.uint8)
    x = uniq.astype(np.float64)
    occurrence = None if weights is None else np.broadcast_to(weights, values.shape).reshape(-1)
    w = np.bincount(inverse, weights=occurrence, minlength=len(uniq)).astype(np.float64)
    csum_w = np.concatenate([[0.0], np.cumsum(w)])
    csum_wx = np.concatenate([[0.0], np.cumsum(w * x)])
    centroids = np.linspace(x[0], x[-1], clusters)
    edges = None
    for _ in range(MAX_ITERATIONS):
        # cluster j holds the distinct values in [edges[j], edges[j+1]) (midpoints between centroids)
        new_edges = np.concatenate([[0], np.searchsorted(x, (centroids[:-1] + centroids[1:]) / 2), [len(x)]])
        if edges is not None and np.array_equal(new_edges, edges):
            break
        edges = new_edges
        weight = csum_w[edges[1:]] - csum_w[edges[:-1]]
        total = csum_wx[edges[1:]] - csum_wx[edges[:-1]]
        filled = weight > 0
        centroids = np.where(filled, total / np.where(filled, weight, 1.0), centroids)
    assert edges is not None
    filled = (edges[1:] - edges[:-1]) > 0
    codebook = centroids[filled]
    cluster_of_uniq = np.repeat(np.arange(len(codebook)), (edges[1:] - edges[:-1])[filled])
    indices = cluster_of_uniq[inverse].reshape(values.shape).astype(np.uint8)
    return codebook.astype(values.dtype), indices


def uniform_1d(values: np.ndarray, clusters: int, weights: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """The baseline k-means is measured against: ``clusters`` evenly spaced values between min and max
    (linear quantization at the same storage), each value rounded to the nearest; unused levels dropped.
    ``weights`` is ignored (the levels do not move)."""
    lo, hi = float(values.min()), float(values.max())
    if hi == lo:
        return np.array([values.reshape(-1)[0]], values.dtype), np.zeros(values.shape, np.uint8)
    grid = np.linspace(lo, hi, clusters)
    nearest = np.clip(np.rint((values.astype(np.float64) - lo) / (hi - lo) * (clusters - 1)), 0, clusters - 1)
    used, indices = np.unique(nearest.astype(np.int64), return_inverse=True)
    return grid[used].astype(values.dtype), indices.reshape(values.shape).astype(np.uint8)


METHODS = {"kmeans": kmeans_1d, "uniform": uniform_1d}


def channel_axis(node: gs.Node, index: int, ndim: int) -> int | None:
    """The output-channel axis of weight input ``index`` of ``node``: scales differ along it (a
    BatchNorm folded into a Conv scales its filters one by one). None: one scale for the tensor."""
    if ndim < 2:
        return None
    if node.op == "Conv":
        return 0
    if node.op == "ConvTranspose":
        return 1
    if node.op == "Gemm":
        transposed = bool(node.attrs.get("transB" if index == 1 else "transA", 0))
        return (0 if transposed else 1) if index == 1 else (1 if transposed else 0)
    if node.op == "MatMul":
        return ndim - 1 if index == 1 else ndim - 2
    return 0  # Gather: one scale per embedding row


def channel_scales(values: np.ndarray, axis: int) -> np.ndarray:
    """Largest magnitude of each slice along ``axis`` (1 where a slice is all zeros), broadcastable."""
    others = tuple(i for i in range(values.ndim) if i != axis)
    scale = np.abs(values).max(axis=others, keepdims=True)
    return np.where(scale > 0, scale, np.ones_like(scale)).astype(values.dtype)


def channel_fit(values: np.ndarray, shared: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel least-squares ``scale`` and ``offset`` with ``values ~ shared * scale + offset``.

    Sharing one codebook leaves each channel's error with a mean of its own, a systematic shift of
    that output channel (post-ReLU inputs have large means); the affine fit removes it and can only
    lower each channel's squared error (channels whose shared values are constant keep the offset)."""
    others = tuple(i for i in range(values.ndim) if i != axis)
    w = values.astype(np.float64)
    q = shared.astype(np.float64)
    q_mean, w_mean = q.mean(axis=others, keepdims=True), w.mean(axis=others, keepdims=True)
    var = ((q - q_mean) ** 2).mean(axis=others, keepdims=True)
    cov = ((q - q_mean) * (w - w_mean)).mean(axis=others, keepdims=True)
    scale = np.where(var > 0, cov / np.where(var > 0, var, 1.0), 0.0)
    offset = w_mean - scale * q_mean
    return scale.astype(values.dtype), offset.astype(values.dtype)


def sqnr_db(ref: np.ndarray, approx: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    noise = float(((ref - approx.astype(np.float64)) ** 2).sum())
    signal = float((ref * ref).sum())
    return float("inf") if noise == 0 else 10 * np.log10(max(signal, 1e-300) / noise)


class ShareWeights(Pass):
    """Store each large float weight as ``2**bits`` shared values (uint8 indices + codebook + Gather)."""

    name = "share-weights"
    kind = Kind.LOSSY
    needs_shapes = False

    def __init__(self, bits: int = 6, min_elements: int = 1024, method: str = "kmeans",
                 per_channel: bool = True) -> None:
        """``method``: "kmeans" (the pass), or "uniform" (evenly spaced levels: the baseline it is
        benchmarked against). ``per_channel``: divide each output channel by its largest magnitude
        before sharing and multiply back at load (one float per channel)."""
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise UsageError(f"share-weights: bits must be an integer in 1..8, got {bits!r}")
        if min_elements < 1:
            raise UsageError(f"share-weights: min_elements must be >= 1, got {min_elements}")
        if method not in METHODS:
            raise UsageError(f"share-weights: method must be one of {', '.join(METHODS)}, got {method!r}")
        self.bits = bits
        self.min_elements = int(min_elements)
        self.method = method
        self.per_channel = bool(per_channel)

    def _candidates(self, graph: gs.Graph) -> list[tuple[gs.Constant, int | None]]:
        """Float constants of at least ``min_elements`` read only as weights, with their channel axis."""
        out: dict[str, tuple[gs.Constant, int | None]] = {}
        blocked: set[str] = {t.name for t in graph.outputs}
        for node in graph.nodes:
            for i, t in enumerate(node.inputs):
                if not isinstance(t, gs.Constant):
                    continue
                if i in WEIGHT_INPUTS.get(node.op, ()):
                    out.setdefault(t.name, (t, channel_axis(node, i, len(t.shape))))
                else:
                    blocked.add(t.name)
            for sub in node.attrs.values():  # tensors read inside subgraphs: leave them
                if isinstance(sub, gs.Graph):
                    blocked.update(sub.tensors())
        return [(t, axis) for name, (t, axis) in out.items()
                if name not in blocked and t.dtype in FLOAT_DTYPES and int(np.prod(t.shape)) >= self.min_elements]

    def run(self, graph: gs.Graph, context: PassContext) -> PassResult:
        clusters = 2 ** self.bits
        stats: dict[str, Any] = {"bits": self.bits, "method": self.method, "per_channel": self.per_channel,
                                 "tensors": {}}
        before = after = 0
        for const, axis in self._candidates(graph):
            values = np.asarray(const.values)
            scale = channel_scales(values, axis) if self.per_channel and axis is not None else None
            if scale is None:
                codebook, indices = METHODS[self.method](values, clusters)
                approx = codebook[indices]
            else:
                normalized = values.astype(np.float32) / scale.astype(np.float32)
                codebook, indices = METHODS[self.method](normalized, clusters, scale.astype(np.float64) ** 2)
                codebook = codebook.astype(values.dtype)
                scale, offset = channel_fit(values, codebook[indices], axis)
                approx = codebook[indices] * scale + offset
            name = const.name
            const.name = f"{name}_shared_indices"
            const.values = indices
            decoded = gs.Variable(name, dtype=values.dtype, shape=list(values.shape))
            for consumer in list(const.outputs):
                for i, t in enumerate(consumer.inputs):
                    if t is const:
                        consumer.inputs[i] = decoded
            wide = gs.Variable(f"{name}_shared_indices_int32", dtype=np.int32, shape=list(values.shape))
            graph.nodes.append(gs.Node("Cast", name=f"{name}_widen", inputs=[const], outputs=[wide],
                                       attrs={"to": onnx.TensorProto.INT32}))
            book = gs.Constant(f"{name}_codebook", codebook)
            if scale is None:
                graph.nodes.append(gs.Node("Gather", name=f"{name}_decode", inputs=[book, wide], outputs=[decoded],
                                           attrs={"axis": 0}))
            else:
                shared = gs.Variable(f"{name}_shared", dtype=values.dtype, shape=list(values.shape))
                graph.nodes.append(gs.Node("Gather", name=f"{name}_decode", inputs=[book, wide], outputs=[shared],
                                           attrs={"axis": 0}))
                scaled = gs.Variable(f"{name}_scaled", dtype=values.dtype, shape=list(values.shape))
                graph.nodes.append(gs.Node("Mul", name=f"{name}_rescale",
                                           inputs=[shared, gs.Constant(f"{name}_scale", scale)], outputs=[scaled]))
                graph.nodes.append(gs.Node("Add", name=f"{name}_offset",
                                           inputs=[scaled, gs.Constant(f"{name}_offset", offset)], outputs=[decoded]))
                after += scale.nbytes + offset.nbytes
            before += values.nbytes
            after += indices.nbytes + codebook.nbytes
            stats["tensors"][name] = {"elements": int(values.size), "codebook": len(codebook),
                                      "channel_axis": None if scale is None else axis,
                                      "sqnr_db": round(sqnr_db(values, approx), 2)}
        if not stats["tensors"]:
            stats["reason"] = f"no float weight of {self.min_elements}+ elements read only as a weight"
            return PassResult(False, stats)
        graph.toposort()
        stats["weight_bytes"] = {"before": before, "after": after}
        finite = [s["sqnr_db"] for s in stats["tensors"].values() if np.isfinite(s["sqnr_db"])]
        stats["min_weight_sqnr_db"] = min(finite) if finite else None
        log.info("share-weights: %d tensors, %d -> %d bytes", len(stats["tensors"]), before, after)
        return PassResult(True, stats)
