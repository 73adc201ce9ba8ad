"""fold-constants: evaluate everything that does not depend on a graph input. NUMERIC.

What folds:
- a node whose inputs are all constant (initializers, lifted Constant nodes, values folded before);
- Shape / Size of a tensor whose shape is static, and entries of a partially static shape that a
  Gather / Slice / Concat / Unsqueeze / arithmetic chain selects (``Shape(x)[2]`` when dim 2 of ``x``
  is 384), through :class:`~passes.simplify_core.SymValues`; symbolic dims are never baked in;
- an ``If`` whose condition is constant is replaced by the nodes of the branch it takes;
- nodes inside If/Loop/Scan bodies (outer-scope constants are visible there).

What never folds: QuantizeLinear/DequantizeLinear (the QDQ pattern is what ORT's int8 kernels
match), random ops, training-mode Dropout, ops with no inputs, and anything that depends on a graph
input. A folded tensor keeps its name; a node whose evaluation fails is left as it is.

Evaluation: numpy for shape arithmetic and IEEE-exact element-wise float ops (+, -, *, /, sqrt),
onnxruntime (a one-node model, sessions cached per op signature) for everything else.

Size guard. Growth of a fold = its output bytes - the constant bytes it frees. A fold growing the
model by at most ``max_bytes`` (4 KB) is fine; a bigger one must not output more than
``size_limit_ratio`` (2) x the constant bytes it reads, and all folds of a run together may grow
the weights by at most ``growth_budget`` (default max(512 KB, 5% of the weights)).
``size_limit_ratio=None`` disables the guard. So ConstantOfShape / Expand / Tile / Range fills stay
as they are (onnxruntime builds them at load: a 4 KB model must not become 244 MB), but their value
is still known (:func:`~passes.simplify_core.splat`): a node reading a fill is folded when its own
output is small (the fill is built transiently, up to ``max_transient_bytes``), and the rules see
fills as values. A 1 MB threshold as in other tools would let many mid-size fills each pass.

Kind NUMERIC: an op evaluated alone may round differently from the fused kernel ORT would use.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from onnxopt.context import PassContext
from onnxopt.passes_api import Kind, Pass, PassResult

from .graph_utils import NameGen, all_graphs, replace_all_uses
from .simplify_core import (
    ShapeInfo,
    SymValues,
    attr_int,
    const_dtype,
    const_nbytes,
    const_value,
    is_default_domain,
    is_plain,
    load_values,
    materialize,
    slice_indices,
    splat,
    subgraphs_of,
    toposort_graph,
)

log = logging.getLogger(__name__)

#: ops that are never evaluated at optimization time, whatever their domain
NEVER_FOLD = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
    "Constant",  # lifted to an initializer by canonicalization instead
})
#: ops whose outputs are not plain tensors (sequences, optionals) or that have side effects
NOT_TENSOR_OPS = frozenset({
    "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase", "SequenceAt", "SequenceLength",
    "SplitToSequence", "ConcatFromSequence", "SequenceMap", "Optional", "OptionalGetElement",
    "OptionalHasElement",
})
#: outputs whose size is decided by an input's *value*, checked before evaluating
EXPANDING_OPS = frozenset({"ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "Pad", "OneHot"})

#: dtypes numpy represents exactly as ORT does
_NUMPY_SAFE_KINDS = "biuf"
_FLOAT_EXACT = (np.dtype(np.float32), np.dtype(np.float64))


class FoldError(Exception):
    """A node could not be evaluated (reason in the message)."""


# --------------------------------------------------------------------------- numpy evaluators


def _ints(v: np.ndarray | None) -> list[int] | None:
    return None if v is None else [int(x) for x in np.asarray(v).reshape(-1)]


def _axes_of(node: gs.Node, vals: list[np.ndarray | None], idx: int) -> list[int] | None:
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    return _ints(vals[idx]) if idx < len(vals) else None


def _np_identity(node: gs.Node, v: list) -> list:
    return [v[0]]


def _np_shape(node: gs.Node, v: list) -> list:
    shape = v[0].shape
    rank = len(shape)
    start = attr_int(node, "start", 0)
    end = node.attrs.get("end")
    end = rank if end is None else int(end)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return [np.array(shape[start:end], dtype=np.int64)]


def _np_size(node: gs.Node, v: list) -> list:
    return [np.array(v[0].size, dtype=np.int64)]


def _np_unsqueeze(node: gs.Node, v: list) -> list:
    axes = _axes_of(node, v, 1)
    if axes is None:
        raise FoldError("axes unknown")
    rank = v[0].ndim + len(axes)
    axes = sorted(a + rank if a < 0 else a for a in axes)
    out = v[0]
    for a in axes:
        out = np.expand_dims(out, a)
    return [out]


def _np_squeeze(node: gs.Node, v: list) -> list:
    axes = _axes_of(node, v, 1)
    if axes is None:
        axes = [i for i, d in enumerate(v[0].shape) if d == 1]
    axes = [a + v[0].ndim if a < 0 else a for a in axes]
    if any(v[0].shape[a] != 1 for a in axes):
        raise FoldError("squeezing a dim that is not 1")
    return [np.squeeze(v[0], axis=tuple(axes))]


def _np_concat(node: gs.Node, v: list) -> list:
    arrays = [x for x in v if x is not None]
    return [np.concatenate(arrays, axis=attr_int(node, "axis", 0))]


def _np_gather(node: gs.Node, v: list) -> list:
    data, idx = v[0], np.asarray(v[1])
    axis = attr_int(node, "axis", 0)
    axis = axis + data.ndim if axis < 0 else axis
    n = data.shape[axis]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise FoldError("index out of range")
    idx = np.where(idx < 0, idx + n, idx)
    return [np.take(data, idx, axis=axis)]


def _np_slice(node: gs.Node, v: list) -> list:
    data = v[0]
    if "starts" in node.attrs:
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes = list(node.attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(v[1]), _ints(v[2])
        axes = _ints(v[3]) if len(v) > 3 and v[3] is not None else list(range(len(starts or [])))
        steps = _ints(v[4]) if len(v) > 4 and v[4] is not None else [1] * len(starts or [])
    if starts is None or ends is None or axes is None or steps is None or 0 in steps:
        raise FoldError("bad slice parameters")
    index: list[Any] = [slice(None)] * data.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = a + data.ndim if a < 0 else a
        r = slice_indices(data.shape[a], s, e, st)
        index[a] = slice(r.start, r.stop if r.stop >= 0 else None, r.step)
    return [data[tuple(index)]]


def _np_reshape(node: gs.Node, v: list) -> list:
    data = v[0]
    if "shape" in node.attrs:
        target = [int(x) for x in node.attrs["shape"]]
    else:
        target = _ints(v[1])
    if target is None:
        raise FoldError("shape unknown")
    allowzero = attr_int(node, "allowzero", 0)
    if not allowzero:
        target = [data.shape[i] if d == 0 and i < data.ndim else d for i, d in enumerate(target)]
    if target.count(-1) > 1:
        raise FoldError("several -1")
    return [data.reshape(target)]


def _np_flatten(node: gs.Node, v: list) -> list:
    axis = attr_int(node, "axis", 1)
    axis = axis + v[0].ndim if axis < 0 else axis
    outer = int(np.prod(v[0].shape[:axis], dtype=np.int64))
    return [v[0].reshape(outer, -1) if v[0].size else v[0].reshape(outer, int(np.prod(v[0].shape[axis:])))]


def _np_transpose(node: gs.Node, v: list) -> list:
    perm = node.attrs.get("perm")
    return [np.ascontiguousarray(np.transpose(v[0], None if perm is None else [int(p) for p in perm]))]


def _np_cast(node: gs.Node, v: list) -> list:
    to = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))
    src = v[0].dtype
    if src == to:
        return [v[0]]
    if src.kind in "iub" and to.kind in "iub":
        if src.kind != "b" and to.kind == "b":
            return [v[0] != 0]
        info = np.iinfo(to) if to.kind != "b" else None
        if info is not None and v[0].size and (v[0].min() < info.min or v[0].max() > info.max):
            raise FoldError("integer cast that wraps")
        return [v[0].astype(to)]
    if src.kind in "iub" and to in _FLOAT_EXACT:
        return [v[0].astype(to)]
    if src in _FLOAT_EXACT and to in _FLOAT_EXACT:
        return [v[0].astype(to)]
    raise FoldError("cast left to onnxruntime")


def _np_constant_of_shape(node: gs.Node, v: list) -> list:
    shape = _ints(v[0])
    value = node.attrs.get("value")
    if value is None:
        fill = np.zeros((), dtype=np.float32)
    elif not is_plain(value):
        raise FoldError("fill value of an exotic type")
    else:
        fill = load_values(value).reshape(())
    return [np.full(shape, fill, dtype=fill.dtype)]


def _np_expand(node: gs.Node, v: list) -> list:
    shape = _ints(v[1])
    out_shape = np.broadcast_shapes(v[0].shape, tuple(shape))
    return [np.ascontiguousarray(np.broadcast_to(v[0], out_shape))]


def _np_tile(node: gs.Node, v: list) -> list:
    return [np.tile(v[0], _ints(v[1]))]


def _np_range(node: gs.Node, v: list) -> list:
    start, limit, delta = (np.asarray(x).reshape(()) for x in v[:3])
    if start.dtype.kind not in "iu":
        raise FoldError("float Range left to onnxruntime")
    if int(delta) == 0:
        raise FoldError("zero delta")
    n = max(-(-(int(limit) - int(start)) // int(delta)), 0)  # exact integer ceil
    return [(int(start) + np.arange(n, dtype=start.dtype) * int(delta)).astype(start.dtype)]


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], *, floats: bool = True) -> Callable:
    def run(node: gs.Node, v: list) -> list:
        a, b = v[0], v[1]
        if a.dtype != b.dtype:
            raise FoldError("mixed dtypes")
        if a.dtype.kind not in "iu" and not (floats and a.dtype in _FLOAT_EXACT):
            raise FoldError("left to onnxruntime")
        with np.errstate(all="ignore"):
            out = fn(a, b)
        return [np.asarray(out).astype(a.dtype, copy=False)]

    return run


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        if np.any(b == 0):
            raise FoldError("integer division by zero")
        q = np.abs(a) // np.abs(b)
        return np.where((a < 0) != (b < 0), -q, q)
    return a / b


def _compare(fn: Callable) -> Callable:
    def run(node: gs.Node, v: list) -> list:
        if v[0].dtype != v[1].dtype or v[0].dtype.kind not in "biuf":
            raise FoldError("left to onnxruntime")
        return [np.asarray(fn(v[0], v[1]), dtype=np.bool_)]

    return run


def _unary_float(fn: Callable) -> Callable:
    def run(node: gs.Node, v: list) -> list:
        if v[0].dtype not in _FLOAT_EXACT:
            raise FoldError("left to onnxruntime")
        with np.errstate(all="ignore"):
            return [np.asarray(fn(v[0])).astype(v[0].dtype, copy=False)]

    return run


def _np_neg(node: gs.Node, v: list) -> list:
    if v[0].dtype.kind not in "if":
        raise FoldError("left to onnxruntime")
    return [np.negative(v[0])]


def _np_abs(node: gs.Node, v: list) -> list:
    if v[0].dtype.kind not in "iuf":
        raise FoldError("left to onnxruntime")
    return [np.abs(v[0])]


def _np_minmax(fn: Callable) -> Callable:
    def run(node: gs.Node, v: list) -> list:
        arrays = [x for x in v if x is not None]
        if any(a.dtype != arrays[0].dtype or a.dtype.kind not in "iu" for a in arrays):
            raise FoldError("left to onnxruntime")
        out = arrays[0]
        for a in arrays[1:]:
            out = fn(out, a)
        return [out]

    return run


def _np_where(node: gs.Node, v: list) -> list:
    if v[1].dtype != v[2].dtype:
        raise FoldError("mixed dtypes")
    return [np.where(v[0].astype(bool), v[1], v[2])]


def _np_not(node: gs.Node, v: list) -> list:
    return [np.logical_not(v[0])]


def _np_logical(fn: Callable) -> Callable:
    def run(node: gs.Node, v: list) -> list:
        return [fn(v[0], v[1])]

    return run


NUMPY_OPS: dict[str, Callable[[gs.Node, list], list]] = {
    "Identity": _np_identity,
    "Shape": _np_shape,
    "Size": _np_size,
    "Unsqueeze": _np_unsqueeze,
    "Squeeze": _np_squeeze,
    "Concat": _np_concat,
    "Gather": _np_gather,
    "Slice": _np_slice,
    "Reshape": _np_reshape,
    "Flatten": _np_flatten,
    "Transpose": _np_transpose,
    "Cast": _np_cast,
    "ConstantOfShape": _np_constant_of_shape,
    "Expand": _np_expand,
    "Tile": _np_tile,
    "Range": _np_range,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(_int_div),
    "Equal": _compare(np.equal),
    "Less": _compare(np.less),
    "Greater": _compare(np.greater),
    "LessOrEqual": _compare(np.less_equal),
    "GreaterOrEqual": _compare(np.greater_equal),
    "Not": _np_not,
    "And": _np_logical(np.logical_and),
    "Or": _np_logical(np.logical_or),
    "Xor": _np_logical(np.logical_xor),
    "Where": _np_where,
    "Neg": _np_neg,
    "Abs": _np_abs,
    "Sqrt": _unary_float(np.sqrt),
    "Reciprocal": _unary_float(np.reciprocal),
    "Max": _np_minmax(np.maximum),
    "Min": _np_minmax(np.minimum),
}


# --------------------------------------------------------------------------- onnxruntime evaluator


def _is_numpy_safe(arr: np.ndarray) -> bool:
    return arr.dtype.kind in _NUMPY_SAFE_KINDS


class Evaluator:
    """Evaluates one node on constant inputs: numpy where exact, else a cached one-node ORT session."""

    def __init__(self, opsets: Sequence[onnx.OperatorSetIdProto], ir_version: int | None = None):
        self.opsets = list(opsets)
        try:
            ir = onnx.helper.find_min_ir_version_for(self.opsets, ignore_unknown=True)
        except Exception:
            ir = 8
        self.ir_version = max(ir, int(ir_version or 0), 7)
        self._sessions: dict[bytes, Any] = {}
        self.stats: Counter[str] = Counter()

    @classmethod
    def for_graph(cls, graph: gs.Graph) -> Evaluator:
        from .simplify_core import _opset_imports

        return cls(_opset_imports(graph), graph.ir_version)

    def run(self, node: gs.Node, values: list[np.ndarray | None]) -> list[np.ndarray]:
        fast = NUMPY_OPS.get(node.op) if is_default_domain(node) else None
        if fast is not None and all(v is None or _is_numpy_safe(v) for v in values):
            try:
                out = fast(node, values)
                self.stats["numpy"] += 1
                return out
            except FoldError:
                pass
            except (ValueError, IndexError, TypeError, OverflowError) as exc:
                raise FoldError(f"numpy: {exc}") from None
        return self._run_ort(node, values)

    def _run_ort(self, node: gs.Node, values: list[np.ndarray | None]) -> list[np.ndarray]:
        import onnxruntime as ort

        try:
            proto = OnnxExporter.export_node(node)
        except Exception as exc:
            raise FoldError(f"cannot export node: {exc}") from None
        has_graph = bool(subgraphs_of(node))
        feeds = {}
        in_names = []
        for i, (name, v) in enumerate(zip(list(proto.input), values)):
            if not name:
                in_names.append("")
                continue
            key = name if has_graph else f"i{i}"
            in_names.append(key)
            feeds[key] = v
        out_names = [o if (has_graph or not o) else f"o{i}" for i, o in enumerate(proto.output)]
        if not has_graph:
            del proto.input[:]
            proto.input.extend(in_names)
            del proto.output[:]
            proto.output.extend(out_names)
            proto.name = ""
        dtypes = tuple((k, str(v.dtype), v.shape) for k, v in feeds.items())
        key = proto.SerializeToString() + repr(dtypes).encode()
        session = self._sessions.get(key)
        if session is None:
            inputs = []
            for k, v in feeds.items():
                try:
                    elem = onnx.helper.np_dtype_to_tensor_dtype(v.dtype)
                except Exception:
                    raise FoldError(f"unsupported input dtype {v.dtype}") from None
                inputs.append(onnx.helper.make_tensor_value_info(k, elem, list(v.shape)))
            outputs = [onnx.ValueInfoProto(name=o) for o in out_names if o]
            graph = onnx.helper.make_graph([proto], "fold", inputs, outputs)
            model = onnx.helper.make_model(graph, opset_imports=self.opsets)
            model.ir_version = self.ir_version
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 4
            try:
                session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            except Exception as exc:
                session = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            self._sessions[key] = session
            self.stats["ort_sessions"] += 1
        if isinstance(session, str):
            raise FoldError(f"onnxruntime cannot load it: {session}")
        try:
            results = session.run([o for o in out_names if o], feeds)
        except Exception as exc:
            raise FoldError(f"onnxruntime failed: {str(exc).strip().splitlines()[0][:200]}") from None
        self.stats["ort"] += 1
        out: list[np.ndarray] = []
        it = iter(results)
        for o in out_names:
            if not o:
                out.append(None)  # type: ignore[arg-type]
                continue
            r = next(it)
            if not isinstance(r, np.ndarray):
                raise FoldError("output is not a tensor")
            out.append(r)
        return out


# --------------------------------------------------------------------------- the folder


@dataclass
class FoldPolicy:
    """How much folding may grow the model (see the module docstring)."""

    #: a fold that grows the model by at most this many bytes is always fine
    max_bytes: int = 4096
    #: else its output may be at most this multiple of the constant bytes it reads (None: no guard)
    size_limit_ratio: float | None = 2.0
    #: cap on the total growth of one run (None: max(512 KB, 5% of the weights))
    growth_budget: int | None = None
    #: a fill (ConstantOfShape...) bigger than this is never built, even transiently, to fold a reader
    max_transient_bytes: int = 1 << 26

    def budget_for(self, graph: gs.Graph) -> float:
        if self.size_limit_ratio is None:
            return math.inf
        if self.growth_budget is not None:
            return float(self.growth_budget)
        total = sum(const_nbytes(t) for g in all_graphs(graph) for t in g.tensors().values()
                    if isinstance(t, gs.Constant))
        return float(max(512 * 1024, total // 20))


def _input_value(t: gs.Tensor) -> np.ndarray:
    """A constant's value, or a fill built (transiently) from its fill value and shape."""
    if isinstance(t, gs.Constant):
        return load_values(t)
    fill = splat(t)
    assert fill is not None
    return np.full(fill[1], fill[0], dtype=fill[0].dtype)


def _unique_nodes(nodes: Sequence[gs.Node]) -> list[gs.Node]:
    seen: set[int] = set()
    return [n for n in nodes if not (id(n) in seen or seen.add(id(n)))]


def _unique(tensors: Sequence[gs.Tensor]) -> list[gs.Tensor]:
    seen: set[int] = set()
    out = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def foreign_inputs(sub: gs.Graph) -> list[gs.Tensor]:
    """Non-constant tensors a subgraph (and its nested subgraphs) reads from enclosing scopes."""
    local: set[int] = set()
    for g in all_graphs(sub):
        local |= {id(t) for t in g.inputs}
        for n in g.nodes:
            local |= {id(t) for t in n.outputs}
    out = []
    for g in all_graphs(sub):
        for n in g.nodes:
            for t in n.inputs:
                if t.name and id(t) not in local and not isinstance(t, gs.Constant):
                    out.append(t)
        for t in g.outputs:
            if id(t) not in local and not isinstance(t, gs.Constant):
                out.append(t)
    return _unique(out)


class Folder:
    """Folds constants in a graph and its subgraphs; one instance per pass run (it owns the budget)."""

    def __init__(
        self,
        graph: gs.Graph,
        policy: FoldPolicy | None = None,
        *,
        shapes: ShapeInfo | None = None,
        sym: SymValues | None = None,
        names: NameGen | None = None,
        evaluator: Evaluator | None = None,
        fold_subgraphs: bool = True,
        inline_if: bool = True,
    ):
        self.graph = graph
        self.policy = policy or FoldPolicy()
        self.shapes = shapes if shapes is not None else ShapeInfo(graph)
        self.sym = sym if sym is not None else SymValues(self.shapes)
        self.names = names if names is not None else NameGen(graph)
        self.evaluator = evaluator if evaluator is not None else Evaluator.for_graph(graph)
        self.fold_subgraphs = fold_subgraphs
        self.inline_if = inline_if
        self.budget = self.policy.budget_for(graph)
        self.stats: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self._outputs: set[int] = set()
        self._inputs: set[int] = set()

    # ------------------------------------------------------------------ driver

    def run(self) -> int:
        """Fold everything foldable once over all graphs; returns the number of changes."""
        before = sum(self.stats.values())
        self._outputs = {id(t) for g in all_graphs(self.graph) for t in g.outputs}
        self._inputs = {id(t) for g in all_graphs(self.graph) for t in g.inputs}
        self._fold_graph(self.graph)
        return sum(self.stats.values()) - before

    def _fold_graph(self, g: gs.Graph) -> None:
        if not toposort_graph(g):
            log.debug("graph %r not folded: it has a cycle", g.name)
            return
        removed: set[int] = set()
        i = 0
        while i < len(g.nodes):
            node = g.nodes[i]
            i += 1
            if id(node) in removed or not node.outputs:
                continue
            if node.op == "If" and is_default_domain(node) and self.inline_if:
                inlined = self._inline_if(g, node, i - 1)
                if inlined is not None:
                    removed.add(id(node))
                    # the branch's nodes now sit where the If was: visit them next
                    i = i - 1
                    continue
            if self.fold_subgraphs:
                for sub in subgraphs_of(node):
                    self._fold_graph(sub)
            reason = self.try_fold(node)
            if reason is None:
                removed.add(id(node))
                continue
            self.sym.visit(node)
            if self._fold_symbolic(node):
                removed.add(id(node))
        if removed:
            g.nodes = [n for n in g.nodes if id(n) not in removed]

    # ------------------------------------------------------------------ one node

    def foldable(self, node: gs.Node) -> str | None:
        """None when ``node`` may be evaluated now, else the reason it may not."""
        if node.op in NEVER_FOLD:
            return "never folded"
        if node.op in NOT_TENSOR_OPS:
            return "not a tensor op"
        if not any(t.name for t in node.inputs):
            return "no inputs"
        for t in node.inputs:
            if not t.name or isinstance(t, gs.Constant):
                continue
            fill = splat(t)
            if fill is None:
                return "depends on a non-constant input"
            if int(np.prod(fill[1], dtype=np.int64)) * fill[0].itemsize > self.policy.max_transient_bytes:
                return "reads a fill too big to build even transiently"
        if any(isinstance(t, gs.Constant) and not is_plain(t) for t in node.inputs):
            return "an input's element type has no exact numpy form (strings, 4-bit, float8)"
        if (node.op == "Dropout" and len(node.inputs) > 2 and node.inputs[2].name
                and bool(load_values(node.inputs[2]).any())):
            return "training-mode Dropout is random"
        for sub in subgraphs_of(node):
            if foreign_inputs(sub):
                return "its body reads a non-constant outer value"
        if any(id(t) in self._inputs for t in node.outputs):
            return "writes a graph input"
        return None

    def try_fold(self, node: gs.Node) -> str | None:
        """Evaluate ``node`` and turn its outputs into constants. None on success, else the reason."""
        reason = self.foldable(node)
        if reason is not None:
            return reason
        values = [_input_value(t) if t.name else None for t in node.inputs]
        predicted = self._predict_bytes(node, values)
        if predicted is not None:
            reason = self._check_size(node, predicted, dry_run=True)
            if reason is not None:
                return self._refuse(node, reason)
        try:
            outputs = self.evaluator.run(node, values)
        except FoldError as exc:
            log.debug("%s %r not folded: %s", node.op, node.name, exc)
            return str(exc)
        if len(outputs) != len(node.outputs):
            return "output count mismatch"
        for t, v in zip(node.outputs, outputs):
            if t.name and v is None:
                return "an output is missing"
            if t.name and (v.dtype == object or v.dtype.kind not in "biufc"):
                return "strings and exotic types are not stored as initializers"
        out_bytes = sum(int(v.nbytes) for t, v in zip(node.outputs, outputs) if t.name and v is not None)
        reason = self._check_size(node, out_bytes, dry_run=False)
        if reason is not None:
            return self._refuse(node, reason)
        self._replace_with_constants(node, outputs)
        self.stats[node.op] += 1
        return None

    def _refuse(self, node: gs.Node, reason: str) -> str:
        self.refused[node.op] += 1
        log.debug("%s %r not folded: %s", node.op, node.name, reason)
        return reason

    def _fold_symbolic(self, node: gs.Node) -> bool:
        """Fold a node whose output's value is fully known from shapes (e.g. Shape of a static tensor)."""
        if len(node.outputs) != 1 or node.op in NEVER_FOLD or not is_default_domain(node):
            return False
        out = node.outputs[0]
        if not self.sym.fully_known(out) or id(out) in self._inputs:
            return False
        val = self.sym.get(out)
        assert val is not None
        dtype = self.shapes.dtype(out)
        if node.op in ("Shape", "Size"):
            dtype = np.dtype(np.int64)
        if dtype is None:
            return False
        self._replace_with_constants(node, [materialize(val, dtype)])
        self.stats[f"{node.op}(shape)"] += 1
        return True

    def _replace_with_constants(self, node: gs.Node, outputs: list[np.ndarray]) -> None:
        tensors = list(node.outputs)
        node.outputs.clear()
        node.inputs.clear()
        for t, v in zip(tensors, outputs):
            if not t.name:
                continue
            v = np.asarray(v)
            want = self.shapes.dtype(t)
            if want is not None and want != v.dtype and want.kind in "biuf" and v.dtype.kind in "biuf":
                v = v.astype(want)
            t.to_constant(np.ascontiguousarray(v) if v.ndim else v)

    # ------------------------------------------------------------------ size guard

    def _predict_bytes(self, node: gs.Node, values: list[np.ndarray | None]) -> int | None:
        total = 0
        for t in node.outputs:
            if not t.name:
                continue
            shape = self.shapes.static_shape(t)
            dtype = self.shapes.dtype(t)
            if shape is None or dtype is None:
                break
            total += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        else:
            return total
        if node.op not in EXPANDING_OPS or not is_default_domain(node):
            return None
        try:
            if node.op == "ConstantOfShape":
                value = node.attrs.get("value")
                dt = const_dtype(value) if value is not None else np.dtype(np.float32)
                item = dt.itemsize if dt is not None else 4
                return int(np.prod(_ints(values[0]), dtype=np.int64)) * item
            if node.op == "Expand":
                shape = np.broadcast_shapes(values[0].shape, tuple(_ints(values[1])))
                return int(np.prod(shape, dtype=np.int64)) * values[0].itemsize
            if node.op == "Tile":
                return values[0].nbytes * int(np.prod(_ints(values[1]), dtype=np.int64))
            if node.op == "Range":
                start, limit, delta = (float(np.asarray(x).reshape(())) for x in values[:3])
                n = max(math.ceil((limit - start) / delta), 0) if delta else 0
                return n * values[0].itemsize
        except Exception:
            return None
        return None

    def _check_size(self, node: gs.Node, out_bytes: int, *, dry_run: bool) -> str | None:
        """Growth = output bytes - bytes of constant inputs nothing else reads (fills read count 0:
        they cost a shape and a scalar). Small growth is fine; else the output must not be more than
        ``size_limit_ratio`` x the constant bytes read, within the run's growth budget."""
        pol = self.policy
        if pol.size_limit_ratio is None:
            return None
        inputs = [t for t in _unique(node.inputs) if isinstance(t, gs.Constant)]
        in_bytes = sum(const_nbytes(t) for t in inputs)
        growth = out_bytes - sum(self._freed_share(t, node) for t in inputs)
        if growth > pol.max_bytes:
            if out_bytes > pol.size_limit_ratio * in_bytes:
                return (f"output of {out_bytes} bytes is more than {pol.size_limit_ratio:g}x the {in_bytes} "
                        "constant bytes it reads")
            if growth > self.budget:
                return f"would grow the model by {growth} bytes; growth budget left {int(self.budget)}"
        if not dry_run and growth > 0:
            self.budget -= growth
        return None

    def _freed_share(self, t: gs.Constant, node: gs.Node) -> float:
        """The part of constant ``t`` that folding ``node`` frees: all of it when ``node`` is its only
        reader, an equal share when every reader can be folded too (slices of one weight), else 0."""
        if id(t) in self._outputs:
            return 0.0
        readers = _unique_nodes(t.outputs)
        if len(readers) <= 1:
            return float(const_nbytes(t))
        if all(r is node or self._could_fold(r) for r in readers):
            return const_nbytes(t) / len(readers)
        return 0.0

    def _could_fold(self, node: gs.Node) -> bool:
        return (node.op not in NEVER_FOLD and node.op not in NOT_TENSOR_OPS and not subgraphs_of(node)
                and all(not t.name or isinstance(t, gs.Constant) for t in node.inputs))

    def allow_growth(self, growth: int) -> bool:
        """For rewrites that materialize new weights: take ``growth`` bytes from the budget if possible."""
        if growth <= self.policy.max_bytes or self.policy.size_limit_ratio is None:
            return True
        if growth > self.budget:
            return False
        self.budget -= growth
        return True

    # ------------------------------------------------------------------ If with a constant condition

    def _inline_if(self, g: gs.Graph, node: gs.Node, index: int) -> list[gs.Node] | None:
        cond = node.inputs[0] if node.inputs else None
        if cond is None or not isinstance(cond, gs.Constant):
            return None
        arr = const_value(cond)
        if arr is None or arr.size != 1:
            return None
        branch = node.attrs.get("then_branch" if bool(arr.reshape(-1)[0]) else "else_branch")
        if not isinstance(branch, gs.Graph) or len(branch.outputs) != len(node.outputs):
            return None
        new_nodes = inline_branch(self.graph, g, node, branch, self.names)
        g.nodes[index:index + 1] = new_nodes
        self.stats["If(inlined)"] += 1
        return new_nodes


def inline_branch(top: gs.Graph, g: gs.Graph, node: gs.Node, branch: gs.Graph, names: NameGen) -> list[gs.Node]:
    """Move ``branch``'s nodes into ``g`` in place of the If ``node``; returns them (caller splices).

    Branch-local names that clash with names elsewhere are renamed; the If's output tensors keep their
    names (a graph output stays a graph output): the branch node producing a branch output writes the
    If's output tensor instead, and outer values / constants reach it through an Identity.
    """
    branch_ids = {id(sg) for sg in all_graphs(branch)}
    local_tensors: dict[int, gs.Tensor] = {}
    for sg in all_graphs(branch):
        for n in sg.nodes:
            for t in list(n.inputs) + list(n.outputs):
                local_tensors[id(t)] = t
        for t in sg.outputs:
            local_tensors[id(t)] = t
    produced = {id(t) for n in branch.nodes for t in n.outputs}
    outside_ids: set[int] = set()
    outside_names: set[str] = set()
    node_names: set[str] = set()
    for sg in all_graphs(top):
        if id(sg) in branch_ids:
            continue
        ts = [t for n in sg.nodes if n is not node for t in list(n.inputs) + list(n.outputs)]
        ts += list(sg.inputs) + list(sg.outputs)
        outside_ids |= {id(t) for t in ts}
        outside_names |= {t.name for t in ts}
        node_names |= {n.name for n in sg.nodes if n.name and n is not node}
    for t in local_tensors.values():
        if id(t) not in outside_ids and t.name and t.name in outside_names:
            t.name = names(t.name)
    for sg in all_graphs(branch):
        for n in sg.nodes:
            if n.name and n.name in node_names:
                n.name = names(n.name)

    new_nodes = list(branch.nodes)
    extra: list[gs.Node] = []
    if_outs = list(node.outputs)
    br_outs = list(branch.outputs)
    node.outputs.clear()
    node.inputs.clear()
    claimed: dict[int, gs.Tensor] = {}
    for if_out, br_out in zip(if_outs, br_outs):
        producer = br_out.inputs[0] if (id(br_out) in produced and br_out.inputs) else None
        if producer is not None and id(br_out) not in claimed:
            claimed[id(br_out)] = if_out
            # the branch producer writes the If's output tensor directly (keeps the outer name)
            for i, t in enumerate(producer.outputs):
                if t is br_out:
                    producer.outputs[i] = if_out
            replace_all_uses(branch, br_out, if_out)
            for n in new_nodes:
                for i, t in enumerate(n.inputs):
                    if t is br_out:
                        n.inputs[i] = if_out
            continue
        # the branch returns an outer value, a constant, or a value already returned: forward it
        src = claimed.get(id(br_out), br_out)
        extra.append(gs.Node("Identity", name=names(f"{if_out.name}_identity"), inputs=[src], outputs=[if_out]))
    branch.nodes = []
    return new_nodes + extra


# --------------------------------------------------------------------------- the pass


class FoldConstants(Pass):
    """Evaluate every node that does not depend on a graph input; inline If with constant conditions.

    Options: ``max_bytes`` (growth always allowed per fold, 4 KB), ``size_limit_ratio`` (a bigger
    fold may output at most this multiple of the constant bytes it reads; None disables the guard),
    ``growth_budget`` (total bytes one run may add; default max(512 KB, 5% of the weights)),
    ``fold_subgraphs`` and ``inline_if``. Stats: ``folded`` (op -> count), ``refused_for_size``.
    """

    name = "fold-constants"
    kind = Kind.NUMERIC

    def __init__(
        self,
        *,
        max_bytes: int = 4096,
        size_limit_ratio: float | None = 2.0,
        growth_budget: int | None = None,
        fold_subgraphs: bool = True,
        inline_if: bool = True,
    ):
        self.policy = FoldPolicy(max_bytes=max_bytes, size_limit_ratio=size_limit_ratio, growth_budget=growth_budget)
        self.fold_subgraphs = fold_subgraphs
        self.inline_if = inline_if

    def run(self, graph: gs.Graph, context: PassContext) -> PassResult:
        from .canonicalize import lift_constants

        lifted = lift_constants(graph)
        folder = Folder(graph, self.policy, fold_subgraphs=self.fold_subgraphs, inline_if=self.inline_if)
        changed = folder.run()
        if changed or lifted:
            graph.cleanup(remove_unused_node_outputs=False, recurse_subgraphs=True, remove_unused_graph_inputs=False)
            graph.toposort()
        stats = {
            "folded": dict(folder.stats),
            "constants_lifted": lifted,
            "refused_for_size": dict(folder.refused),
            "evaluations": dict(folder.evaluator.stats),
        }
        return PassResult(modified=bool(changed or lifted), stats=stats)
