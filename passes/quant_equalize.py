"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization"), activation-aware.

For a Conv1 whose output reaches only Convs (directly, or through Relu / PRelu / LeakyRelu, which
commute with positive per-channel scaling), the function is unchanged by

    W1[i] /= s_i,  b1[i] /= s_i,  W2[:, i] *= s_i       (s_i > 0)

while the intermediate activation's channel i is divided by s_i. Activations are quantized per
tensor, so channels with a small range next to channels with a large one lose most of their
precision; equalizing the channels' ranges fixes that (the weights are per-channel, so conv1's rows
are unaffected; conv2's input columns are).

Scale choice, with r1_i = mean |x_i| of the intermediate channel (measured on calibration data) and
r2_i = max |W2[:, i]|:
- conv2 depthwise (channel i has its own int8 scale): s_i = r1_i / max(r1), i.e. every channel is
  brought up to the largest one (bounded by ``max_gain``);
- otherwise: s_i = sqrt(r1_i / r2_i) (Nagel's balance, with the data-driven activation range).

Each pair is equalized once, in topological order; the stats of the next pair's intermediate are
unchanged by the previous one (equalization preserves each conv's output), so one calibration pass
before equalizing is enough.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from .graph_utils import is_graph_output
from .quant_graph import _const, is_depthwise

log = logging.getLogger(__name__)

HOMOGENEOUS = ("Relu", "PRelu", "LeakyRelu")


def _conv_weights(node: gs.Node) -> tuple[np.ndarray, np.ndarray | None] | None:
    if node.op != "Conv" or len(node.inputs) < 2:
        return None
    w = _const(node.inputs[1])
    if w is None or w.dtype != np.float32:
        return None
    b = None
    if len(node.inputs) > 2 and node.inputs[2].name:
        b = _const(node.inputs[2])
        if b is None:
            return None
    return w, b


def find_pairs(graph: gs.Graph) -> list[tuple[gs.Node, list[gs.Node], list[gs.Node], gs.Tensor]]:
    """(conv1, activations between, consumer convs, intermediate tensor read by the consumers)."""
    pairs = []
    for conv1 in graph.nodes:
        cw = _conv_weights(conv1)
        if cw is None or (int(conv1.attrs.get("group", 1)) != 1 and not is_depthwise(conv1)):
            continue
        t = conv1.outputs[0]
        acts: list[gs.Node] = []
        ok = True
        while not is_graph_output(graph, t) and len(t.outputs) == 1 and t.outputs[0].op in HOMOGENEOUS:
            a = t.outputs[0]
            if a.op == "PRelu":
                slope = _const(a.inputs[1])
                if slope is None or slope.size not in (1, cw[0].shape[0]):
                    ok = False
                    break
            acts.append(a)
            t = a.outputs[0]
        if not ok or is_graph_output(graph, t) or not t.outputs:
            continue
        consumers = list(t.outputs)
        if any(c.op != "Conv" or c.inputs[0] is not t or _conv_weights(c) is None for c in consumers):
            continue
        cin = cw[0].shape[0]
        good = True
        for c in consumers:
            w2 = _conv_weights(c)[0]  # type: ignore[index]
            g = int(c.attrs.get("group", 1))
            if w2.shape[1] * g != cin or (g != 1 and not is_depthwise(c)):
                good = False
        if good:
            pairs.append((conv1, acts, consumers, t))
    return pairs


def _set(node: gs.Node, slot: int, value: np.ndarray, tag: str) -> None:
    name = f"{node.inputs[slot].name if slot < len(node.inputs) else node.name}_{tag}"
    c = gs.Constant(name, np.array(value, dtype=np.float32, copy=True))
    if slot < len(node.inputs):
        node.inputs[slot] = c
    else:
        node.inputs.append(c)


def equalize(graph: gs.Graph, channel_mean: dict[str, np.ndarray], *, max_gain: float = 64.0) -> dict:
    """Equalize every eligible pair; ``channel_mean`` maps intermediate tensor -> mean |x| per channel."""
    done = 0
    gains: list[float] = []
    for conv1, _acts, consumers, t in find_pairs(graph):  # Relu/PRelu slopes commute with s > 0
        r1 = channel_mean.get(t.name)
        w1, b1 = _conv_weights(conv1)  # type: ignore[misc]
        if r1 is None or r1.shape[0] != w1.shape[0]:
            continue
        r1 = np.asarray(r1, np.float64)
        live = r1 > 1e-12 * max(r1.max(), 1e-30)
        if not live.any():
            continue
        if all(is_depthwise(c) for c in consumers):
            s = np.where(live, r1 / r1[live].max(), 1.0)
        else:
            r2 = np.zeros_like(r1)
            for c in consumers:
                w2 = _conv_weights(c)[0]  # type: ignore[index]
                g = int(c.attrs.get("group", 1))
                col = np.abs(w2).max(axis=tuple(i for i in range(w2.ndim) if i != 1)) if g == 1 \
                    else np.abs(w2).reshape(w2.shape[0], -1).max(axis=1)
                r2 = np.maximum(r2, col)
            ok = live & (r2 > 0)
            s = np.where(ok, np.sqrt(np.where(ok, r1, 1.0) / np.where(ok, r2, 1.0)), 1.0)
            s = s / max(s[ok].max(), 1e-30) if ok.any() else s
        s = np.clip(s, 1.0 / max_gain, None)
        s = np.where(live, s, 1.0)
        if np.allclose(s, 1.0, rtol=1e-3):
            continue
        shape1 = (-1,) + (1,) * (w1.ndim - 1)
        _set(conv1, 1, w1 / s.reshape(shape1), "cle")
        if b1 is not None:
            _set(conv1, 2, b1 / s, "cle")
        for c in consumers:
            w2 = _conv_weights(c)[0]  # type: ignore[index]
            if int(c.attrs.get("group", 1)) == 1:
                w2n = w2 * s.reshape((1, -1) + (1,) * (w2.ndim - 2))
            else:
                w2n = w2 * s.reshape((-1,) + (1,) * (w2.ndim - 1))
            _set(c, 1, w2n, "cle")
        done += 1
        gains.append(float(1.0 / s.min()))
    return {"pairs_equalized": done, "max_channel_gain": round(max(gains), 2) if gains else 1.0}


def intermediate_tensors(graph: gs.Graph) -> list[str]:
    """Tensors whose per-channel statistics equalization needs."""
    return [t.name for _, _, _, t in find_pairs(graph)]
