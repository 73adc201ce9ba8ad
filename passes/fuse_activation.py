"""Fusions of spelled-out hard activations into onnxruntime's single kernels. NUMERIC.

Exporters (Paddle, older PyTorch/TF converters) write MobileNetV3-style activations as chains of
elementwise ops that onnxruntime runs one by one, each a full pass over the tensor and a break in
its NCHWc conv layout. Rules (``rule(node, rw) -> str | None`` as in :mod:`simplify_rules`):

- hard_swish:        x * Clip(x + 3, 0, 6) / 6  (or * 1/6, either Mul order)     -> HardSwish(x)
                     (below opset 14: x * HardSigmoid(x, 1/6, 0.5), two ops instead of four)
- hard_sigmoid:      Clip(x + 3, 0, 6) / 6      (or * 1/6)                        -> HardSigmoid(x, 1/6, 0.5)
- hard_swish_of_hs:  x * HardSigmoid(x, 1/6, 0.5)                                 -> HardSwish(x)

HardSwish needs opset 14 (HardSigmoid exists since opset 6). Every intermediate must have no
other reader and not be a graph output; the fused node writes the last op's output tensor (name
kept). NUMERIC: ``alpha*x + beta`` instead of ``(x + 3) / 6`` rounds differently, by an ulp.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .fuse_linear import FLOAT_DTYPES, clip_bound
from .simplify_core import Rewriter, is_default_domain, known_value
from .simplify_rules import Rule


def _scalar(t: gs.Tensor | None) -> float | None:
    """The single value of a constant tensor whose elements are all equal (None otherwise)."""
    v = known_value(t)
    if v is None or v.size == 0 or v.size > 4096:
        return None
    flat = np.asarray(v, np.float64).reshape(-1)
    return float(flat[0]) if np.all(flat == flat[0]) else None


def _scalar_shape_ok(rw: Rewriter, c: gs.Tensor, x: gs.Tensor) -> bool:
    """A constant operand must not broadcast x to a larger shape."""
    cs, xs = rw.shapes.static_shape(c), rw.shapes.shape(x)
    if cs is None:
        return False
    if xs is None:
        return all(d == 1 for d in cs)
    return len(cs) <= len(xs) and all(d == 1 for d in cs)


def _close(a: float | None, b: float) -> bool:
    return a is not None and abs(a - b) <= 1e-6 * abs(b)


def _divided_by_six(node: gs.Node, rw: Rewriter) -> gs.Tensor | str:
    """For ``y / 6`` or ``y * (1/6)`` (either order): y; else why not."""
    if not is_default_domain(node) or node.op not in ("Div", "Mul") or len(node.inputs) != 2:
        return "not a Div or Mul"
    if node.op == "Div":
        y, c, want = node.inputs[0], node.inputs[1], 6.0
    else:
        k = 1 if _scalar(node.inputs[1]) is not None else 0
        y, c, want = node.inputs[1 - k], node.inputs[k], 1.0 / 6.0
    if not _close(_scalar(c), want) or not _scalar_shape_ok(rw, c, y):
        return "not a division by 6"
    return y


def _relu6_of_x_plus_3(t: gs.Tensor, rw: Rewriter) -> tuple[gs.Tensor, list[gs.Node]] | str:
    """For ``t = Clip(x + 3, 0, 6)`` with private intermediates: (x, [clip, add]); else why not."""
    clip = rw.producer(t)
    if clip is None or clip.op != "Clip" or not is_default_domain(clip):
        return "not fed by a Clip"
    if clip_bound(clip, "min") != 0.0 or clip_bound(clip, "max") != 6.0:
        return "the Clip is not [0, 6]"
    add = rw.producer(clip.inputs[0])
    if add is None or add.op != "Add" or not is_default_domain(add) or not rw.sole_consumer(add.outputs[0], clip):
        return "the Clip is not fed by a private Add"
    k = 1 if _scalar(add.inputs[1]) is not None else 0
    x, c = add.inputs[1 - k], add.inputs[k]
    if _scalar(c) != 3.0 or not _scalar_shape_ok(rw, c, x):
        return "the Add is not + 3"
    if rw.shapes.dtype(x) not in FLOAT_DTYPES:
        return "not a float tensor"
    return x, [clip, add]


def _replace(rw: Rewriter, last: gs.Node, dead: list[gs.Node], op: str, x: gs.Tensor, attrs: dict) -> None:
    out = last.outputs[0]
    fused = gs.Node(op, name=rw.names(f"{last.name or op}_{op.lower()}"), attrs=attrs, inputs=[x], outputs=[])
    for n in [last, *dead]:
        rw.kill(n)
    fused.outputs.append(out)
    rw.g.nodes.append(fused)


def rule_hard_swish(node: gs.Node, rw: Rewriter) -> str | None:
    y = _divided_by_six(node, rw)
    if isinstance(y, str):
        return y
    mul = rw.producer(y)
    if mul is None or mul.op != "Mul" or not is_default_domain(mul) or not rw.sole_consumer(y, node):
        return "not fed by a private Mul"
    for k in (0, 1):
        found = _relu6_of_x_plus_3(mul.inputs[k], rw)
        if isinstance(found, str):
            continue
        x, chain = found
        if mul.inputs[1 - k] is x and rw.sole_consumer(mul.inputs[k], mul):
            if rw.opset >= 14:
                _replace(rw, node, [mul, *chain], "HardSwish", x, {})
            else:  # the Mul stays and reads HardSigmoid(x) in place of Clip(x + 3, 0, 6) / 6
                gate = rw.add_node("HardSigmoid", [x], {"alpha": 1.0 / 6.0, "beta": 0.5},
                                   base=f"{mul.name or 'hard_swish'}_gate", dtype=rw.shapes.dtype(x))
                out = node.outputs[0]
                for n in (node, *chain):
                    rw.kill(n)
                mul.inputs[0], mul.inputs[1] = x, gate
                mul.outputs[0] = out
            return None
    return "not x * Clip(x + 3, 0, 6)"


def rule_hard_sigmoid(node: gs.Node, rw: Rewriter) -> str | None:
    y = _divided_by_six(node, rw)
    if isinstance(y, str):
        return y
    found = _relu6_of_x_plus_3(y, rw)
    if isinstance(found, str):
        return found
    x, chain = found
    if not rw.sole_consumer(y, node):
        return "the Clip output has other readers"
    _replace(rw, node, chain, "HardSigmoid", x, {"alpha": 1.0 / 6.0, "beta": 0.5})
    return None


def rule_hard_swish_of_hs(node: gs.Node, rw: Rewriter) -> str | None:
    if node.op != "Mul" or not is_default_domain(node) or len(node.inputs) != 2:
        return "not a Mul"
    if rw.opset < 14:
        return "HardSwish needs opset 14"
    for k in (0, 1):
        hs = rw.producer(node.inputs[k])
        if hs is None or hs.op != "HardSigmoid" or not is_default_domain(hs):
            continue
        if not (_close(float(hs.attrs.get("alpha", 0.2)), 1.0 / 6.0) and float(hs.attrs.get("beta", 0.5)) == 0.5):
            continue
        x = hs.inputs[0]
        if node.inputs[1 - k] is x and rw.sole_consumer(hs.outputs[0], node):
            _replace(rw, node, [hs], "HardSwish", x, {})
            return None
    return "not x * HardSigmoid(x, 1/6, 0.5)"


#: op -> rules (NUMERIC); hard_swish is tried before hard_sigmoid (it needs the whole chain)
ACTIVATION_RULES: dict[str, list[tuple[str, Rule]]] = {
    "Div": [("hard_swish", rule_hard_swish), ("hard_sigmoid", rule_hard_sigmoid)],
    "Mul": [("hard_swish", rule_hard_swish), ("hard_sigmoid", rule_hard_sigmoid),
            ("hard_swish_of_hs", rule_hard_swish_of_hs)],
}
