"""Float rewrites that make a graph quantization-friendly (run inside quantize-int8, before calibration).

All of them are exact algebra on the weights (NUMERIC: only float rounding changes):

- ``Constant`` node weights become graph constants (Paddle exports keep every weight in a node);
- Conv -> BatchNormalization folds into the Conv;
- Conv -> Mul(c) -> Add(b) with per-output-channel or scalar constants folds into the Conv
  (PP-LCNet's "learnable affine blocks");
- Mul(a) -> Conv folds ``a`` (scalar or per input channel) into the Conv weights (``a * 0 = 0``, so
  zero padding is unaffected); Add(b) -> Conv folds into the bias when the Conv has no padding;
  Mul(a) -> Add(b) -> padded Conv becomes Add(b / a) -> Conv(a W);
- Gemm alpha/beta fold into B/C;
- Conv -> PRelu with a per-channel slope becomes ``a * x + (1 - a) * Relu(x)`` (LeakyRelu for a
  uniform slope; :mod:`prune_prelu`): onnxruntime has no int8 PRelu, and its float PRelu leaves the
  NCHWc layout (MTCNN: 0.80x float latency from this alone), so the float regions around it get
  faster and the int8 convolutions no longer end in a slow float island.

The lossless pipeline may already have done some of this; each rewrite checks its own pattern, so
running them twice changes nothing.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from .graph_utils import constant_value, is_graph_output, replace_all_uses
from .prune_prelu import rewrite_prelu

log = logging.getLogger(__name__)


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def _single_consumer(graph: gs.Graph, t: gs.Tensor) -> gs.Node | None:
    if is_graph_output(graph, t) or len(t.outputs) != 1:
        return None
    return t.outputs[0]


def _const(name: str, value: np.ndarray) -> gs.Constant:
    return gs.Constant(name, np.array(value, copy=True, order="C"))


def _float_const(t: gs.Tensor) -> np.ndarray | None:
    v = constant_value(t)
    if v is None or v.dtype != np.float32:
        return None
    return v


def constants_to_initializers(graph: gs.Graph) -> int:
    """Replace outputs of ``Constant`` nodes (with a ``value`` tensor) by graph constants."""
    n = 0
    for node in list(graph.nodes):
        if node.op != "Constant" or len(node.outputs) != 1:
            continue
        value = node.attrs.get("value")
        out = node.outputs[0]
        if not isinstance(value, gs.Constant) or is_graph_output(graph, out):
            continue
        const = _const(out.name, np.asarray(value.values))
        node.outputs.clear()
        replace_all_uses(graph, out, const)
        n += 1
    if n:
        graph.cleanup(remove_unused_graph_inputs=False)
    return n


def _conv_channels(conv: gs.Node) -> tuple[np.ndarray, np.ndarray | None] | None:
    if conv.op != "Conv" or len(conv.inputs) < 2:
        return None
    w = _float_const(conv.inputs[1])
    if w is None:
        return None
    b = None
    if len(conv.inputs) > 2 and conv.inputs[2] is not None and conv.inputs[2].name:
        b = _float_const(conv.inputs[2])
        if b is None:
            return None
    return w, b


def _set_conv_weights(conv: gs.Node, w: np.ndarray, b: np.ndarray | None, tag: str) -> None:
    wname = f"{conv.inputs[1].name}_{tag}"
    conv.inputs[1] = _const(wname, w.astype(np.float32))
    if b is not None:
        bname = f"{conv.name or conv.outputs[0].name}_bias_{tag}"
        if len(conv.inputs) > 2:
            conv.inputs[2] = _const(bname, b.astype(np.float32))
        else:
            conv.inputs.append(_const(bname, b.astype(np.float32)))


def _per_out_channel(v: np.ndarray, cout: int, rank: int) -> np.ndarray | None:
    """A constant that broadcasts against a Conv output [N, C, ...] along C only, as a [C] vector."""
    if v.size == 1 and v.ndim <= rank:
        return np.full(cout, float(v.reshape(-1)[0]), np.float32)
    shape = list(v.shape)
    if len(shape) > rank:
        return None
    shape = [1] * (rank - len(shape)) + shape
    if shape[1] != cout or any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    return v.reshape(-1).astype(np.float32)


def fold_batchnorm(graph: gs.Graph) -> int:
    n = 0
    for bn in list(graph.nodes):
        if bn.op != "BatchNormalization" or len(bn.outputs) != 1 or bn.attrs.get("training_mode", 0):
            continue
        x = bn.inputs[0]
        if len(x.inputs) != 1:
            continue
        conv = x.inputs[0]
        if _single_consumer(graph, x) is not bn or len(conv.outputs) != 1:
            continue
        cw = _conv_channels(conv)
        params = [_float_const(t) for t in bn.inputs[1:5]]
        if cw is None or any(p is None for p in params):
            continue
        w, b = cw
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)  # type: ignore[union-attr]
        eps = float(bn.attrs.get("epsilon", 1e-5))
        k = gamma / np.sqrt(var + eps)
        if k.size != w.shape[0]:
            continue
        w2 = w * k.reshape(-1, *([1] * (w.ndim - 1)))
        b0 = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
        b2 = (b0 - mean) * k + beta
        _set_conv_weights(conv, w2, b2, "bnfold")
        y = bn.outputs[0]
        bn.outputs.clear()
        conv.outputs[0] = y
        x.inputs.clear()
        n += 1
    if n:
        graph.cleanup(remove_unused_graph_inputs=False)
    return n


def fold_conv_output_affine(graph: gs.Graph) -> int:
    """Conv -> Mul(const) / Add(const) along output channels, into the Conv."""
    n = 0
    changed = True
    while changed:
        changed = False
        for conv in list(graph.nodes):
            if conv.op != "Conv" or len(conv.outputs) != 1:
                continue
            y = conv.outputs[0]
            nxt = _single_consumer(graph, y)
            if nxt is None or nxt.op not in ("Mul", "Add", "Sub", "Div") or len(nxt.outputs) != 1:
                continue
            cw = _conv_channels(conv)
            if cw is None:
                continue
            w, b = cw
            other = nxt.inputs[1] if nxt.inputs[0] is y else nxt.inputs[0]
            if nxt.op in ("Sub", "Div") and nxt.inputs[0] is not y:
                continue
            c = _float_const(other)
            if c is None:
                continue
            rank = w.ndim  # output rank equals weight rank for Conv
            v = _per_out_channel(c, w.shape[0], rank)
            if v is None:
                continue
            b0 = np.zeros(w.shape[0], np.float64) if b is None else b.astype(np.float64)
            v64 = v.astype(np.float64)
            if nxt.op == "Mul":
                w2, b2 = w * v.reshape(-1, *([1] * (w.ndim - 1))), b0 * v64
            elif nxt.op == "Div":
                if np.any(v == 0):
                    continue
                w2, b2 = w / v.reshape(-1, *([1] * (w.ndim - 1))), b0 / v64
            elif nxt.op == "Add":
                w2, b2 = w, b0 + v64
            else:
                w2, b2 = w, b0 - v64
            _set_conv_weights(conv, w2, b2, "affine")
            out = nxt.outputs[0]
            nxt.outputs.clear()
            nxt.inputs.clear()
            conv.outputs[0] = out
            y.inputs.clear()
            n += 1
            changed = True
    if n:
        graph.cleanup(remove_unused_graph_inputs=False)
    return n


def _in_channel_scale(w: np.ndarray, a: np.ndarray, group: int) -> np.ndarray:
    """Scale Conv weights [Cout, Cin/g, ...] by a per-input-channel vector ``a`` [Cin]."""
    cout, cpg = w.shape[0], w.shape[1]
    o = np.arange(cout)
    g = o // (cout // group)
    idx = g[:, None] * cpg + np.arange(cpg)[None, :]  # input channel of w[o, i]
    return w * a[idx].reshape(cout, cpg, *([1] * (w.ndim - 2)))


def _per_in_channel(v: np.ndarray, cin: int, rank: int) -> np.ndarray | None:
    return _per_out_channel(v, cin, rank)


def _no_padding(conv: gs.Node) -> bool:
    if conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", b"NOTSET", b"VALID"):
        return False
    return all(p == 0 for p in conv.attrs.get("pads", []))


def fold_conv_input_affine(graph: gs.Graph) -> int:
    """Mul(x, a) -> Conv and Add(x, b) -> unpadded Conv into the Conv; Mul -> Add -> padded Conv
    becomes Add(b / a) -> Conv(a W)."""
    n = 0
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if node.op not in ("Mul", "Add") or len(node.outputs) != 1 or len(node.inputs) != 2:
                continue
            out = node.outputs[0]
            if is_graph_output(graph, out) or not out.outputs:
                continue
            x_i = 0 if _float_const(node.inputs[1]) is not None else 1
            c = _float_const(node.inputs[1 - x_i])
            if c is None or _float_const(node.inputs[x_i]) is not None:
                continue
            convs = out.outputs
            if any(cv.op != "Conv" or cv.inputs[0] is not out or _conv_channels(cv) is None for cv in convs):
                # Mul -> Add -> padded Conv: move the Mul behind the Add
                if (node.op == "Mul" and len(convs) == 1 and convs[0].op == "Add"
                        and _swap_mul_add(graph, node, convs[0], c, x_i)):
                    n += 1
                    changed = True
                continue
            ok = True
            plans = []
            for cv in convs:
                w, b = _conv_channels(cv)  # type: ignore[misc]
                group = int(cv.attrs.get("group", 1))
                cin = w.shape[1] * group
                v = _per_in_channel(c, cin, w.ndim)
                if v is None:
                    ok = False
                    break
                if node.op == "Mul":
                    plans.append((cv, _in_channel_scale(w.astype(np.float64), v.astype(np.float64), group), b))
                else:
                    if not _no_padding(cv):
                        ok = False
                        break
                    wsum = _in_channel_scale(w.astype(np.float64), v.astype(np.float64), group)
                    add = wsum.reshape(w.shape[0], -1).sum(axis=1)
                    b0 = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
                    plans.append((cv, w, b0 + add))
            if not ok:
                continue
            for cv, w2, b2 in plans:
                _set_conv_weights(cv, w2, b2, "infold")
                cv.inputs[0] = node.inputs[x_i]
            node.outputs.clear()
            node.inputs.clear()
            n += 1
            changed = True
    if n:
        graph.cleanup(remove_unused_graph_inputs=False)
    return n


def _set_list(lst, items: list) -> None:
    """Replace the contents of a graphsurgeon synchronized list (slice assignment is not supported)."""
    lst.clear()
    for it in items:
        lst.append(it)


def _swap_mul_add(graph: gs.Graph, mul: gs.Node, add: gs.Node, a: np.ndarray, x_i: int) -> bool:
    """x*a + b -> (x + b/a) * a, so the Mul can then fold into the following Conv."""
    m = mul.outputs[0]
    if len(m.outputs) != 1 or len(add.inputs) != 2:
        return False
    bi = 1 if add.inputs[0] is m else 0
    b = _float_const(add.inputs[bi])
    if b is None or add.inputs[1 - bi] is not m or np.any(a == 0) or a.size != 1 or b.size != 1:
        return False
    y = add.outputs[0]
    if is_graph_output(graph, y) or not y.outputs or any(c.op != "Conv" or c.inputs[0] is not y for c in y.outputs):
        return False
    x = mul.inputs[x_i]
    # add: x + b/a -> m2 ; mul: m2 * a -> y
    m2 = gs.Variable(f"{m.name}_shifted", dtype=np.float32)
    _set_list(add.inputs, [x, _const(f"{add.name or y.name}_b_over_a", (b / a).astype(np.float32))])
    _set_list(add.outputs, [m2])
    _set_list(mul.inputs, [m2, _const(f"{mul.name or m.name}_a", a.astype(np.float32))])
    _set_list(mul.outputs, [y])
    m.inputs.clear()
    return True


def normalize_gemm(graph: gs.Graph) -> int:
    """Fold Gemm alpha into B and beta into C so both are 1."""
    n = 0
    for g in graph.nodes:
        if g.op != "Gemm":
            continue
        alpha, beta = float(g.attrs.get("alpha", 1.0)), float(g.attrs.get("beta", 1.0))
        if alpha != 1.0:
            b = _float_const(g.inputs[1])
            if b is None:
                continue
            g.inputs[1] = _const(f"{g.inputs[1].name}_alpha", (b * alpha).astype(np.float32))
            g.attrs["alpha"] = 1.0
            n += 1
        if beta != 1.0 and len(g.inputs) > 2 and g.inputs[2] is not None and g.inputs[2].name:
            c = _float_const(g.inputs[2])
            if c is None:
                continue
            g.inputs[2] = _const(f"{g.inputs[2].name}_beta", (c * beta).astype(np.float32))
            g.attrs["beta"] = 1.0
            n += 1
    return n


def remove_inference_noops(graph: gs.Graph) -> int:
    """Identity and inference-mode Dropout (only its first output used) are bypassed."""
    from .graph_utils import bypass_node

    n = 0
    for node in list(graph.nodes):
        if node.op == "Identity" or (node.op == "Dropout" and (len(node.outputs) == 1 or not node.outputs[1].outputs)):
            if node.op == "Dropout" and len(node.inputs) > 2 and node.inputs[2].name:
                tm = constant_value(node.inputs[2])
                if tm is None or bool(np.asarray(tm).reshape(-1)[0]):
                    continue  # training mode (or unknown): not a no-op
            if len(node.outputs) > 1 and is_graph_output(graph, node.outputs[1]):
                continue
            while len(node.outputs) > 1:
                node.outputs.pop()
            if bypass_node(graph, node):
                n += 1
    if n:
        graph.cleanup(remove_unused_graph_inputs=False)
    return n


def matmul_bias_to_gemm(graph: gs.Graph) -> int:
    """MatMul(x, W) -> Add(b) with constant W [K, N] and b [N] becomes Gemm(x, W, b).

    In QDQ form the bias then becomes int32 inside QGemm instead of a float Add (onnxruntime would
    otherwise fuse MatMul + Add into a float Gemm before its QDQ fusions see the MatMul). Inputs of
    rank > 2 are flattened to [-1, K] and the result reshaped back to ``x.shape[:-1] + [N]``, which
    is what onnxruntime's own MatMul+Add fusion does.
    """
    n = 0
    graph.toposort()  # the shared shape nodes below read the first (topologically) input of their kind
    flats: dict[tuple[str, int], gs.Tensor] = {}  # (input name, K) -> its [-1, K] reshape
    leads: dict[tuple, gs.Tensor] = {}  # leading dims (symbolic names / ints) -> their runtime shape
    targets: dict[tuple, gs.Tensor] = {}  # (leading dims, N) -> the shape to reshape back to
    same: dict[str, gs.Tensor] = {}  # input name -> its runtime shape (square projections)
    for mm in list(graph.nodes):
        if mm.op != "MatMul" or len(mm.outputs) != 1:
            continue
        x, wt = mm.inputs
        w = _float_const(wt)
        y = mm.outputs[0]
        if w is None or w.ndim != 2 or _float_const(x) is not None:
            continue
        add = _single_consumer(graph, y)
        if add is None or add.op != "Add" or len(add.inputs) != 2:
            continue
        b = _float_const(add.inputs[1] if add.inputs[0] is y else add.inputs[0])
        nout = w.shape[1]
        if b is None or b.size != nout or (b.ndim and b.shape[-1] != nout):
            continue
        shape = x.shape if not isinstance(x, gs.Constant) else None
        if shape is None or len(shape) < 2:
            continue
        out = add.outputs[0]
        base = mm.name or y.name
        bias = _const(f"{base}_gemm_bias", b.reshape(-1).astype(np.float32))
        if len(shape) == 2:
            gemm = gs.Node("Gemm", name=base, inputs=[x, wt, bias], outputs=[out])
        else:
            k = w.shape[0]
            y2 = gs.Variable(f"{base}_gemm_out", dtype=np.float32)
            flat = flats.get((x.name, k))
            if flat is None:  # Q, K and V projections read one input: one flatten (onnxruntime runs each)
                flat = gs.Variable(f"{base}_flat", dtype=np.float32)
                graph.nodes.append(gs.Node("Reshape", name=f"{base}_flatten", inputs=[
                    x, _const(f"{base}_flat_shape", np.array([-1, k], np.int64))], outputs=[flat]))
                flats[(x.name, k)] = flat
            gemm = gs.Node("Gemm", name=base, inputs=[flat, wt, bias], outputs=[y2])
            if all(isinstance(d, int) and d >= 0 for d in shape):
                target: gs.Tensor = _const(f"{base}_out_shape", np.array([*shape[:-1], nout], np.int64))
            elif nout == k:
                # a square projection (attention Q/K/V/output): the result has the input's shape, and one
                # Shape node gives it (one for Q, K and V, which read one input)
                target = same.get(x.name)
                if target is None:
                    target = same[x.name] = gs.Variable(f"{base}_out_shape", dtype=np.int64)
                    graph.nodes.append(gs.Node("Shape", name=f"{base}_shape", inputs=[x], outputs=[target]))
            else:
                # dynamic leading dims: Shape(x)[:-1] + [N], the leading part shared by inputs whose
                # leading dims are the same symbols (an MLP's two Gemms), one Concat per width. Per Gemm
                # Shape -> Slice -> Concat were 0.14 of MiniLM's 1.4 ms int8 latency
                key = tuple(shape[:-1]) if all(isinstance(d, (int, str)) and d != "" for d in shape[:-1]) else None
                lead = leads.get(key) if key is not None else None
                if lead is None:
                    lead = gs.Variable(f"{base}_lead_shape", dtype=np.int64)
                    if (graph.opset or 0) >= 15:  # Shape's start/end: no Slice node
                        graph.nodes.append(gs.Node("Shape", name=f"{base}_shape", attrs={"start": 0, "end": -1},
                                                   inputs=[x], outputs=[lead]))
                    else:
                        shp = gs.Variable(f"{base}_in_shape", dtype=np.int64)
                        graph.nodes.append(gs.Node("Shape", name=f"{base}_shape", inputs=[x], outputs=[shp]))
                        graph.nodes.append(gs.Node("Slice", name=f"{base}_lead", inputs=[
                            shp, _const(f"{base}_s0", np.array([0], np.int64)),
                            _const(f"{base}_s1", np.array([-1], np.int64)),
                            _const(f"{base}_s2", np.array([0], np.int64))], outputs=[lead]))
                    if key is not None:
                        leads[key] = lead
                target = targets.get((key, nout)) if key is not None else None
                if target is None:
                    target = gs.Variable(f"{base}_out_shape", dtype=np.int64)
                    graph.nodes.append(gs.Node("Concat", name=f"{base}_target", attrs={"axis": 0}, inputs=[
                        lead, _const(f"{base}_n", np.array([nout], np.int64))], outputs=[target]))
                    if key is not None:
                        targets[(key, nout)] = target
            graph.nodes.append(gs.Node("Reshape", name=f"{base}_unflatten", inputs=[y2, target], outputs=[out]))
        mm.outputs.clear()
        mm.inputs.clear()
        add.outputs.clear()
        add.inputs.clear()
        graph.nodes.append(gemm)
        n += 1
    if n:
        graph.cleanup(remove_unused_graph_inputs=False)
    return n


def prepare(graph: gs.Graph) -> dict[str, int]:
    """Run every rewrite; returns how many times each applied."""
    counts: Counter[str] = Counter()
    counts["noops_removed"] += remove_inference_noops(graph)
    counts["constant_nodes"] += constants_to_initializers(graph)
    counts["batchnorm_folded"] += fold_batchnorm(graph)
    counts["conv_affine_folded"] += fold_conv_output_affine(graph)
    counts["batchnorm_folded"] += fold_batchnorm(graph)
    counts["conv_input_affine_folded"] += fold_conv_input_affine(graph)
    counts["gemm_normalized"] += normalize_gemm(graph)
    counts["matmul_bias_to_gemm"] += matmul_bias_to_gemm(graph)
    respelled = rewrite_prelu(graph)
    if respelled:
        counts["prelu_respelled"] += respelled
        graph.cleanup()
    graph.toposort()
    return {k: v for k, v in counts.items() if v}
