"""Structural simplification rules: remove nodes that do nothing, merge chains of layout ops. EXACT.

Every rule is ``rule(node, rw) -> str | None`` (see :class:`~passes.simplify_core.Rewriter`): None
when it rewrote, else the reason it does not apply. The algebra each one applies:

- identity:            Identity(x)                                   -> x
- dropout:             Dropout(x) in inference mode, mask unused     -> x
- cast_noop:           Cast(x, to=dtype(x))                          -> x
- cast_roundtrip:      Cast(Cast(x, wide), dtype(x)), wide lossless  -> x
- reshape_noop:        Reshape(x, s), s resolves to shape(x)         -> x
- reshape_symbolic:    Reshape(x, [d0(x), d1(x), 12, 32]) computed   -> Reshape(x, [0, 0, 12, 32])
- reshape_chain:       Reshape(R(x), s), R in Reshape/Flatten/(Un)Squeeze, s without copy-zeros -> Reshape(x, s)
- expand_noop:         Expand(x, s), broadcast(shape(x), s) == shape(x) -> x
- transpose_noop:      Transpose(x, perm=identity)                   -> x
- transpose_chain:     Transpose(Transpose(x, p), q)                 -> Transpose(x, p[q])
- slice_noop:          Slice(x) over the full range with step 1      -> x
- concat_single:       Concat(x)                                     -> x
- concat_drop_empty:   Concat(..., e, ...) with e empty on the axis  -> Concat(...)
- pad_noop:            Pad(x, pads=0)                                -> x
- tile_noop:           Tile(x, 1...)                                 -> x
- variadic_single:     Sum/Max/Min/Mean(x)                           -> x
- arith_identity:      x*1, 1*x, x+0, 0+x, x-0, x/1, x^1             -> x   (the constant must not broadcast x)
- where_const:         Where(all-true, a, b) -> a; Where(all-false, a, b) -> b  (no broadcasting of the kept side)
- unsqueeze_chain:     Unsqueeze(Unsqueeze(x, a), b)                 -> Unsqueeze(x, a+b)
- squeeze_chain:       Squeeze(Squeeze(x, a), b)                     -> Squeeze(x, a+b)
- squeeze_unsqueeze:   Squeeze(Unsqueeze(x, a), a) / Unsqueeze(Squeeze(x, a), a) -> x
- reshape_static_chain: (Un)Squeeze/Flatten(R(x)) with a static output shape -> Reshape(x, shape)
- reduce_unit:         Reduce{Mean,Sum,Max,Min,Prod}(x) over axes of size 1 -> x (keepdims) / Squeeze(x)
- reduce_keepdims:     Unsqueeze(Reduce(x, a, keepdims=0), a)        -> Reduce(x, a, keepdims=1)
Keeps invariant: graph input/output names; no value any surviving tensor holds changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .simplify_core import (
    Rewriter,
    attr_int,
    broadcast_keeps,
    const_nbytes,
    is_known,
    known_value,
    slice_indices,
)

log = logging.getLogger(__name__)

Rule = Callable[[gs.Node, Rewriter], "str | None"]

#: Cast(Cast(x, wide), narrow) is x when every value of the narrow type survives the wide one
_LOSSLESS = {
    np.dtype(np.bool_): {np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32,
                                                np.int64, np.uint64, np.float16, np.float32, np.float64)},
    np.dtype(np.int8): {np.dtype(t) for t in (np.int16, np.int32, np.int64, np.float16, np.float32, np.float64)},
    np.dtype(np.uint8): {np.dtype(t) for t in (np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
                                                np.float16, np.float32, np.float64)},
    np.dtype(np.int16): {np.dtype(t) for t in (np.int32, np.int64, np.float32, np.float64)},
    np.dtype(np.uint16): {np.dtype(t) for t in (np.int32, np.uint32, np.int64, np.uint64, np.float32, np.float64)},
    np.dtype(np.int32): {np.dtype(t) for t in (np.int64, np.float64)},
    np.dtype(np.uint32): {np.dtype(t) for t in (np.int64, np.uint64, np.float64)},
    np.dtype(np.float16): {np.dtype(t) for t in (np.float32, np.float64)},
    np.dtype(np.float32): {np.dtype(np.float64)},
}


def _input(node: gs.Node, i: int) -> gs.Tensor | None:
    if i < len(node.inputs) and node.inputs[i].name:
        return node.inputs[i]
    return None


def _axes(node: gs.Node, rw: Rewriter) -> list[int] | None:
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if _input(node, 1) is None:
        return None
    return rw.sym.const_ints(node.inputs[1])


def _set_axes(node: gs.Node, rw: Rewriter, axes: list[int]) -> None:
    if rw.opset >= 13:
        c = rw.const(np.array(axes, dtype=np.int64), f"{node.name or node.op}_axes")
        if len(node.inputs) > 1:
            node.inputs[1] = c
        else:
            node.inputs.append(c)
        node.attrs.pop("axes", None)
    else:
        node.attrs["axes"] = list(axes)


# --------------------------------------------------------------------------- pass-through


def rule_identity(node: gs.Node, rw: Rewriter) -> str | None:
    return rw.bypass(node)


def rule_dropout(node: gs.Node, rw: Rewriter) -> str | None:
    if len(node.outputs) > 1 and (node.outputs[1].outputs or rw.is_output(node.outputs[1])):
        return "mask output is used"
    mode = _input(node, 2)
    if mode is not None:
        v = known_value(mode)
        if v is None or bool(np.asarray(v).any()):
            return "training_mode is not a constant false"
    if attr_int(node, "is_test", 1) == 0 and rw.opset < 7:
        return "training mode (is_test=0)"
    return rw.bypass(node)


def rule_cast_noop(node: gs.Node, rw: Rewriter) -> str | None:
    src = rw.shapes.dtype(node.inputs[0])
    if src is None:
        return "input dtype unknown"
    to = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))
    if to != src:
        return "casts to another type"
    return rw.bypass(node)


def rule_cast_roundtrip(node: gs.Node, rw: Rewriter) -> str | None:
    inner = rw.producer(node.inputs[0])
    if inner is None or inner.op != "Cast":
        return "input is not a Cast"
    x = inner.inputs[0]
    src = rw.shapes.dtype(x)
    wide = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(inner.attrs["to"])))
    to = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))
    if src is None or src != to:
        return "does not cast back to the original type"
    if wide not in _LOSSLESS.get(src, set()):
        return f"{src} -> {wide} is not lossless"
    return rw.forward(node, x)


def rule_variadic_single(node: gs.Node, rw: Rewriter) -> str | None:
    if len(node.inputs) != 1:
        return "more than one input"
    return rw.bypass(node)


# --------------------------------------------------------------------------- reshape family


def _reshape_target(node: gs.Node, rw: Rewriter) -> list | None:
    """Entries of a Reshape target (ints, or symbols) - None when unknown."""
    if "shape" in node.attrs:
        return [int(d) for d in node.attrs["shape"]]
    t = _input(node, 1)
    if t is None:
        return None
    v = rw.sym.get(t)
    return None if v is None or v[1] else list(v[0])


def _resolve_target(node: gs.Node, rw: Rewriter) -> tuple | None:
    """The output shape of a Reshape as symbolic dims, when every entry is determined."""
    target = _reshape_target(node, rw)
    shape = rw.shapes.shape(node.inputs[0])
    if target is None or shape is None:
        return None
    allowzero = attr_int(node, "allowzero", 0)
    out = []
    for i, d in enumerate(target):
        if is_known(d) and d == 0 and not allowzero:
            if i >= len(shape):
                return None
            out.append(shape[i])
        else:
            out.append(d)
    if sum(1 for d in out if is_known(d) and d == -1) == 1:
        rest = [d for d in out if not (is_known(d) and d == -1)]
        # -1 matches the input's last dim when everything else lines up with the input's leading dims
        if len(out) == len(shape) and all(a == b for a, b in zip(out, shape) if not (is_known(a) and a == -1)):
            out = [shape[i] if (is_known(d) and d == -1) else d for i, d in enumerate(out)]
        elif all(isinstance(d, int) for d in shape) and all(isinstance(d, int) for d in rest):
            known = int(np.prod(rest, dtype=np.int64))
            total = int(np.prod(shape, dtype=np.int64))
            if known == 0 or total % known:
                return None
            out = [total // known if (is_known(d) and d == -1) else d for d in out]
        else:
            return None
    return tuple(out)


def rule_reshape_noop(node: gs.Node, rw: Rewriter) -> str | None:
    out = _resolve_target(node, rw)
    shape = rw.shapes.shape(node.inputs[0])
    if out is None or shape is None:
        return "target or input shape not known"
    if tuple(out) != tuple(shape):
        return "changes the shape"
    return rw.bypass(node)


def rule_reshape_symbolic(node: gs.Node, rw: Rewriter) -> str | None:
    t = _input(node, 1)
    if t is None or isinstance(t, gs.Constant):
        return "target already constant"
    v = rw.sym.get(t)
    if v is None or v[1]:
        return "target not computed from shapes"
    if attr_int(node, "allowzero", 0):
        return "allowzero=1: a copy-zero would be read as a literal 0"
    shape = rw.shapes.shape(node.inputs[0])
    entries = list(v[0])
    new: list[int | None] = []
    for i, e in enumerate(entries):
        if is_known(e):
            new.append(int(e))
        elif shape is not None and i < len(shape) and shape[i] == e:
            new.append(0)  # copy the input's dim i: the same value the graph computed
        else:
            new.append(None)
    unresolved = [i for i, e in enumerate(new) if e is None]
    if len(unresolved) > 1:
        return "more than one target entry is not known"
    if unresolved:
        others = [e for e in new if e is not None]
        # -1 is only safe when no other entry can be 0 at run time (it would divide by zero)
        if -1 in others or not all(e > 0 for e in others):
            return "an entry is unknown and -1 would not be exact"
        new[unresolved[0]] = -1
    node.inputs[1] = rw.const(np.array(new, dtype=np.int64), f"{node.name or 'Reshape'}_shape")
    return None


_RESHAPE_LIKE = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def rule_reshape_chain(node: gs.Node, rw: Rewriter) -> str | None:
    inner = rw.producer(node.inputs[0])
    if inner is None or inner.op not in _RESHAPE_LIKE or len(inner.outputs) != 1:
        return "input is not produced by a reshaping op"
    t = _input(node, 1)
    target = known_value(t) if t is not None else None
    if target is None:
        return "target not constant"
    if not attr_int(node, "allowzero", 0) and np.any(np.asarray(target) == 0):
        return "target copies dims of the intermediate"
    node.inputs[0] = inner.inputs[0]
    return None


def rule_expand_noop(node: gs.Node, rw: Rewriter) -> str | None:
    shape = rw.shapes.shape(node.inputs[0])
    t = _input(node, 1)
    v = rw.sym.get(t) if t is not None else None
    if shape is None or v is None or v[1]:
        return "shapes not known"
    target = list(v[0])
    if len(target) > len(shape):
        return "raises the rank"
    for d, s in zip(reversed(target), reversed(shape)):
        if not ((is_known(d) and d == 1) or d == s):
            return "broadcasts a dim"
    return rw.bypass(node)


# --------------------------------------------------------------------------- transpose


def _perm(node: gs.Node, rw: Rewriter) -> list[int] | None:
    perm = node.attrs.get("perm")
    if perm is not None:
        return [int(p) for p in perm]
    rank = rw.shapes.rank(node.inputs[0])
    return None if rank is None else list(range(rank - 1, -1, -1))


def rule_transpose_noop(node: gs.Node, rw: Rewriter) -> str | None:
    perm = _perm(node, rw)
    if perm is None:
        return "rank unknown"
    if perm != list(range(len(perm))):
        return "permutes axes"
    return rw.bypass(node)


def rule_transpose_chain(node: gs.Node, rw: Rewriter) -> str | None:
    inner = rw.producer(node.inputs[0])
    if inner is None or inner.op != "Transpose":
        return "input is not a Transpose"
    p, q = _perm(inner, rw), _perm(node, rw)
    if p is None or q is None or len(p) != len(q):
        return "perms unknown"
    node.inputs[0] = inner.inputs[0]
    node.attrs["perm"] = [p[i] for i in q]  # out[i] = mid[q[i]] = x[p[q[i]]]
    return None


# --------------------------------------------------------------------------- slicing and padding


def rule_slice_noop(node: gs.Node, rw: Rewriter) -> str | None:
    shape = rw.shapes.shape(node.inputs[0])
    if "starts" in node.attrs:
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes = list(node.attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = rw.sym.const_ints(_input(node, 1))
        ends = rw.sym.const_ints(_input(node, 2))
        axes = rw.sym.const_ints(_input(node, 3)) if _input(node, 3) else list(range(len(starts or [])))
        steps = rw.sym.const_ints(_input(node, 4)) if _input(node, 4) else [1] * len(starts or [])
    if starts is None or ends is None or axes is None or steps is None:
        return "parameters not constant"
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st != 1:
            return "step is not 1"
        dim = None
        if shape is not None and -len(shape) <= a < len(shape):
            dim = shape[a]
        if isinstance(dim, int):
            r = slice_indices(dim, s, e, 1)
            if r.start != 0 or r.stop != dim:
                return "selects part of an axis"
        elif not (s == 0 and e >= 2**31 - 1):
            return "selects part of an axis (or the axis size is unknown)"
    return rw.bypass(node)


def rule_concat_single(node: gs.Node, rw: Rewriter) -> str | None:
    if len(node.inputs) != 1:
        return "more than one input"
    return rw.bypass(node)


def rule_concat_drop_empty(node: gs.Node, rw: Rewriter) -> str | None:
    if len(node.inputs) < 2:
        return "single input"
    axis = attr_int(node, "axis", 0)
    keep = []
    for t in node.inputs:
        shape = rw.shapes.shape(t)
        if shape is not None and -len(shape) <= axis < len(shape) and shape[axis] == 0:
            continue
        keep.append(t)
    if len(keep) == len(node.inputs) or not keep:
        return "no empty input (or only empty ones)"
    node.inputs.clear()
    node.inputs.extend(keep)
    return None


def _pads(node: gs.Node, rw: Rewriter) -> list[int] | None:
    if "pads" in node.attrs:
        return [int(p) for p in node.attrs["pads"]]
    return rw.sym.const_ints(_input(node, 1))


def rule_pad_noop(node: gs.Node, rw: Rewriter) -> str | None:
    pads = _pads(node, rw)
    if pads is None:
        return "pads not constant"
    if any(pads):
        return "pads something"
    return rw.bypass(node)


def rule_tile_noop(node: gs.Node, rw: Rewriter) -> str | None:
    reps = rw.sym.const_ints(_input(node, 1))
    if reps is None or any(r != 1 for r in reps):
        return "repeats are not all 1"
    return rw.bypass(node)


# --------------------------------------------------------------------------- arithmetic identities

#: op -> (identity element, which operand positions may hold it)
_NEUTRAL = {"Mul": (1, (0, 1)), "Add": (0, (0, 1)), "Sub": (0, (1,)), "Div": (1, (1,)), "Pow": (1, (1,))}


def rule_arith_identity(node: gs.Node, rw: Rewriter) -> str | None:
    neutral, positions = _NEUTRAL[node.op]
    if len(node.inputs) != 2:
        return "not binary"
    for pos in positions:
        c = node.inputs[pos]
        other = node.inputs[1 - pos]
        if isinstance(c, gs.Constant) and const_nbytes(c) > 1 << 16:
            continue
        v = known_value(c)
        if v is None or v.size == 0:
            continue
        if v.dtype.kind not in "iuf" or not np.all(v == neutral):
            continue
        if not broadcast_keeps(rw.shapes.shape(other), v.shape):
            return "the constant would broadcast the other operand"
        return rw.bypass(node, keep_input=1 - pos)
    return "no operand is the identity element"


def rule_where_const(node: gs.Node, rw: Rewriter) -> str | None:
    v = known_value(node.inputs[0])
    if v is None:
        return "condition not constant"
    if np.all(v):
        keep = 1
    elif not np.any(v):
        keep = 2
    else:
        return "condition is mixed"
    out_shape = rw.shapes.shape(node.outputs[0])
    kept_shape = rw.shapes.shape(node.inputs[keep])
    if out_shape is None or kept_shape is None or tuple(out_shape) != tuple(kept_shape):
        return "the kept operand would be broadcast"
    return rw.bypass(node, keep_input=keep)


# --------------------------------------------------------------------------- squeeze / unsqueeze


def _norm(axes: list[int], rank: int) -> list[int] | None:
    out = [a + rank if a < 0 else a for a in axes]
    if any(a < 0 or a >= rank for a in out) or len(set(out)) != len(out):
        return None
    return sorted(out)


def rule_unsqueeze_chain(node: gs.Node, rw: Rewriter) -> str | None:
    inner = rw.producer(node.inputs[0])
    if inner is None or inner.op != "Unsqueeze":
        return "input is not an Unsqueeze"
    x = inner.inputs[0]
    rank = rw.shapes.rank(x)
    a, b = _axes(inner, rw), _axes(node, rw)
    if rank is None or a is None or b is None:
        return "rank or axes unknown"
    a = _norm(a, rank + len(a))
    b = _norm(b, rank + len(a or []) + len(b))
    if a is None or b is None:
        return "bad axes"
    # mark which positions of the final shape are new: first after inner, then after outer
    mid = [False] * (rank + len(a))
    for p in a:
        mid[p] = True
    final: list[bool] = []
    it = iter(mid)
    for i in range(rank + len(a) + len(b)):
        final.append(True if i in b else next(it))
    node.inputs[0] = x
    _set_axes(node, rw, [i for i, new in enumerate(final) if new])
    return None


def rule_squeeze_chain(node: gs.Node, rw: Rewriter) -> str | None:
    inner = rw.producer(node.inputs[0])
    if inner is None or inner.op != "Squeeze":
        return "input is not a Squeeze"
    x = inner.inputs[0]
    rank = rw.shapes.rank(x)
    a, b = _axes(inner, rw), _axes(node, rw)
    if rank is None or a is None or b is None:
        return "rank or axes unknown"
    a = _norm(a, rank)
    if a is None:
        return "bad axes"
    b = _norm(b, rank - len(a))
    if b is None:
        return "bad axes"
    remaining = [i for i in range(rank) if i not in a]
    combined = sorted(a + [remaining[j] for j in b])
    node.inputs[0] = x
    _set_axes(node, rw, combined)
    return None


def rule_squeeze_unsqueeze(node: gs.Node, rw: Rewriter) -> str | None:
    inner = rw.producer(node.inputs[0])
    pair = {"Squeeze": "Unsqueeze", "Unsqueeze": "Squeeze"}[node.op]
    if inner is None or inner.op != pair:
        return f"input is not an {pair}"
    x = inner.inputs[0]
    rank = rw.shapes.rank(x)
    a, b = _axes(inner, rw), _axes(node, rw)
    if rank is None or a is None or b is None:
        return "rank or axes unknown"
    if inner.op == "Unsqueeze":  # Squeeze(Unsqueeze(x, a), b): identity when b removes exactly a
        na, nb = _norm(a, rank + len(a)), _norm(b, rank + len(a))
    else:  # Unsqueeze(Squeeze(x, a), b): identity when b puts back exactly a
        na, nb = _norm(a, rank), _norm(b, rank)
    if na is None or nb is None or na != nb:
        return "axes differ"
    return rw.forward(node, x)


# --------------------------------------------------------------------------- reductions

#: reductions that return their input when every reduced axis has size 1 (x/1, x*1, max(x), ...)
_UNIT_REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd")


def _reduce_axes(node: gs.Node, rw: Rewriter, rank: int) -> list[int] | None:
    """Normalized reduced axes (all axes when none are given), or None when unknown / a no-op."""
    if "axes" in node.attrs:
        axes = [int(a) for a in node.attrs["axes"]]
    elif _input(node, 1) is not None:
        axes = rw.sym.const_ints(node.inputs[1])
        if axes is None:
            return None
    else:
        axes = []
    if not axes:
        if attr_int(node, "noop_with_empty_axes", 0):
            return None
        axes = list(range(rank))
    return _norm(axes, rank)


def rule_reduce_unit(node: gs.Node, rw: Rewriter) -> str | None:
    shape = rw.shapes.shape(node.inputs[0])
    if shape is None:
        return "rank unknown"
    axes = _reduce_axes(node, rw, len(shape))
    if axes is None:
        return "axes unknown"
    if any(shape[a] != 1 for a in axes):
        return "reduces an axis longer than 1"
    if attr_int(node, "keepdims", 1):
        return rw.bypass(node)
    # keepdims=0: the reduction only drops the unit axes
    node.op = "Squeeze"
    node.attrs = {}
    x = node.inputs[0]
    node.inputs.clear()
    if rw.opset >= 13:
        node.inputs.extend([x, rw.const(np.array(axes, np.int64), f"{node.name or 'Squeeze'}_axes")])
    else:
        node.inputs.append(x)
        node.attrs["axes"] = axes
    return None


def rule_reduce_keepdims(node: gs.Node, rw: Rewriter) -> str | None:
    inner = rw.producer(node.inputs[0])
    if inner is None or inner.op not in _UNIT_REDUCE + ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                                                        "ReduceSumSquare") or attr_int(inner, "keepdims", 1):
        return "input is not a reduction with keepdims=0"
    if not rw.sole_consumer(inner.outputs[0], node):
        return "the reduction's output has other readers"
    rank = rw.shapes.rank(inner.inputs[0])
    b = _axes(node, rw)
    if rank is None or b is None:
        return "rank or axes unknown"
    a = _reduce_axes(inner, rw, rank)
    nb = _norm(b, rank)
    if a is None or nb is None or a != nb:
        return "unsqueezes other axes than the reduced ones"
    # Unsqueeze(Reduce(x, a, keepdims=0), a) == Reduce(x, a, keepdims=1)
    inner.attrs["keepdims"] = 1
    rw.take_output(inner, node)
    return None


_RESHAPES = ("Reshape", "Squeeze", "Unsqueeze", "Flatten")


def rule_reshape_static_chain(node: gs.Node, rw: Rewriter) -> str | None:
    """R2(R1(x)) with a static result shape -> Reshape(x, shape): layout ops only move no data."""
    inner = rw.producer(node.inputs[0])
    if inner is None or inner.op not in _RESHAPES or not inner.inputs:
        return "input is not produced by a reshaping op"
    out = rw.shapes.static_shape(node.outputs[0])
    if out is None or any(d == 0 for d in out):
        return "output shape not static"
    target = rw.const(np.array(out, np.int64), f"{node.name or node.op}_shape")
    x = inner.inputs[0]
    node.op = "Reshape"
    node.attrs = {}
    node.inputs.clear()
    node.inputs.extend([x, target])
    return None


#: op -> rules tried in order (the first that applies wins for this visit)
RULES: dict[str, list[tuple[str, Rule]]] = {
    "Identity": [("identity", rule_identity)],
    "Dropout": [("dropout", rule_dropout)],
    "Cast": [("cast_noop", rule_cast_noop), ("cast_roundtrip", rule_cast_roundtrip)],
    "Reshape": [("reshape_symbolic", rule_reshape_symbolic), ("reshape_noop", rule_reshape_noop),
                ("reshape_chain", rule_reshape_chain)],
    "Expand": [("expand_noop", rule_expand_noop)],
    "Transpose": [("transpose_noop", rule_transpose_noop), ("transpose_chain", rule_transpose_chain)],
    "Slice": [("slice_noop", rule_slice_noop)],
    "Concat": [("concat_single", rule_concat_single), ("concat_drop_empty", rule_concat_drop_empty)],
    "Pad": [("pad_noop", rule_pad_noop)],
    "Tile": [("tile_noop", rule_tile_noop)],
    "Sum": [("variadic_single", rule_variadic_single)],
    "Max": [("variadic_single", rule_variadic_single)],
    "Min": [("variadic_single", rule_variadic_single)],
    "Mean": [("variadic_single", rule_variadic_single)],
    "Mul": [("arith_identity", rule_arith_identity)],
    "Add": [("arith_identity", rule_arith_identity)],
    "Sub": [("arith_identity", rule_arith_identity)],
    "Div": [("arith_identity", rule_arith_identity)],
    "Pow": [("arith_identity", rule_arith_identity)],
    "Where": [("where_const", rule_where_const)],
    "Unsqueeze": [("squeeze_unsqueeze", rule_squeeze_unsqueeze), ("reduce_keepdims", rule_reduce_keepdims),
                  ("unsqueeze_chain", rule_unsqueeze_chain), ("reshape_static_chain", rule_reshape_static_chain)],
    "Squeeze": [("squeeze_unsqueeze", rule_squeeze_unsqueeze), ("squeeze_chain", rule_squeeze_chain),
                ("reshape_static_chain", rule_reshape_static_chain)],
    "Flatten": [("reshape_static_chain", rule_reshape_static_chain)],
    **{op: [("reduce_unit", rule_reduce_unit)] for op in _UNIT_REDUCE},
}
