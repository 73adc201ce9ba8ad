"""Shared machinery of the simplifier: shape facts, symbolic shape values and a static-expression builder.

Nothing here rewrites a graph on its own; :mod:`fold_constants`, :mod:`simplify_rules`,
:mod:`fuse_linear` and :mod:`simplify` build on it.

- :class:`ShapeInfo` answers "what is the shape / dtype of this tensor" from a side table filled by
  ONNX shape inference on a weight-less skeleton of the graph (so big weights are never copied), and
  falls back to the shapes the tensors already carry. It never writes to the graph: a pass that
  changes nothing leaves the tensors' metadata untouched too.
- Dims are ``int`` (known), ``str`` (a trusted symbolic name from the model or from shape
  inference: equal names are equal sizes) or an opaque tuple (unknown; equal only to itself).
  Names an exporter reuses for different dims (``?``, ``-1``, or a name twice in one shape) are not
  trusted.
- :class:`SymValues` tracks the values of small integer tensors built from shapes
  (Shape -> Gather -> Unsqueeze -> Concat chains) as tuples of such dims, so that a Reshape whose
  target is computed from its own input's shape can get a constant target, and a partially static
  shape can be folded where the selected entries are known.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from .graph_utils import all_graphs, peek_values, tensor_dtype

log = logging.getLogger(__name__)

Dim = int | str | tuple
#: a symbolic value: entries and whether the tensor is a scalar (rank 0) rather than 1-D
SymVal = tuple[tuple[Any, ...], bool]

DEFAULT_DOMAINS = ("", "ai.onnx", None)
#: symbolic dim names exporters use for "unknown" (the same name does not mean the same size)
UNTRUSTED_PARAMS = frozenset({"", "?", "-1", "None", "none", "N/A", "unk", "unknown", "dynamic", "Dynamic"})
#: largest constant copied into the shape-inference skeleton (bigger ones become typed inputs)
SKELETON_CONST_LIMIT = 1024
#: longest integer tensor tracked symbolically
SYM_MAX_LEN = 16


class IdMap:
    """A dict keyed by object identity that keeps its keys alive (graphsurgeon objects are unhashable,
    and a bare ``id()`` key could be reused by a new tensor once the old one is garbage collected)."""

    def __init__(self) -> None:
        self._d: dict[int, tuple[Any, Any]] = {}

    def get(self, obj: Any, default: Any = None) -> Any:
        entry = self._d.get(id(obj))
        return entry[1] if entry is not None and entry[0] is obj else default

    def __setitem__(self, obj: Any, value: Any) -> None:
        self._d[id(obj)] = (obj, value)

    def __getitem__(self, obj: Any) -> Any:
        entry = self._d[id(obj)]
        if entry[0] is not obj:
            raise KeyError(obj)
        return entry[1]

    def __contains__(self, obj: Any) -> bool:
        entry = self._d.get(id(obj))
        return entry is not None and entry[0] is obj

    def __len__(self) -> int:
        return len(self._d)


def is_default_domain(node: gs.Node) -> bool:
    return node.domain in DEFAULT_DOMAINS


def peek(t: gs.Constant) -> Any:
    """A constant's values object *without loading it*: graphsurgeon replaces lazily-imported values by
    a numpy copy on first ``.values`` access, and some types (strings, 4-bit, float8) cannot be
    exported again once converted. Everything that only needs dtype/shape goes through here."""
    v = getattr(t, "_values", None)
    return v if v is not None else t.values


def const_dtype(t: gs.Constant) -> np.dtype | None:
    """The numpy dtype of a constant, or None for element types numpy has no exact equivalent of."""
    dt = getattr(peek(t), "dtype", None)
    if not isinstance(dt, np.dtype):
        return None
    ed = getattr(t, "_export_dtype", None)
    if ed is not None:
        try:
            ed = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(ed)) if isinstance(ed, int) else np.dtype(ed)
        except (TypeError, KeyError, ValueError):
            return None
        if ed != dt:
            return None
    return dt


def is_plain(t: gs.Tensor) -> bool:
    """A constant numpy represents exactly (bool, ints, floats, complex): safe to read and rewrite."""
    if not isinstance(t, gs.Constant):
        return False
    dt = const_dtype(t)
    return dt is not None and dt.kind in "biufc"


#: a constant's values, read without caching them in the tensor: graphsurgeon keeps a loaded copy
#: forever once ``.values`` is touched, which would double the memory a big model needs
load_values = peek_values


def const_bytes(t: gs.Constant) -> bytes:
    """A constant's data as bytes, with one copy: straight from the TensorProto's raw_data when the
    constant still refers to it (a numpy round trip would copy a large weight three times)."""
    v = peek(t)
    tensor = getattr(v, "tensor", None)
    if isinstance(tensor, onnx.TensorProto) and tensor.HasField("raw_data") and sys.byteorder == "little":
        return tensor.raw_data
    return np.ascontiguousarray(load_values(t)).tobytes()


def const_value(t: gs.Tensor | None) -> np.ndarray | None:
    """The value of a plain constant (see :func:`is_plain`), else None (read-only use: not cached)."""
    if t is None or not is_plain(t):
        return None
    return load_values(t)


def const_nbytes(t: gs.Constant) -> int:
    """Bytes of a constant without loading lazily-imported values."""
    v = peek(t)
    try:
        return int(np.prod(v.shape, dtype=np.int64)) * np.dtype(v.dtype).itemsize
    except TypeError:
        return int(getattr(v, "nbytes", 0) or 0)


def const_shape(t: gs.Constant) -> tuple[int, ...]:
    return tuple(int(d) for d in peek(t).shape)


def attr_int(node: gs.Node, name: str, default: int) -> int:
    v = node.attrs.get(name, default)
    return default if v is None else int(v)


def subgraphs_of(node: gs.Node) -> list[gs.Graph]:
    out = []
    for v in node.attrs.values():
        if isinstance(v, gs.Graph):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out.extend(x for x in v if isinstance(x, gs.Graph))
    return out


def rewire(old: gs.Tensor, new: gs.Tensor, graphs: Sequence[gs.Graph]) -> None:
    """Every reader of ``old`` (in any graph: graphsurgeon links subgraph readers too) reads ``new``;
    graph-output slots holding ``old`` in ``graphs`` hold ``new``."""
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new
    for g in graphs:
        for i, t in enumerate(g.outputs):
            if t is old:
                g.outputs[i] = new


def toposort_graph(g: gs.Graph) -> bool:
    """Stable topological sort of one graph's nodes (subgraph reads of outer values count as inputs).

    Returns False (and leaves the order) when the graph has a cycle.
    """
    producer: dict[int, int] = {}
    for idx, n in enumerate(g.nodes):
        for t in n.outputs:
            producer[id(t)] = idx
    deps: list[list[int]] = []
    for idx, n in enumerate(g.nodes):
        ts = list(n.inputs)
        for sub in subgraphs_of(n):
            for sg in _all_graphs(sub):
                for m in sg.nodes:
                    ts.extend(m.inputs)
                ts.extend(sg.outputs)
        deps.append(sorted({producer[id(t)] for t in ts if id(t) in producer and producer[id(t)] != idx}))
    order: list[int] = []
    state = [0] * len(g.nodes)  # 0 new, 1 on stack, 2 done
    for root in range(len(g.nodes)):
        if state[root]:
            continue
        stack = [(root, 0)]
        state[root] = 1
        while stack:
            idx, k = stack[-1]
            if k < len(deps[idx]):
                stack[-1] = (idx, k + 1)
                d = deps[idx][k]
                if state[d] == 1:
                    return False
                if state[d] == 0:
                    state[d] = 1
                    stack.append((d, 0))
            else:
                stack.pop()
                state[idx] = 2
                order.append(idx)
    if order != list(range(len(g.nodes))):
        nodes = list(g.nodes)
        g.nodes = [nodes[i] for i in order]
    return True


def _all_graphs(graph: gs.Graph) -> Iterable[gs.Graph]:
    return all_graphs(graph)


def is_graph_output_anywhere(graph: gs.Graph, t: gs.Tensor) -> bool:
    return any(any(o is t for o in g.outputs) for g in all_graphs(graph))


def is_graph_input_anywhere(graph: gs.Graph, t: gs.Tensor) -> bool:
    return any(any(i is t for i in g.inputs) for g in all_graphs(graph))


# --------------------------------------------------------------------------- lazy fills

#: the largest constant scanned to see whether all its elements are equal
_SPLAT_SCAN = 64


def _splat_source(t: gs.Tensor, depth: int) -> tuple[np.ndarray, tuple[int, ...]] | None:
    if isinstance(t, gs.Constant):
        if not is_plain(t) or const_nbytes(t) > _SPLAT_SCAN * 8:
            return None
        v = load_values(t)
        if v.size == 0 or not np.all(v == v.reshape(-1)[0]) or np.isnan(v.reshape(-1)[0]).any():
            return None
        return v.reshape(-1)[0].reshape(()).copy(), tuple(v.shape)
    return splat(t, depth + 1)


def splat(t: gs.Tensor, depth: int = 0) -> tuple[np.ndarray, tuple[int, ...]] | None:
    """``(fill, shape)`` when ``t`` is a fill computed from constants (ConstantOfShape, and Reshape /
    (Un)Squeeze / Flatten / Expand / Identity of one): its value is known without building it.
    Light exports (and some real ones) keep weights as such fills."""
    if depth > 32 or isinstance(t, gs.Constant) or len(t.inputs) != 1:
        return None
    p = t.inputs[0]
    if not is_default_domain(p) or len(p.outputs) != 1:
        return None
    try:
        if p.op == "ConstantOfShape":
            shape = _const_ints(p.inputs[0]) if p.inputs else None
            if shape is None or any(d < 0 for d in shape):
                return None
            value = p.attrs.get("value")
            if value is None:
                return np.zeros((), np.float32), tuple(shape)
            if not is_plain(value):
                return None
            return load_values(value).reshape(()).copy(), tuple(shape)
        if p.op not in ("Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand"):
            return None
        src = _splat_source(p.inputs[0], depth)
        if src is None:
            return None
        fill, shape = src
        if p.op == "Identity":
            return fill, shape
        if p.op == "Reshape":
            target = _const_ints(p.inputs[1]) if len(p.inputs) > 1 else None
            if target is None:
                return None
            out = _reshape_shape(shape, target, attr_int(p, "allowzero", 0))
            return None if out is None else (fill, out)
        if p.op == "Flatten":
            axis = attr_int(p, "axis", 1)
            axis = axis + len(shape) if axis < 0 else axis
            return fill, (int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64)))
        if p.op == "Expand":
            target = _const_ints(p.inputs[1]) if len(p.inputs) > 1 else None
            if target is None:
                return None
            return fill, tuple(int(d) for d in np.broadcast_shapes(shape, tuple(target)))
        axes = [int(a) for a in p.attrs["axes"]] if "axes" in p.attrs else (
            _const_ints(p.inputs[1]) if len(p.inputs) > 1 and p.inputs[1].name else None)
        if p.op == "Unsqueeze":
            if axes is None:
                return None
            rank = len(shape) + len(axes)
            axes = sorted(a + rank if a < 0 else a for a in axes)
            out = list(shape)
            for a in axes:
                out.insert(a, 1)
            return fill, tuple(out)
        # Squeeze
        if axes is None:
            return fill, tuple(d for d in shape if d != 1)
        axes = [a + len(shape) if a < 0 else a for a in axes]
        if any(shape[a] != 1 for a in axes):
            return None
        return fill, tuple(d for i, d in enumerate(shape) if i not in axes)
    except (ValueError, IndexError, TypeError):
        return None


def _const_ints(t: gs.Tensor) -> list[int] | None:
    v = const_value(t) if t is not None and t.name else None
    if v is None or v.dtype.kind not in "iu" or v.ndim > 1 or v.size > 64:
        return None
    return [int(x) for x in v.reshape(-1)]


def _reshape_shape(shape: tuple[int, ...], target: list[int], allowzero: int) -> tuple[int, ...] | None:
    out = [shape[i] if (d == 0 and not allowzero and i < len(shape)) else d for i, d in enumerate(target)]
    if out.count(-1) > 1:
        return None
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        total = int(np.prod(shape, dtype=np.int64))
        if known == 0 or total % known:
            return None
        out[out.index(-1)] = total // known
    if int(np.prod(out, dtype=np.int64)) != int(np.prod(shape, dtype=np.int64)):
        return None
    return tuple(out)


def known_value(t: gs.Tensor | None) -> np.ndarray | None:
    """A tensor's value when known without computing anything big: a plain constant, or a fill
    (see :func:`splat`) returned as a read-only broadcast view that is never materialized."""
    if t is None or not t.name:
        return None
    if isinstance(t, gs.Constant):
        return const_value(t)
    s = splat(t)
    if s is None:
        return None
    return np.broadcast_to(s[0], s[1])


# --------------------------------------------------------------------------- shapes


def _vi_type(vi: onnx.ValueInfoProto) -> tuple[np.dtype | None, tuple | None]:
    if not vi.type.HasField("tensor_type"):
        return None, None
    tt = vi.type.tensor_type
    dtype = None
    if tt.elem_type:
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except (KeyError, TypeError, ValueError):
            dtype = None
    if not tt.HasField("shape"):
        return dtype, None
    dims: list[Any] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value) if d.dim_value >= 0 else None)
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dtype, tuple(dims)


def _iter_value_infos(graph: onnx.GraphProto) -> Iterable[onnx.ValueInfoProto]:
    yield from graph.value_info
    yield from graph.output
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _iter_value_infos(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from _iter_value_infos(sub)


def _opset_imports(graph: gs.Graph) -> list[onnx.OperatorSetIdProto]:
    imports = {}
    for d in graph.import_domains or []:
        imports[d.domain] = d.version
    if "" not in imports and "ai.onnx" not in imports:
        imports[""] = int(graph.opset)
    return [onnx.helper.make_opsetid(d, v) for d, v in imports.items()]


def skeleton_model(graph: gs.Graph) -> onnx.ModelProto:
    """The graph as a ModelProto in which big constants are typed graph inputs (for shape inference)."""
    nodes = [OnnxExporter.export_node(n) for n in graph.nodes]
    inputs = [OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.inputs]
    inits = []
    seen = {t.name for t in graph.inputs}
    for node in graph.nodes:
        for t in node.inputs:
            if not isinstance(t, gs.Constant) or t.name in seen:
                continue
            seen.add(t.name)
            dt = const_dtype(t)
            if const_nbytes(t) <= SKELETON_CONST_LIMIT and is_plain(t):
                inits.append(OnnxExporter.export_tensor_proto(t))
            elif dt is not None:
                elem = onnx.helper.np_dtype_to_tensor_dtype(dt)
                inputs.append(onnx.helper.make_tensor_value_info(t.name, elem, list(const_shape(t))))
            else:
                raw = peek(t)
                elem = raw.tensor.data_type if hasattr(raw, "tensor") else onnx.TensorProto.UNDEFINED
                inputs.append(onnx.helper.make_tensor_value_info(t.name, elem, list(const_shape(t))))
    outputs = []
    for t in graph.outputs:
        if isinstance(t, gs.Constant):
            outputs.append(onnx.ValueInfoProto(name=t.name))
        else:
            outputs.append(OnnxExporter.export_value_info_proto(t, do_type_check=False))
    g = onnx.helper.make_graph(nodes, graph.name or "skeleton", inputs, outputs, inits)
    opsets = _opset_imports(graph)
    model = onnx.helper.make_model(g, opset_imports=opsets)
    try:
        model.ir_version = onnx.helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    except Exception:  # unknown domain/version: any recent IR is fine for inference
        model.ir_version = 8
    model.ir_version = max(model.ir_version, int(graph.ir_version or 0), 7)
    return model


class ShapeInfo:
    """Shapes and dtypes of tensors, from shape inference on a skeleton, without touching the graph."""

    def __init__(self, graph: gs.Graph, *, infer: bool = True):
        self._shapes = IdMap()
        self._dtypes = IdMap()
        self._alive = IdMap()
        self.untrusted: set[str] = set(UNTRUSTED_PARAMS)
        self._collect_untrusted(graph)
        if infer:
            self.refresh(graph)

    def _collect_untrusted(self, graph: gs.Graph) -> None:
        for g in all_graphs(graph):
            for t in list(g.inputs) + list(g.outputs):
                if t.shape is None:
                    continue
                names = [d for d in t.shape if isinstance(d, str)]
                self.untrusted |= {n for n in names if names.count(n) > 1}

    def refresh(self, graph: gs.Graph) -> bool:
        """Re-run shape inference on the current graph. False when inference failed (table unchanged)."""
        try:
            model = skeleton_model(graph)
            inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
        except Exception as exc:  # inference is a best effort; shapes already on the tensors remain
            log.debug("shape inference failed: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return False
        infos: dict[str, tuple] = {}
        dup: set[str] = set()
        for vi in _iter_value_infos(inferred.graph):
            if vi.name in infos:
                dup.add(vi.name)
            infos[vi.name] = _vi_type(vi)
        for g in all_graphs(graph):
            for t in g.tensors().values():
                if isinstance(t, gs.Constant) or t.name in dup or t.name not in infos:
                    continue
                dtype, shape = infos[t.name]
                if dtype is not None:
                    self._dtypes[t] = dtype
                if shape is not None:
                    old = self._shapes.get(t, t.shape)
                    if old is None or len(old) != len(shape) or _known(shape) >= _known(old):
                        self._shapes[t] = shape
        return True

    def raw_shape(self, t: gs.Tensor) -> tuple | None:
        if isinstance(t, gs.Constant):
            return const_shape(t)
        shape = self._shapes.get(t, None)
        if shape is None:
            shape = None if t.shape is None else tuple(t.shape)
        return shape

    def shape(self, t: gs.Tensor) -> tuple[Dim, ...] | None:
        """Dims as int (known), trusted str names, or opaque tuples unique to (tensor, axis)."""
        shape = self.raw_shape(t)
        if shape is None:
            return None
        out: list[Dim] = []
        for i, d in enumerate(shape):
            if isinstance(d, (int, np.integer)) and d >= 0:
                out.append(int(d))
            elif isinstance(d, str) and d not in self.untrusted:
                out.append(d)
            else:
                self._alive[t] = True  # the symbol embeds id(t): keep t alive so the id is never reused
                out.append(("dim", id(t), i))
        return tuple(out)

    def rank(self, t: gs.Tensor) -> int | None:
        shape = self.raw_shape(t)
        return None if shape is None else len(shape)

    def static_shape(self, t: gs.Tensor) -> tuple[int, ...] | None:
        shape = self.shape(t)
        if shape is None or not all(isinstance(d, int) for d in shape):
            return None
        return tuple(shape)  # type: ignore[arg-type]

    def dtype(self, t: gs.Tensor) -> np.dtype | None:
        if isinstance(t, gs.Constant):
            return const_dtype(t)
        dt = tensor_dtype(t)
        return dt if dt is not None else self._dtypes.get(t)

    def set(self, t: gs.Tensor, shape: tuple | None, dtype: np.dtype | None) -> None:
        """Record facts about a tensor a rewrite created."""
        if shape is not None:
            self._shapes[t] = tuple(shape)
        if dtype is not None:
            self._dtypes[t] = np.dtype(dtype)


def _known(shape: Sequence) -> int:
    return sum(1 for d in shape if isinstance(d, (int, np.integer, str)))


def broadcast_dims(a: Sequence[Dim], b: Sequence[Dim]) -> tuple[Dim, ...] | None:
    """Numpy-style broadcast of two symbolic shapes; None when it cannot be decided."""
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    out: list[Dim] = []
    for x, y in zip(a, b):
        if x == 1:
            out.append(y)
        elif y == 1 or x == y:
            out.append(x)
        else:
            return None
    return tuple(out)


def broadcast_keeps(x_shape: Sequence[Dim] | None, c_shape: Sequence[int]) -> bool:
    """True when broadcasting a tensor of ``c_shape`` against ``x_shape`` leaves ``x_shape`` unchanged."""
    if x_shape is None or len(c_shape) > len(x_shape):
        return False
    return all(cd == 1 or xd == cd for xd, cd in zip(reversed(x_shape), reversed(c_shape)))


# --------------------------------------------------------------------------- symbolic values


def _opaque(t: gs.Tensor, i: int) -> tuple:
    return ("val", id(t), i)


def is_known(v: Any) -> bool:
    return isinstance(v, (int, np.integer, bool, np.bool_))


def _int_list(arr: np.ndarray) -> list[int] | None:
    if arr.dtype.kind not in "iub" or arr.ndim > 1 or arr.size > SYM_MAX_LEN:
        return None
    return [int(x) for x in arr.reshape(-1)]


class SymValues:
    """Symbolic values of small integer tensors, keyed by ``id(tensor)`` (facts survive rewrites)."""

    def __init__(self, shapes: ShapeInfo):
        self.shapes = shapes
        self.values = IdMap()

    def get(self, t: gs.Tensor) -> SymVal | None:
        if isinstance(t, gs.Constant):
            if const_nbytes(t) > SYM_MAX_LEN * 8 or not is_plain(t):
                return None
            arr = load_values(t)
            vals = _int_list(arr)
            return None if vals is None else (tuple(vals), arr.ndim == 0)
        return self.values.get(t)

    def fully_known(self, t: gs.Tensor) -> bool:
        v = self.get(t)
        return v is not None and all(is_known(x) for x in v[0])

    def visit(self, node: gs.Node) -> None:
        """Compute the symbolic values of ``node``'s outputs from its inputs (no-op when unknown)."""
        if not is_default_domain(node) or len(node.outputs) != 1:
            return
        handler = _SYM_OPS.get(node.op)
        if handler is None:
            return
        try:
            result = handler(self, node)
        except (IndexError, ValueError, TypeError, KeyError):
            result = None
        if result is not None and len(result[0]) <= SYM_MAX_LEN:
            self.values[node.outputs[0]] = result

    def const_ints(self, t: gs.Tensor | None) -> list[int] | None:
        if t is None:
            return None
        v = self.get(t)
        if v is None or not all(is_known(x) for x in v[0]):
            return None
        return [int(x) for x in v[0]]


def _inp(node: gs.Node, i: int) -> gs.Tensor | None:
    if i < len(node.inputs) and node.inputs[i].name:
        return node.inputs[i]
    return None


def _sym_shape(sv: SymValues, node: gs.Node) -> SymVal | None:
    shape = sv.shapes.shape(node.inputs[0])
    if shape is None:
        return None
    rank = len(shape)
    start = attr_int(node, "start", 0)
    end = node.attrs.get("end")
    end = rank if end is None else int(end)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return tuple(shape[start:end]), False


def _sym_size(sv: SymValues, node: gs.Node) -> SymVal | None:
    shape = sv.shapes.static_shape(node.inputs[0])
    if shape is None:
        return None
    return (int(np.prod(shape, dtype=np.int64)),), True


def _sym_gather(sv: SymValues, node: gs.Node) -> SymVal | None:
    data, idx = sv.get(node.inputs[0]), node.inputs[1]
    if data is None or data[1] or attr_int(node, "axis", 0) != 0:
        return None
    if not is_plain(idx):
        return None
    arr = load_values(idx)
    ids = _int_list(arr)
    if ids is None:
        return None
    n = len(data[0])
    if any(i < -n or i >= n for i in ids):
        return None
    picked = tuple(data[0][i] for i in ids)
    return picked, arr.ndim == 0


def _sym_slice(sv: SymValues, node: gs.Node) -> SymVal | None:
    data = sv.get(node.inputs[0])
    if data is None or data[1]:
        return None
    if "starts" in node.attrs:  # opset < 10
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes = list(node.attrs.get("axes", [0]))
        steps = [1]
    else:
        starts, ends = sv.const_ints(_inp(node, 1)), sv.const_ints(_inp(node, 2))
        axes = sv.const_ints(_inp(node, 3)) if _inp(node, 3) is not None else [0]
        steps = sv.const_ints(_inp(node, 4)) if _inp(node, 4) is not None else [1]
    if starts is None or ends is None or axes is None or steps is None:
        return None
    if len(starts) != 1 or axes not in ([0], [-1]) or len(steps) != 1 or steps[0] == 0:
        return None
    s = slice_indices(len(data[0]), starts[0], ends[0], steps[0])
    return tuple(data[0][i] for i in s), False


def slice_indices(dim: int, start: int, end: int, step: int) -> range:
    """The indices ONNX Slice selects along one axis of size ``dim`` (clamping as the spec says)."""
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start = min(max(start, 0), dim)
        end = min(max(end, 0), dim)
    else:
        start = min(max(start, 0), dim - 1)
        end = min(max(end, -1), dim - 1)
    return range(start, end, step)


def _sym_concat(sv: SymValues, node: gs.Node) -> SymVal | None:
    if attr_int(node, "axis", 0) not in (0, -1):
        return None
    parts = []
    for t in node.inputs:
        v = sv.get(t)
        if v is None or v[1]:
            return None
        parts.extend(v[0])
    return tuple(parts), False


def _axes(sv: SymValues, node: gs.Node) -> list[int] | None:
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    return sv.const_ints(_inp(node, 1))


def _sym_unsqueeze(sv: SymValues, node: gs.Node) -> SymVal | None:
    data = sv.get(node.inputs[0])
    axes = _axes(sv, node)
    if data is None or axes is None:
        return None
    if data[1] and axes in ([0], [-1]):
        return data[0], False
    return None


def _sym_squeeze(sv: SymValues, node: gs.Node) -> SymVal | None:
    data = sv.get(node.inputs[0])
    if data is None or data[1] or len(data[0]) != 1:
        return None
    axes = _axes(sv, node)
    if axes is None and _inp(node, 1) is None and "axes" not in node.attrs:
        axes = [0]
    return (data[0], True) if axes in ([0], [-1]) else None


def _sym_identity(sv: SymValues, node: gs.Node) -> SymVal | None:
    return sv.get(node.inputs[0])


def _sym_cast(sv: SymValues, node: gs.Node) -> SymVal | None:
    to = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))
    data = sv.get(node.inputs[0])
    if data is None or to.kind not in "iu":
        return None
    src = sv.shapes.dtype(node.inputs[0])
    if src is None or src.kind not in "iu":
        return None
    info = np.iinfo(to)
    if not all(not is_known(x) or info.min <= int(x) <= info.max for x in data[0]):
        return None
    if any(not is_known(x) for x in data[0]) and info.max < 2**31 - 1:
        return None
    return data


def _sym_reshape(sv: SymValues, node: gs.Node) -> SymVal | None:
    data = sv.get(node.inputs[0])
    target = sv.const_ints(_inp(node, 1))
    if data is None or target is None:
        return None
    n = len(data[0])
    if target == [] and n == 1:
        return data[0], True
    if len(target) == 1 and target[0] in (-1, n):
        return data[0], False
    return None


def _sym_binary(sv: SymValues, node: gs.Node) -> SymVal | None:
    a, b = sv.get(node.inputs[0]), sv.get(node.inputs[1])
    if a is None or b is None:
        return None
    if len(a[0]) != len(b[0]) and len(a[0]) != 1 and len(b[0]) != 1:
        return None
    n = max(len(a[0]), len(b[0]))
    xa = a[0] * n if len(a[0]) == 1 and n > 1 else a[0]
    xb = b[0] * n if len(b[0]) == 1 and n > 1 else b[0]
    out = []
    for i, (x, y) in enumerate(zip(xa, xb)):
        r = _sym_arith(node.op, x, y)
        out.append(r if r is not None else _opaque(node.outputs[0], i))
    scalar = a[1] and b[1]
    return tuple(out), scalar


def _sym_arith(op: str, x: Any, y: Any) -> Any:
    if is_known(x) and is_known(y):
        x, y = int(x), int(y)
        if op == "Add":
            return x + y
        if op == "Sub":
            return x - y
        if op == "Mul":
            return x * y
        if op == "Div":
            if y == 0:
                return None
            q = abs(x) // abs(y)
            return q if (x >= 0) == (y >= 0) else -q
        if op == "Max":
            return max(x, y)
        if op == "Min":
            return min(x, y)
        if op == "Equal":
            return x == y
        return None
    # one side symbolic: identities that hold for every value of the symbol
    if op == "Mul" and (y == 1 and is_known(y)):
        return x
    if op == "Mul" and (x == 1 and is_known(x)):
        return y
    if op in ("Add", "Sub") and is_known(y) and y == 0:
        return x
    if op == "Div" and is_known(y) and y == 1:
        return x
    if op == "Equal":
        if x == y:
            return True
        # a shape dim is never negative
        if (is_known(y) and int(y) < 0 and isinstance(x, (str, tuple)) and _is_dim(x)) or (
            is_known(x) and int(x) < 0 and isinstance(y, (str, tuple)) and _is_dim(y)
        ):
            return False
    return None


def _is_dim(x: Any) -> bool:
    """True for symbols that stand for a tensor dim (>= 0), not for arbitrary integer values."""
    return isinstance(x, str) or (isinstance(x, tuple) and x and x[0] == "dim")


def _sym_equal(sv: SymValues, node: gs.Node) -> SymVal | None:
    r = _sym_binary(sv, node)
    if r is None:
        return None
    return r if all(isinstance(x, (bool, np.bool_)) for x in r[0]) else None


def _sym_where(sv: SymValues, node: gs.Node) -> SymVal | None:
    c, a, b = (sv.get(t) for t in node.inputs[:3])
    if c is None or a is None or b is None or not all(isinstance(x, (bool, np.bool_, int)) for x in c[0]):
        return None
    n = max(len(c[0]), len(a[0]), len(b[0]))

    def widen(v: SymVal) -> tuple | None:
        if len(v[0]) == n:
            return v[0]
        return v[0] * n if len(v[0]) == 1 else None

    cc, aa, bb = widen(c), widen(a), widen(b)
    if cc is None or aa is None or bb is None:
        return None
    return tuple(x if bool(k) else y for k, x, y in zip(cc, aa, bb)), c[1] and a[1] and b[1]


_SYM_OPS = {
    "Shape": _sym_shape,
    "Size": _sym_size,
    "Gather": _sym_gather,
    "Slice": _sym_slice,
    "Concat": _sym_concat,
    "Unsqueeze": _sym_unsqueeze,
    "Squeeze": _sym_squeeze,
    "Identity": _sym_identity,
    "Cast": _sym_cast,
    "Reshape": _sym_reshape,
    "Add": _sym_binary,
    "Sub": _sym_binary,
    "Mul": _sym_binary,
    "Div": _sym_binary,
    "Max": _sym_binary,
    "Min": _sym_binary,
    "Equal": _sym_equal,
    "Where": _sym_where,
}


def materialize(val: SymVal, dtype: np.dtype | None) -> np.ndarray:
    entries, scalar = val
    if all(isinstance(x, (bool, np.bool_)) for x in entries) and entries:
        arr = np.array([bool(x) for x in entries], dtype=np.bool_)
    else:
        arr = np.array([int(x) for x in entries], dtype=dtype if dtype is not None else np.int64)
    if dtype is not None and arr.dtype != dtype:
        arr = arr.astype(dtype)
    return arr.reshape(()) if scalar else arr


# --------------------------------------------------------------------------- rewriting

_NONDETERMINISTIC = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                               "Multinomial", "Bernoulli", "Dropout"})


class Rewriter:
    """What a rule gets besides its node: the graph it sits in, shape facts, names and the folder.

    A rule is ``rule(node, rw) -> str | None``: it either rewrites (and returns None) or returns the
    readable reason it does not apply, without having touched anything.
    """

    def __init__(self, top: gs.Graph, shapes: ShapeInfo, sym: SymValues, names: Any, folder: Any = None):
        self.top = top
        self.g = top
        self.shapes = shapes
        self.sym = sym
        self.names = names
        self.folder = folder
        self.outputs: set[int] = set()
        self.inputs: set[int] = set()
        self._static = IdMap()
        self.refresh_io()

    def refresh_io(self) -> None:
        self.graphs = list(all_graphs(self.top))
        self.outputs = {id(t) for g in self.graphs for t in g.outputs}
        self.inputs = {id(t) for g in self.graphs for t in g.inputs}

    @property
    def opset(self) -> int:
        return int(self.top.opset)

    def is_output(self, t: gs.Tensor) -> bool:
        return id(t) in self.outputs

    def sole_consumer(self, t: gs.Tensor, node: gs.Node) -> bool:
        """``node`` is the only reader of ``t`` (in any graph) and ``t`` is not a graph output."""
        return len(t.outputs) == 1 and t.outputs[0] is node and not self.is_output(t)

    def producer(self, t: gs.Tensor) -> gs.Node | None:
        return t.inputs[0] if len(t.inputs) == 1 else None

    def const(self, values: np.ndarray, base: str) -> gs.Constant:
        return gs.Constant(self.names(base), np.ascontiguousarray(values) if np.ndim(values) else np.asarray(values))

    def add_node(
        self,
        op: str,
        inputs: list[gs.Tensor],
        attrs: dict | None = None,
        *,
        base: str,
        dtype: np.dtype | None = None,
        shape: Sequence | None = None,
        graph: gs.Graph | None = None,
    ) -> gs.Tensor:
        """Append a one-output node (toposort later) and return its output."""
        out = gs.Variable(self.names(base), dtype=dtype, shape=None if shape is None else list(shape))
        node = gs.Node(op, name=self.names(base + "_node"), attrs=dict(attrs or {}), inputs=list(inputs),
                       outputs=[out])
        (graph or self.g).nodes.append(node)
        if shape is not None or dtype is not None:
            self.shapes.set(out, tuple(shape) if shape is not None else None, dtype)
        return out

    def bypass(self, node: gs.Node, keep_input: int = 0) -> str | None:
        """Remove ``node`` whose output equals its ``keep_input``-th input (graph output names kept:
        the input's producer is renamed to write the output, or the bypass is refused)."""
        src = node.inputs[keep_input]
        out = node.outputs[0]
        if self.is_output(out):
            if (isinstance(src, gs.Constant) or id(src) in self.inputs or self.is_output(src)
                    or len(src.inputs) != 1):
                return "its output is a graph output that cannot take the input's place"
            producer = src.inputs[0]
            if not any(n is producer for n in self.g.nodes):
                return "its output is a graph output and the input comes from an outer graph"
            for consumer in list(src.outputs):
                if consumer is node:
                    continue
                for i, t in enumerate(consumer.inputs):
                    if t is src:
                        consumer.inputs[i] = out
            node.outputs.clear()
            node.inputs.clear()
            for i, t in enumerate(producer.outputs):
                if t is src:
                    producer.outputs[i] = out
            return None
        node.outputs.clear()
        node.inputs.clear()
        rewire(out, src, self.graphs)
        return None

    def forward(self, node: gs.Node, src: gs.Tensor) -> str | None:
        """Remove ``node`` whose output equals ``src`` (any tensor); nothing changes when refused."""
        old = node.inputs[0]
        node.inputs[0] = src
        reason = self.bypass(node, 0)
        if reason is not None:
            node.inputs[0] = old
        return reason

    def static(self, t: gs.Tensor) -> bool:
        """True when ``t`` does not depend on any graph input (a constant, or computed from constants)."""
        memo = self._static
        stack = [t]
        while stack:
            cur = stack[-1]
            if cur in memo:
                stack.pop()
                continue
            if isinstance(cur, gs.Constant):
                memo[cur] = True
                stack.pop()
                continue
            if id(cur) in self.inputs or len(cur.inputs) != 1:
                memo[cur] = False
                stack.pop()
                continue
            producer = cur.inputs[0]
            if producer.op in _NONDETERMINISTIC or subgraphs_of(producer):
                memo[cur] = False
                stack.pop()
                continue
            pending = [x for x in producer.inputs if x.name and x not in memo]
            if pending:
                stack.extend(pending)
                continue
            memo[cur] = all(memo[x] for x in producer.inputs if x.name)
            stack.pop()
        return memo[t]

    def new_sweep(self) -> None:
        self._static = IdMap()
        self.refresh_io()

    def take_output(self, keeper: gs.Node, victim: gs.Node, index: int = 0) -> None:
        """``keeper`` now computes what ``victim`` did: it writes ``victim``'s output tensor (name kept)."""
        out = victim.outputs[0]
        victim.outputs.clear()
        victim.inputs.clear()
        keeper.outputs[index] = out

    def kill(self, node: gs.Node) -> None:
        node.outputs.clear()
        node.inputs.clear()
