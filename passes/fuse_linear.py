"""Fusions of per-channel affine ops into the layers next to them. NUMERIC.

Rules (``rule(node, rw) -> str | None`` as in :mod:`simplify_rules`), with the algebra they apply:

- bn_into_conv:       BN(Conv(x, W, b))    -> Conv(x, W*s, (b-mean)*s+B)         s = scale/sqrt(var+eps)
                      (also ConvTranspose with group 1, and Gemm: the columns of B are scaled)
- mul_into_conv:      Conv(x, W, b) * c    -> Conv(x, W*c, b*c)                    c per output channel
- add_into_conv:      Conv(x, W, b) + c    -> Conv(x, W, b+c)      (and - c)       c per output channel
- add_into_gemm:      Gemm(A, B, C) + d    -> Gemm(A, B, beta*C+d) with beta=1     d must not broadcast the output
- matmul_add_to_gemm: MatMul(A, B) + d     -> Gemm(A, B, d)                        A and B 2-D, float
- affine_into_bn:     BN(x)*c -> BN(x, scale*c, B*c);  BN(x)+c -> BN(x, B+c)       c per channel
- pad_into_conv:      Conv(Pad(x, p))      -> Conv(x, pads+p)      Pad constant 0, spatial, p >= 0
- pad_into_pool:      AveragePool(Pad(x, p)) with count_include_pad, MaxPool(Pad(x, p, -inf)) or
                      MaxPool(Pad(x, p, 0)) of a non-negative x -> the pool with pads+p

A fused layer's output tensor keeps the name of the last op it absorbed. New weights are computed
in float64 and rounded once when every operand is a constant; when a weight is not materialized
(e.g. a ConstantOfShape fill the size guard keeps lazy) the new weight is a small constant
subgraph (Mul/Add of static tensors) that onnxruntime folds at load, so nothing is blown up.
Only fuses when the intermediate has no other reader. Kind NUMERIC: float results are reassociated.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from .simplify_core import (
    Rewriter,
    attr_int,
    broadcast_keeps,
    const_nbytes,
    const_value,
    is_default_domain,
    known_value,
)
from .simplify_rules import Rule

log = logging.getLogger(__name__)

#: a per-channel parameter: a float64 vector when known, else a static tensor of shape [C]
Val = np.ndarray | gs.Tensor

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _value(t: gs.Tensor | None) -> np.ndarray | None:
    """Materialized constant values only (no lazy fills: those would be blown up by arithmetic)."""
    return const_value(t)


def _small_known(t: gs.Tensor | None, limit: int = 1 << 16) -> np.ndarray | None:
    """A known value (constant or fill view) of at most ``limit`` elements."""
    if isinstance(t, gs.Constant) and const_nbytes(t) > limit * 8:
        return None
    v = known_value(t)
    return None if v is None or v.size > limit else v


def _base(node: gs.Node) -> str:
    return node.name or node.op


# --------------------------------------------------------------------------- static arithmetic


def _tensor(rw: Rewriter, v: Val, dtype: np.dtype, base: str) -> gs.Tensor:
    if isinstance(v, np.ndarray):
        return rw.const(v.astype(dtype), base)
    return v


def _op(rw: Rewriter, op: str, a: Val, b: Val | None, dtype: np.dtype, base: str) -> Val:
    """``a op b`` on values (float64) or, when either is a tensor, as a static node."""
    if isinstance(a, np.ndarray) and (b is None or isinstance(b, np.ndarray)):
        with np.errstate(all="ignore"):
            if op == "Mul":
                return a * b
            if op == "Add":
                return a + b
            if op == "Sub":
                return a - b
            if op == "Div":
                return a / b
            if op == "Sqrt":
                return np.sqrt(a)
        raise ValueError(op)
    inputs = [_tensor(rw, a, dtype, base + "_c")]
    if b is not None:
        inputs.append(_tensor(rw, b, dtype, base + "_c"))
    return rw.add_node(op, inputs, base=base, dtype=dtype)


def _channel_vector(rw: Rewriter, c: gs.Tensor, out_rank: int, channels: int, axis: int) -> Val | str:
    """``c`` as a per-channel vector of length ``channels`` when it only varies along ``axis``."""
    v = _small_known(c)
    shape = tuple(v.shape) if v is not None else rw.shapes.static_shape(c)
    if shape is None:
        return "shape of the constant unknown"
    if len(shape) > out_rank:
        return "constant has a higher rank"
    for j, d in enumerate(shape):
        out_axis = out_rank - len(shape) + j
        if out_axis == axis:
            if d not in (1, channels):
                return "constant does not match the channel count"
        elif d != 1:
            return "constant varies along a non-channel axis"
    size = int(np.prod(shape, dtype=np.int64))
    if v is not None:
        flat = np.asarray(v, dtype=np.float64).reshape(-1)
        return np.broadcast_to(flat, (channels,)).copy() if size == 1 else flat.copy()
    if not rw.static(c):
        return "operand depends on a graph input"
    dtype = rw.shapes.dtype(c)
    flat = rw.add_node("Reshape", [c, rw.const(np.array([size], np.int64), "shape")], base=f"{c.name}_vec",
                       dtype=dtype)
    if size == 1:
        flat = rw.add_node("Expand", [flat, rw.const(np.array([channels], np.int64), "shape")],
                           base=f"{c.name}_vec", dtype=dtype)
    return flat


def _param(rw: Rewriter, t: gs.Tensor | None, channels: int) -> Val | None:
    """A BatchNormalization parameter: a float64 vector when constant, else the (static) tensor."""
    if t is None:
        return None
    v = _small_known(t)
    if v is not None:
        if v.size != channels:
            return None
        return np.asarray(v, np.float64).reshape(-1)
    return t if rw.static(t) else None


def _scale_weight(rw: Rewriter, w: gs.Tensor, s: Val, axis: int, owner: gs.Node) -> gs.Tensor:
    """``w`` scaled by ``s`` along ``axis``: a new constant when affordable, else a static Mul node."""
    wv = _value(w)
    rank = len(wv.shape) if wv is not None else (rw.shapes.rank(w) or 0)
    shape = [1] * rank
    shape[axis] = -1
    dtype = rw.shapes.dtype(w) or np.dtype(np.float32)
    if wv is not None and isinstance(s, np.ndarray):
        growth = wv.nbytes if (len(w.outputs) > 1 or rw.is_output(w)) else 0
        if rw.folder is None or rw.folder.allow_growth(growth):
            return rw.const((wv.astype(np.float64) * s.reshape(shape)).astype(dtype), f"{w.name}_fused")
    if isinstance(s, np.ndarray):
        s_t = rw.const(s.reshape(shape).astype(dtype), f"{_base(owner)}_scale")
    else:
        s_t = rw.add_node("Reshape", [s, rw.const(np.array(shape, np.int64), "shape")],
                          base=f"{_base(owner)}_scale", dtype=dtype)
    return rw.add_node("Mul", [w, s_t], base=f"{w.name}_fused", dtype=dtype)


def _as_bias(rw: Rewriter, v: Val, dtype: np.dtype, base: str) -> gs.Tensor:
    return _tensor(rw, v, dtype, base)


def _conv_channels(rw: Rewriter, conv: gs.Node) -> tuple[int, int, int] | str:
    """(output channels, weight axis holding them, output rank) of a Conv/ConvTranspose."""
    w = conv.inputs[1]
    wshape = rw.shapes.static_shape(w)
    if wshape is None:
        return "weight shape unknown"
    if conv.op == "Conv":
        return wshape[0], 0, len(wshape)
    if attr_int(conv, "group", 1) != 1:
        return "grouped ConvTranspose"
    return wshape[1], 1, len(wshape)


def _conv_bias(rw: Rewriter, conv: gs.Node, channels: int) -> Val | str | None:
    if len(conv.inputs) < 3 or not conv.inputs[2].name:
        return None
    b = conv.inputs[2]
    v = _small_known(b)
    if v is not None:
        return np.asarray(v, np.float64).reshape(-1)
    return b if rw.static(b) else "bias depends on a graph input"


def _set_bias(conv: gs.Node, bias: gs.Tensor) -> None:
    if len(conv.inputs) >= 3:
        conv.inputs[2] = bias
    else:
        conv.inputs.append(bias)


def _affine_producer(node: gs.Node, rw: Rewriter, ops: tuple[str, ...]) -> tuple[gs.Node, int] | str:
    """The producer (one of ``ops``) of one operand of binary ``node`` and that operand's index."""
    for i in (0, 1):
        if i >= len(node.inputs):
            break
        p = rw.producer(node.inputs[i])
        if p is not None and p.op in ops and is_default_domain(p) and len(p.outputs) >= 1:
            if node.op in ("Sub",) and i != 0:
                continue
            return p, i
    return f"no operand is produced by {'/'.join(ops)}"


# --------------------------------------------------------------------------- BatchNormalization


def _bn_scale_shift(rw: Rewriter, bn: gs.Node, channels: int, dtype: np.dtype) -> tuple[Val, Val] | str:
    scale, bias, mean, var = (_param(rw, bn.inputs[i] if i < len(bn.inputs) else None, channels)
                              for i in range(1, 5))
    if scale is None or bias is None or mean is None or var is None:
        return "parameters are not static per-channel vectors"
    eps = float(bn.attrs.get("epsilon", 1e-5))
    base = _base(bn)
    eps_v: Val = np.full(channels, eps) if isinstance(var, np.ndarray) else rw.const(np.array(eps, dtype), "eps")
    s = _op(rw, "Div", scale, _op(rw, "Sqrt", _op(rw, "Add", var, eps_v, dtype, base + "_var"), None, dtype,
                                  base + "_std"), dtype, base + "_s")
    t = _op(rw, "Sub", bias, _op(rw, "Mul", mean, s, dtype, base + "_ms"), dtype, base + "_t")
    return s, t


def _bn_inference(bn: gs.Node, rw: Rewriter) -> str | None:
    if attr_int(bn, "training_mode", 0):
        return "training mode"
    if any(t.outputs or rw.is_output(t) for t in bn.outputs[1:]):
        return "running statistics are used"
    if len(bn.inputs) < 5:
        return "missing parameters"
    return None


def rule_bn_into_conv(bn: gs.Node, rw: Rewriter) -> str | None:
    reason = _bn_inference(bn, rw)
    if reason:
        return reason
    conv = rw.producer(bn.inputs[0])
    if conv is None or conv.op not in ("Conv", "ConvTranspose", "Gemm") or not is_default_domain(conv):
        return "input is not a Conv/ConvTranspose/Gemm"
    if not rw.sole_consumer(conv.outputs[0], bn):
        return "the layer's output has other readers"
    w = conv.inputs[1]
    if not rw.static(w):
        return "weight depends on a graph input"
    dtype = rw.shapes.dtype(w)
    if dtype not in FLOAT_DTYPES:
        return "weight is not float"
    if conv.op == "Gemm":
        wshape = rw.shapes.static_shape(w)
        if wshape is None or len(wshape) != 2 or attr_int(conv, "transA", 0) not in (0, 1):
            return "Gemm weight shape unknown"
        trans_b = attr_int(conv, "transB", 0)
        channels, axis = (wshape[0], 0) if trans_b else (wshape[1], 1)
    else:
        info = _conv_channels(rw, conv)
        if isinstance(info, str):
            return info
        channels, axis, _ = info
    st = _bn_scale_shift(rw, bn, channels, dtype)
    if isinstance(st, str):
        return st
    s, t = st
    base = _base(conv)
    if conv.op == "Gemm":
        c = conv.inputs[2] if len(conv.inputs) > 2 and conv.inputs[2].name else None
        if c is not None and not rw.static(c):
            return "Gemm C depends on a graph input"
        new_w = _scale_weight(rw, w, s, axis, conv)
        beta = float(conv.attrs.get("beta", 1.0))
        if c is None:
            new_c: Val = t
        else:
            cv = _value(c)
            cval: Val = cv.astype(np.float64) * beta if cv is not None else c
            if cv is None and beta != 1.0:
                cval = _op(rw, "Mul", c, rw.const(np.array(beta, dtype), "beta"), dtype, base + "_c")
            new_c = _op(rw, "Add", _op(rw, "Mul", cval, s, dtype, base + "_cs"), t, dtype, base + "_bias")
        conv.inputs[1] = new_w
        _set_bias(conv, _as_bias(rw, new_c, dtype, f"{base}_bias_fused"))
        conv.attrs["beta"] = 1.0
    else:
        bias = _conv_bias(rw, conv, channels)
        if isinstance(bias, str):
            return bias
        new_w = _scale_weight(rw, w, s, axis, conv)
        new_b = t if bias is None else _op(rw, "Add", _op(rw, "Mul", bias, s, dtype, base + "_bs"), t, dtype,
                                           base + "_bias")
        conv.inputs[1] = new_w
        _set_bias(conv, _as_bias(rw, new_b, dtype, f"{base}_bias_fused"))
    rw.take_output(conv, bn)
    return None


def rule_affine_into_bn(node: gs.Node, rw: Rewriter) -> str | None:
    found = _affine_producer(node, rw, ("BatchNormalization",))
    if isinstance(found, str):
        return found
    bn, i = found
    reason = _bn_inference(bn, rw)
    if reason:
        return reason
    if not rw.sole_consumer(bn.outputs[0], node):
        return "the BatchNormalization output has other readers"
    rank = rw.shapes.rank(bn.inputs[0])
    scale_shape = rw.shapes.static_shape(bn.inputs[1])
    if rank is None or scale_shape is None or len(scale_shape) != 1:
        return "rank or channel count unknown"
    channels = scale_shape[0]
    dtype = rw.shapes.dtype(bn.inputs[1])
    if dtype not in FLOAT_DTYPES or rw.shapes.dtype(node.inputs[1 - i]) != dtype:
        return "not float or mixed types"
    c = _channel_vector(rw, node.inputs[1 - i], rank, channels, 1)
    if isinstance(c, str):
        return c
    scale, bias = _param(rw, bn.inputs[1], channels), _param(rw, bn.inputs[2], channels)
    if scale is None or bias is None:
        return "scale/bias not static"
    base = _base(bn)
    if node.op == "Mul":
        new_scale, new_bias = _op(rw, "Mul", scale, c, dtype, base + "_scale"), _op(rw, "Mul", bias, c, dtype,
                                                                                   base + "_bias")
        bn.inputs[1] = _tensor(rw, new_scale, dtype, f"{base}_scale_fused")
    elif node.op == "Add":
        new_bias = _op(rw, "Add", bias, c, dtype, base + "_bias")
    else:  # Sub, BN output first
        new_bias = _op(rw, "Sub", bias, c, dtype, base + "_bias")
    bn.inputs[2] = _tensor(rw, new_bias, dtype, f"{base}_bias_fused")
    rw.take_output(bn, node)
    return None


# --------------------------------------------------------------------------- Conv + per-channel ops


def rule_mul_into_conv(node: gs.Node, rw: Rewriter) -> str | None:
    found = _affine_producer(node, rw, ("Conv", "ConvTranspose"))
    if isinstance(found, str):
        return found
    conv, i = found
    if not rw.sole_consumer(conv.outputs[0], node):
        return "the Conv output has other readers"
    w = conv.inputs[1]
    if not rw.static(w):
        return "weight depends on a graph input"
    info = _conv_channels(rw, conv)
    if isinstance(info, str):
        return info
    channels, axis, rank = info
    dtype = rw.shapes.dtype(w)
    if dtype not in FLOAT_DTYPES or rw.shapes.dtype(node.inputs[1 - i]) != dtype:
        return "not float or mixed types"
    c = _channel_vector(rw, node.inputs[1 - i], rank, channels, 1)
    if isinstance(c, str):
        return c
    bias = _conv_bias(rw, conv, channels)
    if isinstance(bias, str):
        return bias
    conv.inputs[1] = _scale_weight(rw, w, c, axis, conv)
    if bias is not None:
        base = _base(conv)
        _set_bias(conv, _as_bias(rw, _op(rw, "Mul", bias, c, dtype, base + "_bias"), dtype, f"{base}_bias_fused"))
    rw.take_output(conv, node)
    return None


def rule_add_into_conv(node: gs.Node, rw: Rewriter) -> str | None:
    found = _affine_producer(node, rw, ("Conv", "ConvTranspose"))
    if isinstance(found, str):
        return found
    conv, i = found
    if not rw.sole_consumer(conv.outputs[0], node):
        return "the Conv output has other readers"
    info = _conv_channels(rw, conv)
    if isinstance(info, str):
        return info
    channels, _, rank = info
    dtype = rw.shapes.dtype(conv.inputs[1])
    if dtype not in FLOAT_DTYPES or rw.shapes.dtype(node.inputs[1 - i]) != dtype:
        return "not float or mixed types"
    c = _channel_vector(rw, node.inputs[1 - i], rank, channels, 1)
    if isinstance(c, str):
        return c
    bias = _conv_bias(rw, conv, channels)
    if isinstance(bias, str):
        return bias
    base = _base(conv)
    if node.op == "Sub":
        c = _op(rw, "Mul", c, np.full(channels, -1.0) if isinstance(c, np.ndarray) else rw.const(
            np.array(-1, dtype), "minus_one"), dtype, base + "_neg")
    new_b = c if bias is None else _op(rw, "Add", bias, c, dtype, base + "_bias")
    _set_bias(conv, _as_bias(rw, new_b, dtype, f"{base}_bias_fused"))
    rw.take_output(conv, node)
    return None


# --------------------------------------------------------------------------- Gemm


def _gemm_out_shape(rw: Rewriter, gemm: gs.Node) -> tuple | None:
    shape = rw.shapes.shape(gemm.outputs[0])
    if shape is not None and len(shape) == 2:
        return shape
    return None


def rule_add_into_gemm(node: gs.Node, rw: Rewriter) -> str | None:
    if node.op != "Add":
        return "not an Add"
    found = _affine_producer(node, rw, ("Gemm",))
    if isinstance(found, str):
        return found
    gemm, i = found
    if not rw.sole_consumer(gemm.outputs[0], node):
        return "the Gemm output has other readers"
    d = node.inputs[1 - i]
    if not rw.static(d):
        return "the addend depends on a graph input"
    out_shape = _gemm_out_shape(rw, gemm)
    d_shape = rw.shapes.static_shape(d)
    if out_shape is None or d_shape is None or not broadcast_keeps(out_shape, d_shape):
        return "the addend would broadcast the output (or shapes unknown)"
    dtype = rw.shapes.dtype(d)
    if dtype not in FLOAT_DTYPES or dtype != rw.shapes.dtype(gemm.inputs[0]):
        return "not float or mixed types"
    c = gemm.inputs[2] if len(gemm.inputs) > 2 and gemm.inputs[2].name else None
    base = _base(gemm)
    if c is None:
        new_c: gs.Tensor = d
    else:
        if not rw.static(c):
            return "Gemm C depends on a graph input"
        beta = float(gemm.attrs.get("beta", 1.0))
        cv, dv = _value(c), _value(d)
        if cv is not None and dv is not None:
            new_c = rw.const((cv.astype(np.float64) * beta + dv).astype(dtype), f"{base}_bias_fused")
        else:
            cc = c if beta == 1.0 else rw.add_node("Mul", [c, rw.const(np.array(beta, dtype), "beta")],
                                                   base=f"{base}_c", dtype=dtype)
            new_c = rw.add_node("Add", [cc, d], base=f"{base}_bias_fused", dtype=dtype)
    _set_bias(gemm, new_c)
    gemm.attrs["beta"] = 1.0
    rw.take_output(gemm, node)
    return None


def rule_matmul_add_to_gemm(node: gs.Node, rw: Rewriter) -> str | None:
    if node.op != "Add":
        return "not an Add"
    found = _affine_producer(node, rw, ("MatMul",))
    if isinstance(found, str):
        return found
    mm, i = found
    if not rw.sole_consumer(mm.outputs[0], node):
        return "the MatMul output has other readers"
    a, b = mm.inputs[0], mm.inputs[1]
    if rw.shapes.rank(a) != 2 or rw.shapes.rank(b) != 2:
        return "MatMul is not 2-D"
    dtype = rw.shapes.dtype(a)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)) or rw.shapes.dtype(b) != dtype:
        return "not float32/float64"
    d = node.inputs[1 - i]
    if not rw.static(d):
        return "the addend depends on a graph input"
    sa, sb = rw.shapes.shape(a), rw.shapes.shape(b)
    d_shape = rw.shapes.static_shape(d)
    if sa is None or sb is None or d_shape is None or not broadcast_keeps((sa[0], sb[1]), d_shape):
        return "the addend would broadcast the output (or shapes unknown)"
    if rw.shapes.dtype(d) != dtype:
        return "mixed types"
    out = node.outputs[0]
    gemm = gs.Node("Gemm", name=rw.names(f"{_base(mm)}_gemm"), inputs=[a, b, d], outputs=[])
    rw.kill(node)
    rw.kill(mm)
    gemm.outputs.append(out)
    rw.g.nodes.append(gemm)
    return None


# --------------------------------------------------------------------------- Pad into Conv / pooling


def _pad_params(pad: gs.Node, rw: Rewriter, rank: int) -> tuple[list[int], float] | str:
    if pad.attrs.get("mode", "constant") not in ("constant", b"constant"):
        return "Pad mode is not constant"
    if "pads" in pad.attrs:
        pads = [int(p) for p in pad.attrs["pads"]]
        value = float(pad.attrs.get("value", 0.0))
    else:
        pads = rw.sym.const_ints(pad.inputs[1]) if len(pad.inputs) > 1 else None
        if pads is None:
            return "pads not constant"
        value = 0.0
        if len(pad.inputs) > 2 and pad.inputs[2].name:
            v = known_value(pad.inputs[2])
            if v is None or v.size != 1:
                return "pad value not constant"
            value = float(np.asarray(v).reshape(-1)[0])
        if len(pad.inputs) > 3 and pad.inputs[3].name:
            axes = rw.sym.const_ints(pad.inputs[3])
            if axes is None:
                return "axes not constant"
            full = [0] * (2 * rank)
            for k, a in enumerate(axes):
                a = a + rank if a < 0 else a
                full[a], full[a + rank] = pads[k], pads[k + len(axes)]
            pads = full
    if len(pads) != 2 * rank:
        return "pads length does not match the rank"
    if any(p < 0 for p in pads):
        return "negative pads (cropping)"
    if pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
        return "pads the batch or channel axis"
    return pads, value


_NON_NEGATIVE = ("Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Softplus")


def rule_pad_into(node: gs.Node, rw: Rewriter) -> str | None:
    pad = rw.producer(node.inputs[0])
    if pad is None or pad.op != "Pad" or not is_default_domain(pad):
        return "input is not a Pad"
    if not rw.sole_consumer(pad.outputs[0], node):
        return "the Pad output has other readers"
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        return "auto_pad is set"
    rank = rw.shapes.rank(pad.inputs[0])
    if rank is None or rank < 3:
        return "rank unknown"
    params = _pad_params(pad, rw, rank)
    if isinstance(params, str):
        return params
    pads, value = params
    spatial = rank - 2
    kernel = node.attrs.get("kernel_shape")
    if node.op == "Conv":
        if value != 0.0:
            return "pad value is not 0"
    elif node.op == "AveragePool":
        if value != 0.0:
            return "pad value is not 0"
        if attr_int(node, "ceil_mode", 0):
            return "ceil_mode"
        has_pads = any(int(p) for p in node.attrs.get("pads", []))
        if has_pads and not attr_int(node, "count_include_pad", 0):
            return "the pool's own pads are not counted (count_include_pad=0)"
    elif node.op == "MaxPool":
        if len(node.outputs) > 1 and (node.outputs[1].outputs or rw.is_output(node.outputs[1])):
            return "indices output is used"
        if attr_int(node, "ceil_mode", 0) or any(int(d) != 1 for d in node.attrs.get("dilations", [])):
            return "ceil_mode or dilations"
        if kernel is None or any(pads[2 + k] >= kernel[k] or pads[rank + 2 + k] >= kernel[k] for k in range(spatial)):
            return "a window could lie entirely in the padding"
        if value != -np.inf:
            producer = rw.producer(pad.inputs[0])
            low = clip_bound(producer, "min") if producer is not None and producer.op == "Clip" else None
            nonneg = producer is not None and (producer.op in _NON_NEGATIVE or (low is not None and low >= 0))
            if not (value == 0.0 and nonneg):
                return "pad value is neither -inf nor 0 on a non-negative input"
    else:
        return "not a Conv or pool"
    old = [int(p) for p in node.attrs.get("pads", [0] * (2 * spatial))]
    new = [old[k] + pads[2 + k] for k in range(spatial)] + [old[spatial + k] + pads[rank + 2 + k]
                                                            for k in range(spatial)]
    node.attrs["pads"] = new
    if node.op == "AveragePool":
        node.attrs["count_include_pad"] = 1
    node.inputs[0] = pad.inputs[0]
    return None


def clip_bound(node: gs.Node, which: str) -> float | None:
    """A Clip's ``min`` or ``max`` (attribute before opset 11, else input 1 or 2), None when absent or unknown."""
    if which in node.attrs:
        return float(node.attrs[which])
    i = 1 if which == "min" else 2
    if len(node.inputs) > i and node.inputs[i].name:
        v = known_value(node.inputs[i])
        return None if v is None else float(np.asarray(v).reshape(-1)[0])
    return None


#: op -> rules (NUMERIC)
FUSE_RULES: dict[str, list[tuple[str, Rule]]] = {
    "BatchNormalization": [("bn_into_conv", rule_bn_into_conv)],
    "Mul": [("mul_into_conv", rule_mul_into_conv), ("affine_into_bn", rule_affine_into_bn)],
    "Add": [("add_into_conv", rule_add_into_conv), ("add_into_gemm", rule_add_into_gemm),
            ("matmul_add_to_gemm", rule_matmul_add_to_gemm), ("affine_into_bn", rule_affine_into_bn)],
    "Sub": [("add_into_conv", rule_add_into_conv), ("affine_into_bn", rule_affine_into_bn)],
    "Conv": [("pad_into_conv", rule_pad_into)],
    "AveragePool": [("pad_into_pool", rule_pad_into)],
    "MaxPool": [("pad_into_pool", rule_pad_into)],
}
