"""Channel dependency analysis for structured pruning of ONNX graphs (graphsurgeon).

The unit of analysis is one *channel element*: every producer with constant weights (Conv,
ConvTranspose, Gemm, MatMul) creates a fresh *space* of elements, one per output channel. Each
tensor downstream carries a :class:`ChanInfo`: its channel axis and, for each position along it,
the element it holds. Elements flow through pass-through ops unchanged (BN, activations, pooling,
Resize, Pad, per-channel elementwise ops), are concatenated by Concat, cut by Split/Slice,
repeated by Flatten/Reshape (a channel becomes a block of features), and are *coupled* by ops
that combine tensors position by position (residual Add/Sub/Mul, depthwise convs): coupled
elements are unioned in a union-find, so the classes of the union-find are the prunable units.
A class is removed everywhere at once - from its producers' output rows, from every per-channel
constant and from every consumer's input columns - which keeps every shape consistent.

Spaces whose elements are unioned form a *group* (e.g. every conv writing into one residual
stream). Any op the analysis does not understand, a graph output, a subgraph reading the tensor,
or a shape computation that would observe the channel count *blocks* the elements it sees, and
with them the whole group; the reason names the op.

Analysis records *edits* (slice this constant along this axis by that tensor's kept channels,
set this Split's sizes, ...) that :meth:`ChannelAnalysis.apply` executes once the removed classes
are chosen; nothing in the graph changes before that.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .graph_utils import NameGen, all_graphs

log = logging.getLogger(__name__)

Shape = tuple[int, ...]


# --------------------------------------------------------------------------- union-find


class UnionFind:
    """Union-find over integer elements, grown space by space."""

    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:
            p[x], x = root, p[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        if a is b:
            return
        for x, y in zip(a.tolist(), b.tolist()):
            if x != y:
                self.union(x, y)

    def roots(self) -> np.ndarray:
        p = np.asarray(self.parent, dtype=np.int64)
        while True:
            pp = p[p]
            if np.array_equal(pp, p):
                return p
            p = pp


# --------------------------------------------------------------------------- records


@dataclass(eq=False)
class ChanInfo:
    """The channel axis of one tensor and the element held at each position along it."""

    axis: int
    ids: np.ndarray

    @property
    def size(self) -> int:
        return int(self.ids.size)


@dataclass
class Space:
    """The output channels of one producer (or a fixed segment of channels)."""

    index: int
    label: str
    op: str
    start: int
    size: int


@dataclass(eq=False)
class Member:
    """A weight whose slices along ``axis`` belong to the elements ``info.ids`` (for importance).

    role: ``producer`` (output rows), ``consumer`` (input columns), ``bn`` (BN gamma) or
    ``depthwise`` (per-channel filters).
    """

    role: str
    node: gs.Node
    input_index: int
    axis: int
    info: ChanInfo
    input_name: str = ""  # consumer: the activation it reads (activation importance)


@dataclass(eq=False)
class Dim:
    """One element of an integer shape tensor, tracked symbolically.

    ``deps``: names of tensors whose channel count this value depends on (it changes when they
    are pruned); ``src``: (node, input index, flat index) of the constant it was read from, when
    that constant reaches here through single-use tensors only (so it can be rewritten).
    """

    value: int | None
    deps: tuple[str, ...] = ()
    src: tuple[gs.Node, int, int] | None = None
    shape_of: tuple[str, int] | None = None  # exactly Shape(tensor)[axis]


@dataclass(eq=False)
class ConstEdit:
    """Pending change to the constant at ``node.inputs[index]``: slices and element rewrites."""

    node: gs.Node
    index: int
    slices: list[tuple[int, ChanInfo]] = field(default_factory=list)
    sets: list[tuple[int, ChanInfo]] = field(default_factory=list)  # (flat index, info: new value = kept)


UNARY_PASS = {
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs",
    "Floor", "Ceil", "Round", "Sin", "Cos", "Sign", "Identity", "Cast", "Clip", "ThresholdedRelu",
    "Not", "IsNaN", "IsInf", "Swish", "Shrink",
}
ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Greater",
    "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod", "BitShift",
}
POOLS = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
REDUCES = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}


# --------------------------------------------------------------------------- constants


def _attr_const(node: gs.Node) -> np.ndarray | None:
    a = node.attrs
    if isinstance(a.get("value"), gs.Constant):
        return np.asarray(a["value"].values)
    for key, dt in (("value_float", np.float32), ("value_int", np.int64)):
        if key in a:
            return np.asarray(a[key], dtype=dt)
    for key, dt in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in a:
            return np.asarray(list(a[key]), dtype=dt)
    return None


def _reshape_target(in_shape: Sequence[int], target: Sequence[int], allowzero: bool = False) -> list[int]:
    out = [int(in_shape[i]) if (d == 0 and not allowzero) else int(d) for i, d in enumerate(target)]
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        out[out.index(-1)] = math.prod(in_shape) // max(known, 1)
    return out


class ConstEval:
    """Values of tensors computable from constants alone (small op set, memoized by tensor id)."""

    FOLDABLE = {"Identity", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Transpose", "ConstantOfShape", "Flatten",
                "Constant"}

    def __init__(self, opset: int):
        self.opset = opset
        self.cache: dict[int, np.ndarray | None] = {}

    def __call__(self, t: gs.Tensor | None, depth: int = 0) -> np.ndarray | None:
        if t is None or (isinstance(t, gs.Variable) and not t.name):
            return None
        if isinstance(t, gs.Constant):
            return np.asarray(t.values)
        key = id(t)
        if key in self.cache:
            return self.cache[key]
        value = self._eval(t, depth)
        self.cache[key] = value
        return value

    def _eval(self, t: gs.Tensor, depth: int) -> np.ndarray | None:
        if len(t.inputs) != 1 or depth > 8:
            return None
        node = t.inputs[0]
        if node.op not in self.FOLDABLE or len(node.outputs) != 1:
            return None
        if node.op == "Constant":
            return _attr_const(node)
        ins = [self(i, depth + 1) if i.name else None for i in node.inputs]
        x = ins[0] if ins else None
        try:
            if node.op in ("Identity",):
                return x
            if node.op == "Cast" and x is not None:
                return x.astype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))
            if node.op == "ConstantOfShape" and x is not None:
                v = node.attrs.get("value")
                fill = np.asarray(v.values).reshape(-1)[0] if isinstance(v, gs.Constant) else np.float32(0)
                return np.full([int(d) for d in x.reshape(-1)], fill, dtype=np.asarray(fill).dtype)
            if x is None:
                return None
            if node.op == "Reshape":
                target = ins[1] if len(ins) > 1 else np.asarray(node.attrs.get("shape", []), np.int64)
                if target is None:
                    return None
                shape = _reshape_target(x.shape, target.reshape(-1).tolist(), bool(node.attrs.get("allowzero", 0)))
                return x.reshape(shape)
            if node.op == "Flatten":
                axis = int(node.attrs.get("axis", 1)) % max(x.ndim, 1)
                return x.reshape(math.prod(x.shape[:axis]), -1)
            if node.op in ("Unsqueeze", "Squeeze"):
                axes = node.attrs.get("axes")
                if axes is None and len(ins) > 1 and ins[1] is not None:
                    axes = ins[1].reshape(-1).tolist()
                if node.op == "Squeeze":
                    return np.squeeze(x, axis=tuple(axes)) if axes else np.squeeze(x)
                out = x
                rank = x.ndim + len(axes or [])
                for a in sorted(int(a) % rank for a in (axes or [])):
                    out = np.expand_dims(out, a)
                return out
            if node.op == "Transpose":
                perm = node.attrs.get("perm")
                return np.transpose(x, perm)
        except (ValueError, TypeError, KeyError, IndexError):
            return None
        return None


# --------------------------------------------------------------------------- shapes


def _weightless(model: onnx.ModelProto, input_shapes: dict[str, Shape]) -> onnx.ModelProto:
    """Copy of ``model`` for shape inference: large weights become typed graph inputs (no data),
    inputs get the concrete shapes. Small integer tensors stay: reshape targets need their values."""
    from onnx import helper

    m = onnx.ModelProto()
    for f in ("ir_version", "opset_import", "functions"):
        if f == "ir_version":
            m.ir_version = model.ir_version
        else:
            getattr(m, f).extend(getattr(model, f))
    g = m.graph
    src = model.graph
    g.name = src.name
    inits = {t.name for t in src.initializer}
    big: list[onnx.ValueInfoProto] = []
    for t in src.initializer:
        if len(t.dims) and math.prod(t.dims) > 64 and t.data_type not in (onnx.TensorProto.INT64,
                                                                            onnx.TensorProto.INT32):
            big.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            g.initializer.append(t)
    for n in src.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            t = n.attribute[0].t
            if len(t.dims) and math.prod(t.dims) > 64 and t.data_type not in (onnx.TensorProto.INT64,
                                                                                onnx.TensorProto.INT32):
                big.append(helper.make_tensor_value_info(n.output[0], t.data_type, list(t.dims)))
                continue
        g.node.append(n)
    for vi in src.input:
        if vi.name in inits and any(b.name == vi.name for b in big):
            continue
        new = g.input.add()
        new.CopyFrom(vi)
        if vi.name in input_shapes and vi.name not in inits:
            dims = new.type.tensor_type.shape.dim
            del dims[:]
            for d in input_shapes[vi.name]:
                dims.add().dim_value = int(d)
    g.input.extend(b for b in big if b.name not in {vi.name for vi in g.input})
    g.output.extend(src.output)
    return m


def concrete_shapes(model: onnx.ModelProto, input_shapes: dict[str, Shape], feed: dict | None = None
                    ) -> dict[str, Shape]:
    """Concrete shape of every tensor at the given input shapes: shape inference (on a copy without
    the weights' data), then one ORT run for whatever inference could not resolve."""
    from onnxopt.validate import OrtRunner

    m = _weightless(model, input_shapes)
    shapes: dict[str, Shape] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(m, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # best effort: ORT fills the gaps
        log.debug("shape inference failed: %s", exc)
        inferred = m
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if all(d is not None for d in dims):
            shapes[vi.name] = tuple(int(d) for d in dims)
    for t in model.graph.initializer:
        shapes[t.name] = tuple(t.dims)
    missing = [o for n in model.graph.node for o in n.output if o and o not in shapes and n.op_type != "Constant"]
    if missing and feed is not None:
        try:
            runner = OrtRunner(model, optimize=False, extra_outputs=missing)
            out = runner.run(feed)
            runner.close()
            for name in missing:
                if name in out:
                    shapes[name] = tuple(np.asarray(out[name]).shape)
        except Exception as exc:  # an unresolved shape only blocks the groups that need it
            log.debug("could not resolve shapes with onnxruntime: %s", exc)
    return shapes


# --------------------------------------------------------------------------- analysis


class ChannelAnalysis:
    """Walks a graph once (topological order) and builds channel groups, blocks and edits."""

    def __init__(self, graph: gs.Graph, shapes: dict[str, Shape], opset: int):
        self.graph = graph
        self.shapes = shapes
        self.opset = opset
        self.const = ConstEval(opset)
        self.uf = UnionFind()
        self.space_of: list[int] = []
        self.spaces: list[Space] = []
        self.info: dict[str, ChanInfo] = {}
        self.dims: dict[str, list[Dim]] = {}
        self.blocked: dict[int, str] = {}
        self.members: list[Member] = []
        self.edits: dict[tuple[int, int], ConstEdit] = {}
        self.node_edits: list[tuple[str, gs.Node, Any]] = []  # (kind, node, payload)
        self.mac_nodes: list[tuple[gs.Node, str, ChanInfo | None, ChanInfo | None, int]] = []
        self.output_names = {t.name for t in graph.outputs}
        self.consumer_count: dict[str, int] = {}
        self.fit_layers: list[dict] = []

    # ------------------------------------------------------------------ helpers

    def new_space(self, label: str, op: str, n: int, blocked: str | None = None) -> np.ndarray:
        ids = self.uf.add(n)
        index = len(self.spaces)
        self.spaces.append(Space(index, label, op, int(ids[0]) if n else len(self.space_of), n))
        self.space_of.extend([index] * n)
        if blocked:
            for e in ids.tolist():
                self.blocked.setdefault(e, blocked)
        return ids

    def get(self, t: gs.Tensor | None) -> ChanInfo | None:
        if t is None or isinstance(t, gs.Constant) or not t.name:
            return None
        return self.info.get(t.name)

    def set(self, t: gs.Tensor, info: ChanInfo | None) -> None:
        if info is not None and t.name:
            self.info[t.name] = info

    def block(self, info: ChanInfo | None, reason: str) -> None:
        if info is None:
            return
        for e in np.unique(info.ids).tolist():
            self.blocked.setdefault(e, reason)

    def block_tensor(self, t: gs.Tensor | None, reason: str) -> None:
        self.block(self.get(t), reason)

    def shape(self, t: gs.Tensor | None) -> Shape | None:
        if t is None:
            return None
        if isinstance(t, gs.Constant):
            return tuple(t.values.shape)
        return self.shapes.get(t.name)

    def rank(self, t: gs.Tensor | None) -> int | None:
        s = self.shape(t)
        return None if s is None else len(s)

    def slice_const(self, node: gs.Node, index: int, axis: int, info: ChanInfo) -> None:
        key = (id(node), index)
        edit = self.edits.setdefault(key, ConstEdit(node, index))
        edit.slices.append((axis, info))

    def set_const_elem(self, node: gs.Node, index: int, flat: int, info: ChanInfo) -> None:
        key = (id(node), index)
        edit = self.edits.setdefault(key, ConstEdit(node, index))
        edit.sets.append((flat, info))

    @staticmethod
    def where(node: gs.Node) -> str:
        return f"{node.op} '{node.name}'" if node.name else node.op

    # ------------------------------------------------------------------ driver

    def run(self) -> None:
        for node in self.graph.nodes:
            for t in node.inputs:
                if t.name:
                    self.consumer_count[t.name] = self.consumer_count.get(t.name, 0) + 1
        for node in self.graph.nodes:
            self._subgraph_reads(node)
            if node.domain not in ("", "ai.onnx", None):
                self._unknown(node, f"{self.where(node)} (custom domain {node.domain!r})")
                continue
            handler = getattr(self, f"op_{node.op}", None)
            if handler is None:
                if node.op in UNARY_PASS:
                    handler = self.op_unary
                elif node.op in ELEMENTWISE:
                    handler = self.op_elementwise
                elif node.op in POOLS:
                    handler = self.op_pool
                elif node.op in REDUCES:
                    handler = self.op_reduce
                elif node.op in ("Softmax", "LogSoftmax", "Hardmax"):
                    handler = self.op_softmax
                elif node.op in ("Squeeze", "Unsqueeze", "Flatten"):
                    handler = self.op_reshape_like
            self._eval_dims(node)
            if handler is None:
                self._unknown(node, f"{self.where(node)} is not understood by the channel analysis")
            else:
                handler(node)
        for t in self.graph.outputs:
            self.block_tensor(t, f"graph output '{t.name}' keeps its channels")
            self._block_dims(t, f"graph output '{t.name}'")

    def op_Shape(self, node: gs.Node) -> None:
        """Reads only the shape: tracked by ``_eval_dims``; its uses are checked where they end."""

    def op_Constant(self, node: gs.Node) -> None:
        """No inputs."""

    def _subgraph_reads(self, node: gs.Node) -> None:
        subs = [v for v in node.attrs.values() if isinstance(v, gs.Graph)]
        subs += [g for v in node.attrs.values() if isinstance(v, (list, tuple)) for g in v if isinstance(g, gs.Graph)]
        for sub in subs:
            for g in all_graphs(sub):
                for n in g.nodes:
                    for t in n.inputs:
                        if t.name in self.info:
                            self.block(self.info[t.name], f"read inside a subgraph of {self.where(node)}")
                        self._block_dims(t, f"shape read inside a subgraph of {self.where(node)}")

    def _unknown(self, node: gs.Node, reason: str) -> None:
        propagated = self._dims_propagated(node)
        for t in node.inputs:
            self.block_tensor(t, reason)
            if not propagated:
                self._block_dims(t, reason)

    def _dims_propagated(self, node: gs.Node) -> bool:
        return bool(node.outputs) and node.outputs[0].name in self.dims

    def dims_for(self, t: gs.Tensor) -> list[Dim] | None:
        """Tracked elements of a shape tensor as seen by one consumer (sources only if single use)."""
        if not t.name or t.name not in self.dims:
            return None
        if self.consumer_count.get(t.name, 0) == 1:
            return self.dims[t.name]
        return [Dim(d.value, d.deps, None, d.shape_of) for d in self.dims[t.name]]

    def _block_dims(self, t: gs.Tensor, reason: str) -> None:
        for d in self.dims.get(t.name, []) if t.name else []:
            for name in d.deps:
                self.block(self.info.get(name), f"{reason} (uses the channel count of '{name}')")

    def _check_dims_inputs(self, node: gs.Node, skip: Sequence[int] = ()) -> None:
        """Shape values that depend on channel counts may only reach ops that re-derive them."""
        if self._dims_propagated(node):
            return
        for i, t in enumerate(node.inputs):
            if i not in skip and t.name in self.dims:
                self._block_dims(t, f"{self.where(node)} reads a shape")

    # ------------------------------------------------------------------ shape values

    def _eval_dims(self, node: gs.Node) -> None:
        """Track small integer tensors (shape computations) element by element."""
        op = node.op
        outs = node.outputs
        if not outs or not outs[0].name:
            return

        def dims_of(t: gs.Tensor, i: int) -> list[Dim] | None:
            if t.name in self.dims:
                return self.dims_for(t)
            v = self.const(t)
            if v is None or v.dtype.kind not in "iu" or v.size > 64:
                return None
            direct = isinstance(t, gs.Constant) or (len(t.inputs) == 1 and t.inputs[0].op == "Constant")
            return [Dim(int(x), (), (node, i, k) if direct else None) for k, x in enumerate(v.reshape(-1).tolist())]

        result: list[Dim] | None = None
        if op == "Shape":
            t = node.inputs[0]
            s = self.shape(t)
            info = self.get(t)
            if s is None:
                return
            start = int(node.attrs.get("start", 0))
            end = node.attrs.get("end")
            idx = list(range(len(s)))[start:end if end is not None else None]
            result = []
            for a in idx:
                deps = (t.name,) if info is not None and info.axis == a else ()
                result.append(Dim(int(s[a]), deps, None, (t.name, a)))
        elif op in ("Cast", "Identity", "Squeeze", "Unsqueeze"):
            result = dims_of(node.inputs[0], 0)
        elif op == "Concat":
            parts = [dims_of(t, i) for i, t in enumerate(node.inputs)]
            if all(p is not None for p in parts):
                result = [d for p in parts for d in p]  # type: ignore[union-attr]
        elif op == "Gather":
            data = dims_of(node.inputs[0], 0)
            idx = self.const(node.inputs[1])
            if data is not None and idx is not None and int(node.attrs.get("axis", 0)) == 0:
                try:
                    result = [data[int(i)] for i in idx.reshape(-1).tolist()]
                except IndexError:
                    result = None
        elif op == "Slice":
            data = dims_of(node.inputs[0], 0)
            params = self._slice_params(node)
            if data is not None and params is not None:
                starts, ends, axes, steps = params
                if list(axes) in ([0], [-1]):
                    result = data[slice(starts[0], ends[0], steps[0])]
        elif op in ("Mul", "Add", "Sub", "Div") and len(node.inputs) == 2:
            a, b = dims_of(node.inputs[0], 0), dims_of(node.inputs[1], 1)
            if a is not None and b is not None and (len(a) == len(b) or len(a) == 1 or len(b) == 1):
                n = max(len(a), len(b))
                result = []
                for k in range(n):
                    x, y = a[k if len(a) > 1 else 0], b[k if len(b) > 1 else 0]
                    value = None
                    if x.value is not None and y.value is not None:
                        value = {"Mul": x.value * y.value, "Add": x.value + y.value, "Sub": x.value - y.value,
                                 "Div": x.value // y.value if y.value else None}[op]
                    result.append(Dim(value, tuple(sorted(set(x.deps + y.deps)))))
        if result is not None:
            self.dims[outs[0].name] = result

    def _slice_params(self, node: gs.Node) -> tuple[list[int], list[int], list[int], list[int]] | None:
        if self.opset < 10 or "starts" in node.attrs:
            starts = node.attrs.get("starts")
            ends = node.attrs.get("ends")
            axes = node.attrs.get("axes", list(range(len(starts or []))))
            if starts is None or ends is None:
                return None
            return list(starts), list(ends), list(axes), [1] * len(starts)
        vals = []
        for i in range(1, 5):
            if i < len(node.inputs) and node.inputs[i].name:
                v = self.const(node.inputs[i])
                if v is None:
                    return None
                vals.append(v.reshape(-1).astype(np.int64).tolist())
            else:
                vals.append(None)
        starts, ends, axes, steps = vals
        if starts is None or ends is None:
            return None
        axes = axes if axes is not None else list(range(len(starts)))
        steps = steps if steps is not None else [1] * len(starts)
        return starts, ends, axes, steps

    # ------------------------------------------------------------------ producers

    def op_Conv(self, node: gs.Node) -> None:
        x, w = node.inputs[0], node.inputs[1]
        b = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        wv = self.const(w)
        xi = self.get(x)
        y = node.outputs[0]
        if wv is None or (b is not None and self.const(b) is None):
            self.block(xi, f"{self.where(node)} has computed weights")
            return
        if xi is not None and xi.axis != 1:
            self.block(xi, f"{self.where(node)} reads channels on axis {xi.axis}")
            xi = None
        group = int(node.attrs.get("group", 1))
        cout, cin_g = int(wv.shape[0]), int(wv.shape[1])
        x_shape = self.shape(x)
        cin = xi.size if xi is not None else (x_shape[1] if x_shape else cin_g * group)
        label = node.name or y.name
        if group == 1:
            if xi is not None:
                self.slice_const(node, 1, 1, xi)
                self.members.append(Member("consumer", node, 1, 1, xi, x.name))
            out = ChanInfo(1, self.new_space(label, node.op, cout))
            self.slice_const(node, 1, 0, out)
            if b is not None:
                self.slice_const(node, 2, 0, out)
            self.members.append(Member("producer", node, 1, 0, out))
            self.mac_nodes.append((node, "conv", xi, out, 1))
            self.fit_layers.append({"node": node, "kind": "conv", "in": xi, "out": out})
        elif group == cin == cout and cin_g == 1:
            if xi is not None:
                out = xi
                self.node_edits.append(("group", node, out))
                self.members.append(Member("depthwise", node, 1, 0, out))
                self.fit_layers.append({"node": node, "kind": "depthwise", "in": xi, "out": out})
            else:
                out = ChanInfo(1, self.new_space(label, node.op, cout,
                                                 blocked=f"{self.where(node)}: depthwise conv of fixed channels"))
            self.slice_const(node, 1, 0, out)
            if b is not None:
                self.slice_const(node, 2, 0, out)
            self.mac_nodes.append((node, "depthwise", out, out, group))
        else:
            reason = f"{self.where(node)}: grouped conv (group={group}, {cin}->{cout}) keeps its channels"
            self.block(xi, reason)
            out = ChanInfo(1, self.new_space(label, node.op, cout, blocked=reason))
            self.mac_nodes.append((node, "grouped", None, None, group))
        self.set(y, out)

    def op_ConvTranspose(self, node: gs.Node) -> None:
        x, w = node.inputs[0], node.inputs[1]
        b = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        wv = self.const(w)
        xi = self.get(x)
        y = node.outputs[0]
        group = int(node.attrs.get("group", 1))
        if wv is None or (b is not None and self.const(b) is None) or group != 1:
            reason = f"{self.where(node)}: " + ("grouped ConvTranspose" if group != 1 else "computed weights")
            self.block(xi, reason)
            if wv is not None:
                self.set(y, ChanInfo(1, self.new_space(node.name or y.name, node.op, int(wv.shape[1]) * group,
                                                       blocked=reason)))
            return
        if xi is not None and xi.axis != 1:
            self.block(xi, f"{self.where(node)} reads channels on axis {xi.axis}")
            xi = None
        if xi is not None:
            self.slice_const(node, 1, 0, xi)
            self.members.append(Member("consumer", node, 1, 0, xi, x.name))
        out = ChanInfo(1, self.new_space(node.name or y.name, node.op, int(wv.shape[1])))
        self.slice_const(node, 1, 1, out)
        if b is not None:
            self.slice_const(node, 2, 0, out)
        self.members.append(Member("producer", node, 1, 1, out))
        self.mac_nodes.append((node, "convtranspose", xi, out, 1))
        self.set(y, out)

    def op_Gemm(self, node: gs.Node) -> None:
        a, bt = node.inputs[0], node.inputs[1]
        c = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        ai = self.get(a)
        bv = self.const(bt)
        y = node.outputs[0]
        trans_a, trans_b = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
        cv = self.const(c) if c is not None else None
        if bv is None or trans_a or (c is not None and cv is None) or self.get(bt) is not None:
            self.block(ai, f"{self.where(node)}: " + ("transposed input" if trans_a else "computed weights"))
            self.block_tensor(bt, f"{self.where(node)}: weight input carries channels")
            self.block_tensor(c, f"{self.where(node)}: bias carries channels")
            return
        if ai is not None and ai.axis != 1:
            self.block(ai, f"{self.where(node)} reads channels on axis {ai.axis}")
            ai = None
        k_axis, n_axis = (1, 0) if trans_b else (0, 1)
        n = int(bv.shape[n_axis])
        if ai is not None:
            self.slice_const(node, 1, k_axis, ai)
            self.members.append(Member("consumer", node, 1, k_axis, ai, a.name))
        out = ChanInfo(1, self.new_space(node.name or y.name, node.op, n))
        self.slice_const(node, 1, n_axis, out)
        if cv is not None and cv.ndim >= 1 and cv.shape[-1] == n and n > 1:
            self.slice_const(node, 2, cv.ndim - 1, out)
        self.members.append(Member("producer", node, 1, n_axis, out))
        self.mac_nodes.append((node, "gemm", ai, out, 1))
        self.fit_layers.append({"node": node, "kind": "gemm", "in": ai, "out": out})
        self.set(y, out)

    def op_MatMul(self, node: gs.Node) -> None:
        a, b = node.inputs[0], node.inputs[1]
        ai, bi = self.get(a), self.get(b)
        bv = self.const(b)
        y = node.outputs[0]
        ra = self.rank(a)
        if bv is None or bv.ndim != 2 or bi is not None or ra is None or ra < 2:
            reason = f"{self.where(node)}: " + ("MatMul of two activations" if bv is None else "unsupported weight")
            self.block(ai, reason)
            self.block(bi, reason)
            self.mac_nodes.append((node, "matmul-dynamic", None, None, 1))
            return
        if ai is not None and ai.axis < ra - 1:
            self.set(y, ai)  # rows pass through; the weight acts on the last axis
            self.mac_nodes.append((node, "matmul-rows", ai, None, 1))
            return
        if ai is not None:
            self.slice_const(node, 1, 0, ai)
            self.members.append(Member("consumer", node, 1, 0, ai, a.name))
        out = ChanInfo(ra - 1, self.new_space(node.name or y.name, node.op, int(bv.shape[1])))
        self.slice_const(node, 1, 1, out)
        self.members.append(Member("producer", node, 1, 1, out))
        self.mac_nodes.append((node, "matmul", ai, out, 1))
        self.fit_layers.append({"node": node, "kind": "matmul", "in": ai, "out": out})
        self.set(y, out)

    # ------------------------------------------------------------------ pass-through

    def _extra_outputs_unused(self, node: gs.Node, reason: str) -> bool:
        for t in node.outputs[1:]:
            if t.name and (t.outputs or t.name in self.output_names):
                self._unknown(node, f"{self.where(node)}: {reason}")
                return False
        return True

    def op_unary(self, node: gs.Node) -> None:
        xi = self.get(node.inputs[0]) if node.inputs else None
        if node.op == "PRelu":
            self.op_elementwise(node)
            return
        for t in node.inputs[1:]:
            if self.get(t) is not None:
                self._unknown(node, f"{self.where(node)}: channel tensor as a parameter")
                return
            s = self.shape(t)
            if t.name and (s is None or math.prod(s) != 1):
                self.block(xi, f"{self.where(node)}: non-scalar parameter")
                return
        self.set(node.outputs[0], xi)

    def op_Dropout(self, node: gs.Node) -> None:
        if self._extra_outputs_unused(node, "mask output used"):
            self.set(node.outputs[0], self.get(node.inputs[0]))

    def op_pool(self, node: gs.Node) -> None:
        xi = self.get(node.inputs[0])
        if xi is not None and xi.axis != 1:
            self.block(xi, f"{self.where(node)} pools a tensor whose channel axis is {xi.axis}")
            return
        if self._extra_outputs_unused(node, "indices output used"):
            self.set(node.outputs[0], xi)

    def op_BatchNormalization(self, node: gs.Node) -> None:
        xi = self.get(node.inputs[0])
        if xi is None:
            return
        params = [self.const(t) for t in node.inputs[1:5]]
        if xi.axis != 1 or any(p is None for p in params) or not self._extra_outputs_unused(node, "training outputs"):
            self.block(xi, f"{self.where(node)}: computed parameters or training mode")
            return
        for i in range(1, 5):
            self.slice_const(node, i, 0, xi)
        self.members.append(Member("bn", node, 1, 0, xi))
        self.set(node.outputs[0], xi)

    def op_InstanceNormalization(self, node: gs.Node) -> None:
        xi = self.get(node.inputs[0])
        if xi is None:
            return
        if xi.axis != 1 or any(self.const(t) is None for t in node.inputs[1:3]):
            self.block(xi, f"{self.where(node)}: computed parameters")
            return
        self.slice_const(node, 1, 0, xi)
        self.slice_const(node, 2, 0, xi)
        self.set(node.outputs[0], xi)

    def op_LayerNormalization(self, node: gs.Node) -> None:
        xi = self.get(node.inputs[0])
        r = self.rank(node.inputs[0])
        if xi is None:
            return
        if r is None:
            self.block(xi, f"{self.where(node)}: unknown rank")
            return
        axis = int(node.attrs.get("axis", -1)) % r
        if xi.axis >= axis:
            self.block(xi, f"{self.where(node)} normalizes over the channel axis")
            return
        if not self._extra_outputs_unused(node, "statistics outputs used"):
            return
        self.set(node.outputs[0], xi)

    def op_LRN(self, node: gs.Node) -> None:
        self.block_tensor(node.inputs[0], f"{self.where(node)} normalizes across neighbouring channels")

    def op_softmax(self, node: gs.Node) -> None:
        xi = self.get(node.inputs[0])
        r = self.rank(node.inputs[0])
        if xi is None:
            return
        if r is None:
            self.block(xi, f"{self.where(node)}: unknown rank")
            return
        axis = int(node.attrs.get("axis", -1 if self.opset >= 13 else 1)) % r
        couples = xi.axis >= axis if self.opset < 13 else xi.axis == axis
        if couples:
            self.block(xi, f"{self.where(node)} normalizes over the channel axis")
            return
        self.set(node.outputs[0], xi)

    def op_reduce(self, node: gs.Node) -> None:
        xi = self.get(node.inputs[0])
        self._check_dims_inputs(node, skip=(0,))
        if xi is None:
            return
        r = self.rank(node.inputs[0])
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
            v = self.const(node.inputs[1])
            axes = None if v is None else v.reshape(-1).tolist()
            if v is None:
                self.block(xi, f"{self.where(node)}: computed axes")
                return
        if r is None or not axes:
            self.block(xi, f"{self.where(node)} reduces every axis")
            return
        axes = sorted({int(a) % r for a in axes})
        if xi.axis in axes:
            self.block(xi, f"{self.where(node)} reduces over the channel axis")
            return
        keep = int(node.attrs.get("keepdims", 1))
        axis = xi.axis if keep else xi.axis - sum(1 for a in axes if a < xi.axis)
        self.set(node.outputs[0], ChanInfo(axis, xi.ids))

    def op_Transpose(self, node: gs.Node) -> None:
        xi = self.get(node.inputs[0])
        if xi is None:
            return
        r = self.rank(node.inputs[0])
        perm = node.attrs.get("perm")
        if perm is None:
            if r is None:
                self.block(xi, f"{self.where(node)}: unknown rank")
                return
            perm = list(range(r))[::-1]
        self.set(node.outputs[0], ChanInfo(list(perm).index(xi.axis), xi.ids))

    def op_elementwise(self, node: gs.Node) -> None:
        """n-ary broadcasting ops: channel inputs on one output axis are coupled; constants sliced."""
        ins = [t for t in node.inputs]
        out = node.outputs[0]
        infos = [self.get(t) for t in ins]
        self._check_dims_inputs(node)
        if all(i is None for i in infos):
            return
        ranks = [self.rank(t) for t in ins]
        reason = f"{self.where(node)}"
        if any(r is None for r in ranks):
            for i in infos:
                self.block(i, f"{reason}: unknown input shapes")
            return
        out_rank = max(ranks)  # type: ignore[type-var]
        axes = {out_rank - r + i.axis for i, r in zip(infos, ranks) if i is not None}  # type: ignore[operator]
        if len(axes) != 1:
            for i in infos:
                self.block(i, f"{reason}: channel axes of its inputs disagree")
            return
        oa = axes.pop()
        main = max((i for i in infos if i is not None), key=lambda i: i.size)
        c = main.size
        ok = True
        for k, (t, i, r) in enumerate(zip(ins, infos, ranks)):
            pos = oa - (out_rank - r)  # type: ignore[operator]
            if i is not None:
                if i.size == c:
                    self.uf.union_arrays(main.ids, i.ids)
                elif i.size == 1:
                    self.block(i, f"{reason}: a single channel broadcast over {c}")
                else:
                    ok = False
                continue
            s = self.shape(t)
            if s is None:
                ok = False
                continue
            if pos < 0 or s[pos] == 1:
                continue
            if s[pos] != c:
                ok = False
                continue
            if self.const(t) is not None:
                self.slice_const(node, k, pos, main)
            else:
                self.block(main, f"{reason}: combined with a fixed-channel tensor '{t.name}'")
        if not ok:
            for i in infos:
                self.block(i, f"{reason}: incompatible channel shapes")
            return
        self.set(out, ChanInfo(oa, main.ids))

    def op_Concat(self, node: gs.Node) -> None:
        ins = list(node.inputs)
        infos = [self.get(t) for t in ins]
        self._check_dims_inputs(node)
        if all(i is None for i in infos):
            return
        out = node.outputs[0]
        r = self.rank(out) or self.rank(ins[0])
        if r is None:
            for i in infos:
                self.block(i, f"{self.where(node)}: unknown rank")
            return
        axis = int(node.attrs.get("axis", 0)) % r
        chan_axes = {i.axis for i in infos if i is not None}
        if len(chan_axes) != 1:
            for i in infos:
                self.block(i, f"{self.where(node)}: channel axes of its inputs disagree")
            return
        ca = chan_axes.pop()
        if ca == axis:
            parts = []
            for t, i in zip(ins, infos):
                if i is not None:
                    parts.append(i.ids)
                    continue
                s = self.shape(t)
                if s is None:
                    for j in infos:
                        self.block(j, f"{self.where(node)}: input '{t.name}' of unknown shape")
                    return
                if s[axis]:
                    parts.append(self.new_space(f"{t.name}", "fixed", s[axis],
                                                blocked=f"{self.where(node)}: concatenated with fixed channels "
                                                        f"of '{t.name}'"))
            self.set(out, ChanInfo(axis, np.concatenate(parts)))
            return
        # concatenation along another axis: every input must hold the same channels
        main = next(i for i in infos if i is not None)
        for t, i in zip(ins, infos):
            if i is None:
                self.block(main, f"{self.where(node)}: concatenated with fixed-channel tensor '{t.name}'")
            elif i.size == main.size:
                self.uf.union_arrays(main.ids, i.ids)
            else:
                self.block(i, f"{self.where(node)}: mismatched channels")
                self.block(main, f"{self.where(node)}: mismatched channels")
        self.set(out, ChanInfo(ca, main.ids))

    def op_Split(self, node: gs.Node) -> None:
        xi = self.get(node.inputs[0])
        self._check_dims_inputs(node, skip=(0,))
        if xi is None:
            return
        r = self.rank(node.inputs[0])
        if r is None:
            self.block(xi, f"{self.where(node)}: unknown rank")
            return
        axis = int(node.attrs.get("axis", 0)) % r
        if axis != xi.axis:
            for t in node.outputs:
                self.set(t, xi)
            return
        sizes = []
        for t in node.outputs:
            s = self.shape(t)
            if s is None:
                self.block(xi, f"{self.where(node)}: unknown output shapes")
                return
            sizes.append(s[axis])
        if sum(sizes) != xi.size:
            self.block(xi, f"{self.where(node)}: split sizes do not add up")
            return
        outs = []
        start = 0
        for t, n in zip(node.outputs, sizes):
            info = ChanInfo(axis, xi.ids[start:start + n])
            outs.append(info)
            self.set(t, info)
            start += n
        self.node_edits.append(("split", node, outs))

    def op_Slice(self, node: gs.Node) -> None:
        xi = self.get(node.inputs[0])
        if xi is None:
            self._check_dims_inputs(node, skip=(0,))
            return
        params = self._slice_params(node)
        r = self.rank(node.inputs[0])
        if params is None or r is None:
            self.block(xi, f"{self.where(node)}: computed slice parameters")
            return
        starts, ends, axes, steps = params
        axes = [int(a) % r for a in axes]
        if xi.axis not in axes:
            self.set(node.outputs[0], xi)
            return
        k = axes.index(xi.axis)
        if steps[k] != 1:
            self.block(xi, f"{self.where(node)}: strided slice over channels")
            return
        s, e, _ = slice(starts[k], ends[k]).indices(xi.size)
        out = ChanInfo(xi.axis, xi.ids[s:max(s, e)])
        self.set(node.outputs[0], out)
        self.node_edits.append(("slice", node, (k, xi, s, max(s, e))))

    def op_Pad(self, node: gs.Node) -> None:
        xi = self.get(node.inputs[0])
        self._check_dims_inputs(node, skip=(0,))
        if xi is None:
            return
        r = self.rank(node.inputs[0])
        if "pads" in node.attrs:
            pads = list(node.attrs["pads"])
        else:
            v = self.const(node.inputs[1]) if len(node.inputs) > 1 else None
            pads = None if v is None else v.reshape(-1).tolist()
        if len(node.inputs) > 3 and node.inputs[3].name:
            av = self.const(node.inputs[3])
            axes = None if av is None else [int(a) % (r or 1) for a in av.reshape(-1).tolist()]
        else:
            axes = list(range(r)) if r is not None else None
        if pads is None or axes is None:
            self.block(xi, f"{self.where(node)}: computed pads")
            return
        n = len(axes)
        if xi.axis in axes:
            k = axes.index(xi.axis)
            if pads[k] != 0 or pads[k + n] != 0:
                self.block(xi, f"{self.where(node)} pads the channel axis")
                return
        self.set(node.outputs[0], xi)

    def op_Resize(self, node: gs.Node) -> None:
        xi = self.get(node.inputs[0])
        sizes_idx = 3 if (self.opset >= 11 and node.op == "Resize") else None
        self._check_dims_inputs(node, skip=(0, sizes_idx) if sizes_idx else (0,))
        if xi is None:
            return
        if "axes" in node.attrs:
            self.block(xi, f"{self.where(node)}: axes attribute")
            return
        scales = None
        if "scales" in node.attrs:
            scales = list(node.attrs["scales"])
        else:
            si = 2 if (self.opset >= 11 and node.op == "Resize") else 1
            if si < len(node.inputs) and node.inputs[si].name:
                v = self.const(node.inputs[si])
                if v is None:
                    self.block(xi, f"{self.where(node)}: computed scales")
                    return
                scales = v.reshape(-1).tolist() if v.size else None
        if scales is not None:
            if abs(scales[xi.axis] - 1.0) > 1e-9:
                self.block(xi, f"{self.where(node)} scales the channel axis")
                return
        elif sizes_idx is not None and sizes_idx < len(node.inputs) and node.inputs[sizes_idx].name:
            t = node.inputs[sizes_idx]
            dims = self.dims_for(t)
            if dims is None and self.const(t) is not None:
                v = self.const(t).reshape(-1)
                direct = isinstance(t, gs.Constant) or (len(t.inputs) == 1 and t.inputs[0].op == "Constant")
                dims = [Dim(int(x), (), (node, sizes_idx, k) if direct else None) for k, x in enumerate(v.tolist())]
            if dims is None or len(dims) <= xi.axis:
                self.block(xi, f"{self.where(node)}: computed sizes")
                return
            d = dims[xi.axis]
            if not self._dim_follows(d, xi, node):
                return
            for k, dd in enumerate(dims):
                if k != xi.axis and dd.deps:
                    self.block(xi, f"{self.where(node)}: sizes depend on channel counts")
                    return
        self.set(node.outputs[0], xi)

    op_Upsample = op_Resize

    def _dim_follows(self, d: Dim, out: ChanInfo, node: gs.Node) -> bool:
        """Make shape element ``d`` equal the kept size of ``out`` after pruning (or block)."""
        if d.shape_of is not None:
            src = self.info.get(d.shape_of[0])
            if src is not None and src.axis == d.shape_of[1] and (src.ids is out.ids or np.array_equal(src.ids,
                                                                                                      out.ids)):
                return True
        if d.src is not None and not d.deps:
            n, i, flat = d.src
            self.set_const_elem(n, i, flat, out)
            return True
        self.block(out, f"{self.where(node)}: a shape element for the channel axis cannot be rewritten")
        return False

    # ------------------------------------------------------------------ reshapes

    def _map_reshape(self, in_shape: Shape, axis: int, out_shape: Shape
                     ) -> tuple[int, int, int] | None:
        """(output axis, i0, i1): output dim ``o`` is input dims [i0, i1) merged, with i0 <= axis < i1."""
        c = in_shape[axis]
        cands = []
        for i0 in range(axis, -1, -1):
            pre = math.prod(in_shape[:i0])
            for i1 in range(axis + 1, len(in_shape) + 1):
                block = math.prod(in_shape[i0:i1])
                for o in range(len(out_shape)):
                    if out_shape[o] == block and math.prod(out_shape[:o]) == pre:
                        cands.append((i1 - i0, o, i0, i1))
        if not cands or c == 0:
            return None
        cands.sort()
        _, o, i0, i1 = cands[0]
        return o, i0, i1

    def op_reshape_like(self, node: gs.Node) -> None:
        self._reshape(node)

    def op_Reshape(self, node: gs.Node) -> None:
        self._reshape(node)

    def _reshape(self, node: gs.Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        xi = self.get(x)
        if node.op in ("Squeeze", "Unsqueeze"):
            self._check_dims_inputs(node, skip=(0,))
        if xi is None:
            if node.op == "Reshape":
                self._check_dims_inputs(node, skip=(0,))
            return
        s_in, s_out = self.shape(x), self.shape(y)
        if s_in is None or s_out is None or s_in[xi.axis] != xi.size:
            self.block(xi, f"{self.where(node)}: unknown shapes")
            return
        mapped = self._map_reshape(s_in, xi.axis, s_out)
        if mapped is None:
            self.block(xi, f"{self.where(node)} splits the channel axis (e.g. heads or a channel shuffle)")
            return
        o, i0, i1 = mapped
        if i1 - i0 == 1:
            out = ChanInfo(o, xi.ids)
        else:
            block = list(s_in[i0:i1])
            view = [1] * len(block)
            view[xi.axis - i0] = xi.size
            out = ChanInfo(o, np.broadcast_to(xi.ids.reshape(view), block).reshape(-1).copy())
        if node.op == "Reshape" and not self._reshape_target_ok(node, xi, out, s_in, s_out, i0, i1):
            return
        self.set(y, out)

    def _reshape_target_ok(self, node: gs.Node, xi: ChanInfo, out: ChanInfo, s_in: Shape, s_out: Shape,
                           i0: int, i1: int) -> bool:
        t = node.inputs[1] if len(node.inputs) > 1 else None
        if t is None:
            self.block(xi, f"{self.where(node)}: shape attribute")
            return False
        dims = self.dims_for(t) if not isinstance(t, gs.Constant) else None
        if dims is None:
            v = self.const(t)
            if v is None:
                self.block(xi, f"{self.where(node)}: target shape computed by ops the analysis cannot follow")
                return False
            direct = isinstance(t, gs.Constant) or (len(t.inputs) == 1 and t.inputs[0].op == "Constant")
            dims = [Dim(int(d), (), (node, 1, k) if direct else None) for k, d in enumerate(v.reshape(-1).tolist())]
            if not direct:  # a folded chain of constants feeding only this Reshape: rewrite at the Reshape
                dims = [Dim(d.value, (), (node, 1, k)) for k, d in enumerate(dims)]
        allowzero = bool(node.attrs.get("allowzero", 0))
        if len(dims) != len(s_out):
            self.block(xi, f"{self.where(node)}: target rank mismatch")
            return False
        for p, d in enumerate(dims):
            if p == out.axis:
                continue
            if d.deps or (d.value == 0 and not allowzero and p == xi.axis):
                self.block(xi, f"{self.where(node)}: target shape depends on channel counts")
                self._block_dims(t, f"{self.where(node)}: target shape")
                return False
        d = dims[out.axis]
        if d.value == -1:
            return True
        if d.value == 0 and not allowzero:
            if out.axis == xi.axis and i1 - i0 == 1:
                return True
            self.block(xi, f"{self.where(node)}: copied dim moves")
            return False
        if d.value is not None and d.value != s_out[out.axis]:
            self.block(xi, f"{self.where(node)}: target disagrees with shapes")
            return False
        return self._dim_follows(d, out, node)

    # ------------------------------------------------------------------ results

    def groups(self) -> list[dict]:
        """Connected spaces -> groups; each with its classes (roots), blocked reasons, members."""
        roots = self.uf.roots()
        n_spaces = len(self.spaces)
        parent = list(range(n_spaces))

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        space_of = np.asarray(self.space_of, dtype=np.int64)
        if roots.size:
            for e in np.nonzero(roots != np.arange(roots.size))[0].tolist():
                ra, rb = find(int(space_of[e])), find(int(space_of[roots[e]]))
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
        comp: dict[int, list[int]] = {}
        for s in range(n_spaces):
            comp.setdefault(find(s), []).append(s)
        out = []
        for gid, (_, spaces) in enumerate(sorted(comp.items())):
            elems = np.concatenate([np.arange(self.spaces[s].start, self.spaces[s].start + self.spaces[s].size)
                                    for s in spaces]) if spaces else np.zeros(0, np.int64)
            classes = np.unique(roots[elems]) if elems.size else elems
            reasons = sorted({self.blocked[e] for e in elems.tolist() if e in self.blocked})
            out.append({
                "id": gid,
                "spaces": spaces,
                "classes": classes,
                "labels": [self.spaces[s].label for s in spaces if self.spaces[s].op != "fixed"],
                "ops": sorted({self.spaces[s].op for s in spaces}),
                "blocked": reasons,
            })
        return out

    # ------------------------------------------------------------------ apply

    def apply(self, removed: np.ndarray, names: NameGen) -> dict[tuple[int, int], gs.Constant]:
        """Slice the graph: ``removed[root]`` is True for every class to drop. Returns new constants."""
        roots = self.uf.roots()

        def keep(info: ChanInfo) -> np.ndarray:
            return ~removed[roots[info.ids]]

        new_consts: dict[tuple[int, int], gs.Constant] = {}
        for key, edit in self.edits.items():
            node, index = edit.node, edit.index
            t = node.inputs[index]
            value = self.const(t)
            if value is None:
                raise RuntimeError(f"constant input {index} of {self.where(node)} vanished")
            changed = False
            for axis, info in edit.slices:
                m = keep(info)
                if m.all():
                    continue
                if value.shape[axis] != m.size:
                    raise RuntimeError(f"{self.where(node)} input {index}: axis {axis} has {value.shape[axis]} "
                                       f"entries, channel map has {m.size}")
                value = np.take(value, np.nonzero(m)[0], axis=axis)
                changed = True
            if edit.sets:
                flat = value.reshape(-1).copy()
                for k, info in edit.sets:
                    n = int(keep(info).sum())
                    if flat[k] != n:
                        flat[k] = n
                        changed = True
                value = flat.reshape(value.shape)
            if changed:
                base = t.name or f"{node.name}_in{index}"
                c = gs.Constant(names(f"{base}_pruned"), np.ascontiguousarray(value))
                node.inputs[index] = c
                new_consts[key] = c
        for kind, node, payload in self.node_edits:
            if kind == "group":
                node.attrs["group"] = int(keep(payload).sum())
            elif kind == "split":
                sizes = np.asarray([int(keep(i).sum()) for i in payload], dtype=np.int64)
                if "split" in node.attrs or self.opset < 13:
                    node.attrs["split"] = [int(s) for s in sizes]
                else:
                    c = gs.Constant(names(f"{node.name or 'split'}_sizes"), sizes)
                    if len(node.inputs) > 1:
                        node.inputs[1] = c
                    else:
                        node.inputs.append(c)
                    node.attrs.pop("num_outputs", None)
            elif kind == "slice":
                k, info, s, e = payload
                m = keep(info)
                ns = int(m[:s].sum())
                ne = ns + int(m[s:e].sum())
                if "starts" in node.attrs:
                    starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
                    starts[k], ends[k] = ns, ne
                    node.attrs["starts"], node.attrs["ends"] = starts, ends
                else:
                    for idx, v in ((1, ns), (2, ne)):
                        arr = np.asarray(self.const(node.inputs[idx])).reshape(-1).copy()
                        arr[k] = v
                        what = "starts" if idx == 1 else "ends"
                        node.inputs[idx] = gs.Constant(names(f"{node.name or 'slice'}_{what}"), arr)
        return new_consts

    def reset_shapes(self) -> None:
        """Forget every intermediate shape: pruning changed them; the manager re-infers."""
        ios = {id(t) for t in list(self.graph.inputs) + list(self.graph.outputs)}
        for g in all_graphs(self.graph):
            for t in g.tensors().values():
                if isinstance(t, gs.Variable) and id(t) not in ios:
                    t.shape = None


# --------------------------------------------------------------------------- MACs


def count_macs(model: onnx.ModelProto, input_shapes: dict[str, Shape], feed: dict | None = None
               ) -> tuple[int, dict[str, int]]:
    """Multiply-accumulates of Conv/ConvTranspose/Gemm/MatMul nodes, from concrete shapes."""
    shapes = concrete_shapes(model, input_shapes, feed)
    from onnx import numpy_helper

    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    weights[n.output[0]] = tuple(numpy_helper.to_array(a.t).shape)
    shapes = {**weights, **shapes}
    per: dict[str, int] = {}
    for k, n in enumerate(model.graph.node):
        name = n.name or f"{n.op_type}_{k}"
        if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            ins = [shapes.get(i) for i in n.input[:2]]
            out = shapes.get(n.output[0])
            if any(s is None for s in ins) or out is None:
                continue
            w = ins[1]
            if n.op_type == "Conv":
                per[name] = math.prod(out) * math.prod(w[1:])
            elif n.op_type == "ConvTranspose":
                per[name] = math.prod(ins[0]) * math.prod(w[1:])
            elif n.op_type == "Gemm":
                trans_a = any(a.name == "transA" and a.i for a in n.attribute)
                k_dim = ins[0][0] if trans_a else ins[0][1]
                per[name] = math.prod(out) * k_dim
            else:
                per[name] = math.prod(out) * ins[0][-1]
    return sum(per.values()), per


def count_params(graph: gs.Graph) -> int:
    """Float weights held by the graph (initializers and Constant nodes)."""
    total = 0
    seen: set[int] = set()
    for g in all_graphs(graph):
        for t in g.tensors().values():
            if isinstance(t, gs.Constant) and id(t) not in seen and t.outputs:
                seen.add(id(t))
                if np.issubdtype(t.dtype, np.floating):
                    total += int(np.prod(t.shape))
        for n in g.nodes:
            if n.op == "Constant" and isinstance(n.attrs.get("value"), gs.Constant) and n.outputs[0].outputs:
                v = n.attrs["value"]
                if np.issubdtype(v.dtype, np.floating):
                    total += int(np.prod(v.shape))
    return total
