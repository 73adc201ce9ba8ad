"""QDQ placement that onnxruntime's CPU QDQ selectors fuse, and the graph rewrite that emits it.

Node roles (what a node becomes when it runs in int8; see onnxruntime's
``core/optimizer/qdq_transformer/selectors_actions``):

- ``conv``     DQ(x), DQ(w s8 per-channel), DQ(b int32) -> Conv -> Q             => QLinearConv
- ``matmul``   DQ(x), DQ(w s8 per-column) -> MatMul [-> Q]      => QLinearMatMul / MatMulIntegerToFloat
- ``matmul2``  DQ(a), DQ(b) -> MatMul [-> Q] (two activations, e.g. attention)
- ``gemm``     DQ(a), DQ(B), DQ(C int32) -> Gemm [-> Q]                           => QGemm
- ``binary``   DQ, DQ -> Add/Mul -> Q                                     => QLinearAdd / QLinearMul
- ``concat``   DQ... -> Concat -> Q                                               => QLinearConcat
- ``unary``    DQ -> (Global)AveragePool / Sigmoid / LeakyRelu / Softmax -> Q    => QLinear<op>
- ``hsig``     HardSigmoid(x) = clip(alpha x + beta, 0, 1) with alpha > 0: emitted as
               DQ(x, scale * alpha) -> Add(beta) -> Q, the clip done by the Q's saturation  => QLinearAdd
- ``hswish``   HardSwish(x) = x * HardSigmoid(x): the ``hsig`` chain into an internal [0, 1] tensor,
               then DQ(x), DQ(h) -> Mul -> Q                       => QLinearAdd + QLinearMul
               (the float HardSwish between two int8 convs would cost a DQ, two float ops and a Q)
- ``pass``     DQ -> Reshape/Transpose/MaxPool/... -> Q with equal parameters: the runtime drops the
               pair and moves uint8 data (the output shares the input's scale and zero point);
- ``scale``    Mul/Div by a positive scalar constant: no node at all, the DequantizeLinear that
               reads the quantized input gets ``scale * c`` (the int8 data is unchanged);
- ``table``    Gather from a constant embedding table: the table is stored uint8 (per tensor) behind a
               DequantizeLinear and the Gather's output gets a Q with the same parameters, so the
               runtime gathers uint8 rows (a quarter of the bytes, in the file and in memory);
- Relu / Clip(0, m) right after a node that writes a Q are absorbed into that Q's range (zero
  point 0, ``255 * scale <= m``), which is exact.

A tensor's quantization parameters belong to its *root*: the first tensor upstream that is not the
output of a ``pass``/``scale`` node. Derived tensors share the root's zero point, with the scale
multiplied by the folded constants.

Selection: compute nodes (conv/matmul/gemm) are int8 unless excluded; an elementwise node (binary,
concat, unary) is int8 when its inputs already come quantized from int8 nodes (so it adds no Q of
its own), or when at least one input does and its output feeds an int8 compute node. ``pass`` and
``scale`` nodes follow their neighbours.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from .graph_utils import NameGen, constant_value, is_graph_output
from .quant_calib import QMAX_U8, QParams, qparams_u8, quantize_bias, quantize_weight, weight_scales

log = logging.getLogger(__name__)

COMPUTE_ROLES = ("conv", "matmul", "matmul2", "gemm")
ELEMENTWISE_ROLES = ("binary", "concat", "unary", "hsig", "hswish")
#: unary roles that shrink their input a lot: worth running in int8 even when a float node reads
#: the result (the Q/DQ on a [N, C, 1, 1] output costs nothing, the DQ of the input it saves does)
REDUCING_OPS = ("GlobalAveragePool",)
UNARY_OPS = ("GlobalAveragePool", "AveragePool", "Sigmoid", "LeakyRelu", "Softmax")
PASS_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "MaxPool", "Slice", "Gather",
            "GatherElements", "Resize", "Expand", "Tile")
ABSORB_OPS = ("Relu", "Clip")
INT32_MAX = 2**31 - 1
#: an int8 HardSwish input is put on a grid starting exactly at -3 (see ``_Emitter.hswish_grid``) when
#: that coarsens its steps by at most this factor
HSWISH_GRID_LOSS = 1.05


def _is_float(t: gs.Tensor) -> bool:
    if isinstance(t, gs.Constant):
        return np.asarray(t.values).dtype == np.float32
    dt = t.dtype
    if dt is None:
        return False
    try:
        return np.dtype(dt) == np.float32
    except TypeError:
        import onnx

        return int(dt) == onnx.TensorProto.FLOAT


def _const(t: gs.Tensor | None) -> np.ndarray | None:
    if t is None or not t.name:
        return None
    return constant_value(t)


def _is_activation(t: gs.Tensor | None) -> bool:
    return t is not None and bool(t.name) and _const(t) is None and _is_float(t)


def _rank(t: gs.Tensor) -> int | None:
    shape = getattr(t, "shape", None)
    return None if shape is None else len(shape)


def _positive_scalar(v: np.ndarray | None) -> float | None:
    if v is None or v.size != 1 or v.dtype != np.float32:
        return None
    c = float(v.reshape(-1)[0])
    return c if c > 0 and np.isfinite(c) else None


def _clip_bounds(node: gs.Node) -> tuple[float, float] | None:
    """(min, max) of a Relu or a Clip with constant bounds; None when not a static clip."""
    if node.op == "Relu":
        return 0.0, np.inf
    if node.op != "Clip":
        return None
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11
        return float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf))
    lo = _const(node.inputs[1]) if len(node.inputs) > 1 else None
    hi = _const(node.inputs[2]) if len(node.inputs) > 2 else None
    if len(node.inputs) > 1 and node.inputs[1].name and lo is None:
        return None
    if len(node.inputs) > 2 and node.inputs[2].name and hi is None:
        return None
    if (lo is not None and lo.size != 1) or (hi is not None and hi.size != 1):
        return None
    return (float(lo.reshape(-1)[0]) if lo is not None else -np.inf), (
        float(hi.reshape(-1)[0]) if hi is not None else np.inf)


def is_depthwise(node: gs.Node) -> bool:
    """A grouped Conv with one input channel per group (and more than one group)."""
    if node.op != "Conv":
        return False
    group = int(node.attrs.get("group", 1))
    w = _const(node.inputs[1]) if len(node.inputs) > 1 else None
    return group > 1 and w is not None and w.ndim >= 3 and w.shape[1] == 1


@dataclass
class Role:
    role: str
    acts: list[int]  # input slots holding activations to quantize
    scale: float = 1.0  # for role "scale": multiplier applied to the input scale
    # for roles "hsig"/"hswish": HardSigmoid's alpha and beta
    params: tuple[float, ...] = ()


def node_role(node: gs.Node, *, matmul_activations: bool = True) -> Role | None:
    """What ``node`` becomes in int8, or None when it stays float (see the module docstring)."""
    op = node.op
    ins = node.inputs
    if node.domain not in (None, "", "ai.onnx"):
        return None
    if not node.outputs or not all(_is_float(o) for o in node.outputs[:1]):
        return None
    if op == "Conv":
        w = _const(ins[1]) if len(ins) > 1 else None
        if w is None or w.dtype != np.float32 or w.ndim not in (3, 4) or not _is_activation(ins[0]):
            return None
        if len(ins) > 2 and ins[2].name and _const(ins[2]) is None:
            return None
        return Role("conv", [0])
    if op == "MatMul":
        a, b = ins[0], ins[1]
        bw = _const(b)
        if bw is not None:
            if bw.dtype != np.float32 or bw.ndim != 2 or not _is_activation(a):
                return None
            return Role("matmul", [0])
        if matmul_activations and _is_activation(a) and _is_activation(b):
            return Role("matmul2", [0, 1])
        return None
    if op == "Gemm":
        if int(node.attrs.get("transA", 0)) or float(node.attrs.get("alpha", 1.0)) != 1.0:
            return None
        bw = _const(ins[1])
        if bw is None or bw.dtype != np.float32 or bw.ndim != 2 or not _is_activation(ins[0]):
            return None
        if len(ins) > 2 and ins[2].name:
            c = _const(ins[2])
            n = bw.shape[0] if int(node.attrs.get("transB", 0)) else bw.shape[1]
            if c is None or float(node.attrs.get("beta", 1.0)) != 1.0 or c.size not in (1, n):
                return None
            if c.ndim > 1 and c.shape[-1] != c.size:
                return None
        return Role("gemm", [0])
    if op in ("Mul", "Div") and len(ins) == 2:
        c = _positive_scalar(_const(ins[1]))
        if c is not None and _is_activation(ins[0]):
            return Role("scale", [0], c if op == "Mul" else 1.0 / c)
        if op == "Mul":
            c = _positive_scalar(_const(ins[0]))
            if c is not None and _is_activation(ins[1]):
                return Role("scale", [1], c)
    if op in ("Add", "Mul") and len(ins) == 2:
        acts = [i for i, t in enumerate(ins) if _is_activation(t)]
        consts = [i for i, t in enumerate(ins) if _const(t) is not None and _const(t).dtype == np.float32]
        if acts and len(acts) + len(consts) == 2:
            return Role("binary", acts)
        return None
    if op == "Concat":
        if ins and all(_is_activation(t) for t in ins):
            return Role("concat", list(range(len(ins))))
        return None
    if op in UNARY_OPS and _is_activation(ins[0]):
        if op == "Softmax":
            r = _rank(ins[0])
            axis = int(node.attrs.get("axis", -1))
            if r is None or axis not in (-1, r - 1):
                return None
        return Role("unary", [0])
    if op in ("HardSigmoid", "HardSwish") and ins and _is_activation(ins[0]):
        alpha = float(node.attrs.get("alpha", 0.2 if op == "HardSigmoid" else 1.0 / 6.0))
        beta = float(node.attrs.get("beta", 0.5))
        if alpha > 0 and np.isfinite(alpha) and np.isfinite(beta):
            return Role("hsig" if op == "HardSigmoid" else "hswish", [0], params=(alpha, beta))
        return None
    if op == "Gather" and len(ins) == 2 and _const(ins[1]) is None:
        table = _const(ins[0])
        if table is not None and table.dtype == np.float32 and table.ndim == 2 and table.size >= 4096:
            return Role("table", [])  # an embedding table: stored uint8, gathered as uint8
    if op in PASS_OPS and ins and _is_activation(ins[0]) and len(node.outputs) == 1:
        if op == "MaxPool" and (len(node.outputs) > 1 or int(node.attrs.get("storage_order", 0))):
            return None
        return Role("pass", [0])
    return None


@dataclass
class TensorQ:
    """How one activation tensor is quantized."""

    name: str
    root: str
    multiplier: float = 1.0  # scale = root scale * multiplier
    producer_int8: bool = False  # all consumers read the DequantizeLinear (the producer runs int8)


@dataclass
class Plan:
    """Which nodes run int8 and which tensors get Q/DQ (names only: valid for any import of the graph)."""

    roles: dict[str, Role] = field(default_factory=dict)  # node name -> role, int8 nodes only
    q_output: set[str] = field(default_factory=set)  # int8 nodes that write a Q on their output
    absorbed: dict[str, str] = field(default_factory=dict)  # Relu/Clip node name -> int8 node name
    tensors: dict[str, TensorQ] = field(default_factory=dict)
    candidates: dict[str, Role] = field(default_factory=dict)  # every int8-capable node, selected or not
    io: dict[str, list[str]] = field(default_factory=dict)  # int8 node -> quantized tensors it reads/writes

    @property
    def roots(self) -> list[str]:
        return sorted({t.root for t in self.tensors.values()})

    def nodes_touching(self, roots: set[str]) -> set[str]:
        """int8 compute/elementwise nodes that read or write a tensor quantized with one of ``roots``."""
        out: set[str] = set()
        for name, r in self.roles.items():
            if r.role in ("pass", "scale"):
                continue
            for t in self.io.get(name, ()):
                tq = self.tensors.get(t)
                if tq is not None and tq.root in roots:
                    out.add(name)
        return out

    def int8_nodes(self, roles: Iterable[str] = COMPUTE_ROLES + ELEMENTWISE_ROLES) -> list[str]:
        wanted = set(roles)
        return [n for n, r in self.roles.items() if r.role in wanted]


#: an elementwise node mixing inputs whose ranges differ by more than this stays float
RANGE_RATIO_LIMIT = 64.0


def _span(ranges: dict[str, tuple[float, float]] | None, name: str) -> float | None:
    if ranges is None or name not in ranges:
        return None
    lo, hi = ranges[name]
    return float(hi - lo)


def _range_blowup(node: gs.Node, r: Role, avail: set[str], ranges: dict | None) -> bool:
    """True when a float-produced input dwarfs the quantized ones (e.g. an attention mask)."""
    if ranges is None or r.role != "binary":
        return False
    spans_avail = [_span(ranges, node.inputs[i].name) for i in r.acts if node.inputs[i].name in avail]
    spans_other = [_span(ranges, node.inputs[i].name) for i in r.acts if node.inputs[i].name not in avail]
    a = max((s for s in spans_avail if s is not None), default=None)
    o = max((s for s in spans_other if s is not None), default=None)
    if a is None or o is None:
        return False
    return o > RANGE_RATIO_LIMIT * max(a, 1e-12) or not np.isfinite(o)


def _hard_sigmoid_params(node: gs.Node) -> tuple[float, float] | None:
    if node.op == "HardSigmoid":
        return float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
    if node.op == "HardSwish":
        return 1.0 / 6.0, 0.5
    return None


def _dead_below(graph: gs.Graph, t: gs.Tensor, node: gs.Node) -> tuple[float, float] | None:
    """(lo, hi) outside which ``node`` does not depend on the value of ``t`` beyond the bound itself:
    HardSwish(t) is 0 for every t <= -3, HardSigmoid(t) is 0 / 1 beyond -beta/alpha and
    (1 - beta)/alpha, and the spelled-out hardswish ``t * Clip(t + c, 0, m)`` is 0 for t <= -c."""
    hp = _hard_sigmoid_params(node)
    if hp is not None and node.inputs and node.inputs[0] is t:
        alpha, beta = hp
        if alpha <= 0:
            return None
        if node.op == "HardSwish":
            return -beta / alpha, np.inf
        return -beta / alpha, (1.0 - beta) / alpha
    if node.op == "Add" and len(node.inputs) == 2 and len(node.outputs) == 1:
        other = node.inputs[1] if node.inputs[0] is t else node.inputs[0]
        c = _positive_scalar(_const(other))
        y = node.outputs[0]
        if c is None or is_graph_output(graph, y) or len(y.outputs) != 1:
            return None
        clip = y.outputs[0]
        b = _clip_bounds(clip)
        if b is None or b[0] != 0.0 or clip.inputs[0] is not y:
            return None
        # every other reader of t must be Mul(t, clip output): it is 0 wherever the clip is
        z = clip.outputs[0]
        for c2 in t.outputs:
            if c2 is node:
                continue
            if c2.op != "Mul" or len(c2.inputs) != 2 or {id(i) for i in c2.inputs} != {id(t), id(z)}:
                return None
        return -c, np.inf
    if node.op == "Mul" and len(node.inputs) == 2:
        # the partner of the Add above (checked from the Add's side)
        for c2 in t.outputs:
            if c2 is not node and c2.op == "Add" and _dead_below(graph, t, c2) is not None:
                return _dead_below(graph, t, c2)
    return None


def consumer_bounds(graph: gs.Graph) -> dict[str, tuple[float, float]]:
    """Tensors whose readers ignore values beyond a bound: their quantization range can stop there.

    A conv output read only by a HardSwish spends, with a plain calibrated range, most of its 256
    levels on values below -3 that all end up as 0 (PP-LCNet, MobileNetV3: ranges like [-30, 20]).
    Clipping the range at -3 is exact for the reader and makes the steps two to three times finer.
    """
    out: dict[str, tuple[float, float]] = {}
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) or not t.outputs or is_graph_output(graph, t):
            continue
        lo, hi = np.inf, -np.inf  # the union of what the readers can tell apart
        ok = True
        for c in t.outputs:
            b = _dead_below(graph, t, c)
            if b is None:
                ok = False
                break
            lo, hi = min(lo, b[0]), max(hi, b[1])
        if ok and (np.isfinite(lo) or np.isfinite(hi)):
            out[t.name] = (float(lo), float(hi))
    return out


def name_nodes(graph: gs.Graph) -> int:
    """Give every unnamed node a unique name (plans and reports refer to nodes by name)."""
    gen = NameGen(graph)
    n = 0
    seen: set[str] = set()
    for node in graph.nodes:
        if not node.name or node.name in seen:
            node.name = gen(f"{node.op}_{len(seen)}")
            n += 1
        seen.add(node.name)
    return n


def _effective_output(graph: gs.Graph, node: gs.Node) -> tuple[gs.Tensor, list[gs.Node]]:
    """The tensor a Q after ``node`` should quantize, following absorbable Relu/Clip(0, m) chains."""
    y = node.outputs[0]
    chain: list[gs.Node] = []
    while not is_graph_output(graph, y) and len(y.outputs) == 1 and y.outputs[0].op in ABSORB_OPS:
        nxt = y.outputs[0]
        b = _clip_bounds(nxt)
        if b is None or b[0] != 0.0 or nxt.inputs[0] is not y:
            break
        chain.append(nxt)
        y = nxt.outputs[0]
    return y, chain


def make_plan(
    graph: gs.Graph,
    *,
    float_nodes: Iterable[str] = (),
    exclude_ops: Iterable[str] = (),
    matmul_activations: bool = True,
    elementwise: bool = True,
    ranges: dict[str, tuple[float, float]] | None = None,
    tables: bool = True,
) -> Plan:
    """Decide which nodes run int8 and where Q/DQ go (graph is only read).

    ``ranges`` (calibrated, when known) keeps in float the elementwise nodes that would mix
    tensors of very different magnitude, such as an attention-mask Add (scores ~10 plus -1e4).
    """
    float_nodes = set(float_nodes)
    exclude_ops = set(exclude_ops)
    plan = Plan()
    producer: dict[str, gs.Node] = {}
    for node in graph.nodes:
        for o in node.outputs:
            producer[o.name] = node
    roles: dict[str, Role] = {}
    for node in graph.nodes:
        r = node_role(node, matmul_activations=matmul_activations)
        if r is None or node.op in exclude_ops:
            continue
        if not elementwise and r.role in ELEMENTWISE_ROLES:
            continue
        if r.role == "table" and not tables:
            continue
        plan.candidates[node.name] = r
        if node.name in float_nodes:
            continue
        roles[node.name] = r

    # A. forward sweep, optimistic about matmul/gemm outputs: which elementwise nodes join
    avail: set[str] = set()  # tensors that come quantized from an int8 node (no Q of their own)
    selected: dict[str, Role] = {}
    feeds_compute: dict[str, bool] = {}

    def reaches_compute(t: gs.Tensor, depth: int = 0) -> bool:
        """Does ``t`` flow into an int8 compute node through int8-capable or absorbable nodes?"""
        if t.name in feeds_compute:
            return feeds_compute[t.name]
        feeds_compute[t.name] = False  # cycle guard
        res = False
        if depth < 24:
            for c in t.outputs:
                r = roles.get(c.name)
                if r is not None and any(c.inputs[i] is t for i in r.acts):
                    if r.role in COMPUTE_ROLES:
                        res = True
                    elif c.outputs:
                        res = reaches_compute(c.outputs[0], depth + 1)
                elif c.op in ABSORB_OPS and c.inputs[0] is t and _clip_bounds(c) is not None and c.outputs:
                    res = reaches_compute(c.outputs[0], depth + 1)
                if res:
                    break
        feeds_compute[t.name] = res
        return res

    def mark_output(node: gs.Node) -> None:
        avail.add(node.outputs[0].name)
        y, chain = _effective_output(graph, node)
        if chain:
            avail.add(y.name)

    for node in graph.nodes:  # topological order
        r = roles.get(node.name)
        if r is None or r.role == "table":
            continue
        ins = [node.inputs[i] for i in r.acts]
        if r.role in COMPUTE_ROLES:
            selected[node.name] = r
            mark_output(node)
        elif r.role in ELEMENTWISE_ROLES:
            n_avail = sum(t.name in avail for t in ins)
            reducing = node.op in REDUCING_OPS and n_avail == len(ins)
            if n_avail and (reducing or reaches_compute(node.outputs[0])) and not _range_blowup(node, r, avail, ranges):
                selected[node.name] = r
                mark_output(node)
        elif ins[0].name in avail:  # pass / scale
            avail.add(node.outputs[0].name)

    # B. matmul/gemm write a Q only when an int8 node reads their output (through pass/scale/Relu)
    def read_by_int8(t: gs.Tensor, depth: int = 0) -> bool:
        if depth > 16:
            return False
        for c in t.outputs:
            r = selected.get(c.name) or roles.get(c.name)
            if c.op in ABSORB_OPS and len(t.outputs) == 1 and not is_graph_output(graph, t):
                if read_by_int8(c.outputs[0], depth + 1):
                    return True
                continue
            if r is None or not any(c.inputs[i] is t for i in r.acts):
                continue
            if r.role in ("pass", "scale"):
                if read_by_int8(c.outputs[0], depth + 1):
                    return True
            elif c.name in selected:
                return True
        return False

    q_output: set[str] = set()
    for node in graph.nodes:
        r = selected.get(node.name)
        if r is None:
            continue
        if r.role in ("conv",) + ELEMENTWISE_ROLES or read_by_int8(node.outputs[0]):
            q_output.add(node.name)

    # C. pass/scale nodes: forward behind a Q, and backward from int8 inputs up to a float producer
    avail = set()
    absorbed: dict[str, str] = {}
    for node in graph.nodes:
        r = roles.get(node.name)
        if node.name in q_output:
            avail.add(node.outputs[0].name)
            y, chain = _effective_output(graph, node)
            for c in chain:
                absorbed[c.name] = node.name
            if chain:
                avail.add(y.name)
        elif r is not None and r.role in ("pass", "scale") and node.inputs[r.acts[0]].name in avail:
            selected[node.name] = r
            avail.add(node.outputs[0].name)
    needed: list[gs.Tensor] = []
    for node in graph.nodes:
        r = selected.get(node.name)
        if r is not None and r.role not in ("pass", "scale"):
            needed.extend(node.inputs[i] for i in r.acts)
    seen: set[str] = set()
    while needed:
        t = needed.pop()
        if t.name in seen or t.name in avail:
            continue
        seen.add(t.name)
        p = producer.get(t.name)
        r = roles.get(p.name) if p is not None else None
        if r is not None and r.role in ("pass", "scale"):
            selected[p.name] = r
            needed.append(p.inputs[r.acts[0]])

    for name, r in roles.items():
        if r.role == "table":
            selected[name] = r
    plan.roles = selected
    plan.q_output = q_output
    plan.absorbed = absorbed

    # tensors: inputs of int8 nodes + Q outputs, each with its root
    absorbed_out: dict[str, str] = {}  # effective output tensor -> int8 node
    for node in graph.nodes:
        if node.name in q_output:
            y, chain = _effective_output(graph, node)
            if chain and all(c.name in absorbed for c in chain):
                absorbed_out[y.name] = node.name
            else:
                absorbed_out[node.outputs[0].name] = node.name

    def resolve(t: gs.Tensor) -> TensorQ:
        if t.name in plan.tensors:
            return plan.tensors[t.name]
        if t.name in absorbed_out:
            tq = TensorQ(t.name, t.name, 1.0, producer_int8=True)
        else:
            p = producer.get(t.name)
            r = selected.get(p.name) if p is not None else None
            if r is not None and r.role in ("pass", "scale"):
                up = resolve(p.inputs[r.acts[0]])
                mult = up.multiplier * (r.scale if r.role == "scale" else 1.0)
                tq = TensorQ(t.name, up.root, mult, producer_int8=True)
            else:
                tq = TensorQ(t.name, t.name, 1.0, producer_int8=False)
        plan.tensors[t.name] = tq
        return tq

    for node in graph.nodes:
        r = selected.get(node.name)
        if r is None:
            continue
        io = plan.io.setdefault(node.name, [])
        for i in r.acts:
            io.append(resolve(node.inputs[i]).name)
        if node.name in q_output:
            y = node.outputs[0]
            eff, chain = _effective_output(graph, node)
            io.append(resolve(eff if chain and all(c.name in absorbed for c in chain) else y).name)
        if r.role in ("pass", "scale"):
            resolve(node.outputs[0])
    return plan


def calibration_tensors(graph: gs.Graph, plan: Plan) -> list[str]:
    """Every tensor whose range any selection could need: roots of this plan, plus inputs/outputs of
    every int8-capable node (so that reverting nodes to float never needs a new calibration run)."""
    names = set(plan.roots)
    by_name = {n.name: n for n in graph.nodes}
    for name, r in plan.candidates.items():
        node = by_name.get(name)
        if node is None:
            continue
        for i in r.acts:
            names.add(node.inputs[i].name)
        if _is_float(node.outputs[0]):
            names.add(node.outputs[0].name)
            y, _ = _effective_output(graph, node)
            names.add(y.name)
    return sorted(names)


# ----------------------------------------------------------------------------- emission


@dataclass
class EmitOptions:
    per_channel: bool = True
    weight_method: str = "minmax"
    reduce_range: bool = False  # 7-bit weights, for CPUs without VNNI (u8 x s8 pairs may saturate)
    add_bias: bool = False  # give bias-less Conv/Gemm a zero int32 bias (for bias correction)


class _Emitter:
    def __init__(self, graph: gs.Graph, plan: Plan, qparams: dict[str, QParams], opts: EmitOptions):
        self.g = graph
        self.plan = plan
        self.qp = dict(qparams)
        for name, r in plan.roles.items():
            if r.role != "hsig":
                continue
            node = next((n for n in graph.nodes if n.name == name), None)
            root = plan.tensors.get(node.outputs[0].name) if node is not None else None
            if root is not None and root.root in self.qp and self.qp[root.root].hi > 1.0 + 1e-6:
                # HardSigmoid's clip at 1 is the output Q's saturation: its range must end at <= 1
                self.qp[root.root] = QParams(float(np.float32(1.0 / 255.0)), 0)
        self.opts = opts
        self.hswish_grid = self._hswish_grids(graph, plan)
        self.gen = NameGen(graph)
        self.tensors = graph.tensors()
        self.q_var: dict[str, gs.Variable] = {}  # tensor -> its uint8 Q output
        self.dq_var: dict[str, gs.Tensor] = {}  # tensor -> the float tensor int8 consumers read
        self.param_consts: dict[tuple[float, int], tuple[gs.Constant, gs.Constant]] = {}
        self.new_nodes: list[gs.Node] = []
        self.stats: Counter[str] = Counter()
        self.bias_clamped = 0

    def _hswish_grids(self, graph: gs.Graph, plan: Plan) -> set[str]:
        """HardSwish nodes whose input can sit on a uint8 grid with ``zero_point * scale == 3``.

        HardSwish(x) = x * min(x + 3, 6) / 6 for x >= -3. With x quantized as ``s * (q - k)`` and
        ``s * k = 3``, ``x + 3 = s * q``: the HardSigmoid factor is ``(s / 6) * min(q, 2k)``, a uint8
        Clip of x's own codes read by a DequantizeLinear of scale s / 6 - exact, where the generic
        spelling re-quantizes ``x / 6 + 0.5`` through a QLinearAdd onto its own [0, 1] grid.
        onnxruntime's uint8 Clip costs about half the QLinearAdd it replaces (orientation: 67 vs
        125 us for 11 HardSwish). The input's range must already start at -3 (HardSwish's readers
        ignore what lies below: ``consumer_bounds``; zero point rounding leaves up to half a step);
        the scale becomes 3 / k, at most HSWISH_GRID_LOSS coarser than calibrated.
        """
        out: set[str] = set()
        done: dict[str, float] = {}  # root -> the z0 its grid was set for
        by_name = {n.name: n for n in graph.nodes}
        for name, r in plan.roles.items():
            if r.role != "hswish":
                continue
            alpha, beta = r.params
            node = by_name.get(name)
            tq = plan.tensors.get(node.inputs[0].name) if node is not None else None
            if tq is None or tq.multiplier != 1.0 or tq.root not in self.qp or alpha <= 0 or beta <= 0:
                continue
            z0 = beta / alpha  # HardSwish: 3
            if tq.root in done:
                if done[tq.root] == z0:
                    out.add(name)
                continue
            p = self.qp[tq.root]
            if abs(p.lo + z0) > 0.51 * p.scale or p.hi <= 0:
                continue
            k = int(np.floor(QMAX_U8 * z0 / (p.hi + z0)))
            scale = float(np.float32(z0 / k)) if k >= 1 else np.inf
            if scale > HSWISH_GRID_LOSS * p.scale:
                continue
            self.qp[tq.root] = QParams(scale, k)
            done[tq.root] = z0
            out.add(name)
        return out

    # -- helpers
    def params(self, t: TensorQ) -> QParams:
        root = self.qp[t.root]
        return QParams(float(np.float32(root.scale * t.multiplier)), root.zero_point)

    def consts(self, p: QParams) -> tuple[gs.Constant, gs.Constant]:
        key = (p.scale, p.zero_point)
        if key not in self.param_consts:
            s = gs.Constant(self.gen("q_scale"), np.array(p.scale, np.float32))
            z = gs.Constant(self.gen("q_zero_point"), np.array(p.zero_point, np.uint8))
            self.param_consts[key] = (s, z)
        return self.param_consts[key]

    def node(self, op: str, inputs: list, outputs: list, base: str, **attrs) -> gs.Node:
        n = gs.Node(op, name=self.gen(base), attrs=attrs, inputs=inputs, outputs=outputs)
        self.g.nodes.append(n)
        self.stats[op] += 1
        return n

    # -- activations
    def materialize(self, name: str) -> None:
        """Create Q (if the tensor needs one) and the DQ int8 consumers read, for tensor ``name``."""
        if name in self.dq_var:
            return
        tq = self.plan.tensors[name]
        t = self.tensors[name]
        p = self.params(tq)
        scale_c, zp_c = self.consts(p)
        shape = getattr(t, "shape", None)
        if not tq.producer_int8:  # float producer (or graph input): Q it, only int8 consumers read the DQ
            q = gs.Variable(self.gen(f"{name}_quantized"), dtype=np.uint8, shape=shape)
            self.node("QuantizeLinear", [t, scale_c, zp_c], [q], f"{name}_QuantizeLinear")
            dq = gs.Variable(self.gen(f"{name}_dequantized"), dtype=np.float32, shape=shape)
            self.node("DequantizeLinear", [q, scale_c, zp_c], [dq], f"{name}_DequantizeLinear")
            self.q_var[name], self.dq_var[name] = q, dq
            return
        prod = t.inputs[0] if t.inputs else None
        role = self.plan.roles.get(prod.name) if prod is not None else None
        if role is not None and role.role == "scale":
            # the Mul/Div disappears: a DQ of the upstream uint8 data with the scale times c
            src = prod.inputs[role.acts[0]].name
            self.materialize(src)
            prod.outputs.clear()
            prod.inputs.clear()
            self.node("DequantizeLinear", [self.q_var[src], scale_c, zp_c], [t], f"{name}_DequantizeLinear")
            self.q_var[name], self.dq_var[name] = self.q_var[src], t
            self.stats["scale_folded"] += 1
            return
        # int8 producer (compute, elementwise, pass, or an absorbed Relu/Clip chain):
        # the producer writes a fresh float tensor, Q reads it, and the DQ takes over ``t``
        src_node, src_out = prod, t
        while src_node is not None and src_node.name in self.plan.absorbed:
            src_out = src_node.inputs[0]
            nxt = src_out.inputs[0] if src_out.inputs else None
            src_node.outputs.clear()
            src_node.inputs.clear()
            self.stats["absorbed_" + (src_node.op or "")] += 1
            src_node = nxt
        if src_node is None:
            raise AssertionError(f"tensor {name!r} marked int8-produced has no producer")
        fresh = gs.Variable(self.gen(f"{name}_float"), dtype=np.float32, shape=shape)
        for i, o in enumerate(src_node.outputs):
            if o is src_out:
                src_node.outputs[i] = fresh
        if src_out is not t:
            src_out.inputs.clear()
        q = gs.Variable(self.gen(f"{name}_quantized"), dtype=np.uint8, shape=shape)
        self.node("QuantizeLinear", [fresh, scale_c, zp_c], [q], f"{name}_QuantizeLinear")
        t.inputs.clear()
        self.node("DequantizeLinear", [q, scale_c, zp_c], [t], f"{name}_DequantizeLinear")
        self.q_var[name], self.dq_var[name] = q, t

    def use(self, node: gs.Node, slot: int) -> float:
        """Point input ``slot`` of an int8 node at its DQ; returns the input's scale."""
        t = node.inputs[slot]
        self.materialize(t.name)
        node.inputs[slot] = self.dq_var[t.name]
        return self.params(self.plan.tensors[t.name]).scale

    # -- constants
    def weight_dq(self, node: gs.Node, slot: int, axis: int | None, x_scale: float,
                  bias_slot: int | None, bias_len: int | None) -> None:
        w = np.asarray(_const(node.inputs[slot]), np.float32)
        qmax = 63 if self.opts.reduce_range else 127
        ax = axis if self.opts.per_channel else None
        scales = weight_scales(w, ax, self.opts.weight_method, qmax)
        b = None
        if (bias_slot is not None and self.opts.add_bias and bias_len
                and not (len(node.inputs) > bias_slot and node.inputs[bias_slot].name)):
            while len(node.inputs) < bias_slot:
                node.inputs.append(gs.Variable.empty())
            node.inputs.append(gs.Constant(self.gen(f"{node.name}_zero_bias"), np.zeros(bias_len, np.float32)))
        if bias_slot is not None and len(node.inputs) > bias_slot and node.inputs[bias_slot].name:
            b = np.asarray(_const(node.inputs[bias_slot]), np.float32).reshape(-1)
            if b.size == 1 and bias_len and bias_len > 1:
                b = np.full(bias_len, float(b[0]), np.float32)
            # int32 bias at s_x * s_w must not overflow: raise the weight scale where it would
            limit = np.abs(b) / (np.float64(x_scale) * INT32_MAX) * 1.001
            if ax is None:
                need = float(limit.max()) if limit.size else 0.0
                if need > float(scales):
                    scales = np.asarray(need, np.float32)
                    self.bias_clamped += 1
            else:
                bad = limit > scales
                if bad.any():
                    scales = np.where(bad, limit, scales).astype(np.float32)
                    self.bias_clamped += int(bad.sum())
        wq = quantize_weight(w, scales, ax, qmax)
        base = node.inputs[slot].name
        wq_c = gs.Constant(self.gen(f"{base}_quantized"), wq)
        s_c = gs.Constant(self.gen(f"{base}_scale"), np.asarray(scales, np.float32))
        z_c = gs.Constant(self.gen(f"{base}_zero_point"), np.zeros(np.shape(scales), np.int8))
        out = gs.Variable(self.gen(f"{base}_dequantized"), dtype=np.float32, shape=list(w.shape))
        attrs = {"axis": ax} if ax is not None else {}
        self.node("DequantizeLinear", [wq_c, s_c, z_c], [out], f"{base}_DequantizeLinear", **attrs)
        node.inputs[slot] = out
        self.stats["weights_int8"] += 1
        self.stats["weight_bytes_int8"] += int(wq.nbytes)
        if b is not None:
            bq, bs = quantize_bias(b, x_scale, scales if ax is not None else np.full(b.shape, scales))
            bname = node.inputs[bias_slot].name
            bq_c = gs.Constant(self.gen(f"{bname}_quantized"), bq)
            bs_c = gs.Constant(self.gen(f"{bname}_scale"), bs.astype(np.float32))
            bz_c = gs.Constant(self.gen(f"{bname}_zero_point"), np.zeros(bq.shape, np.int32))
            bout = gs.Variable(self.gen(f"{bname}_dequantized"), dtype=np.float32, shape=list(bq.shape))
            self.node("DequantizeLinear", [bq_c, bs_c, bz_c], [bout], f"{bname}_DequantizeLinear", axis=0)
            node.inputs[bias_slot] = bout
            self.stats["bias_int32"] += 1

    def const_dq(self, node: gs.Node, slot: int) -> None:
        """A float constant operand of QLinearAdd/Mul: uint8 per-tensor covering its values."""
        v = np.asarray(_const(node.inputs[slot]), np.float32)
        p = qparams_u8(float(v.min()), float(v.max()))
        q = np.asarray(np.clip(np.round(v / p.scale) + p.zero_point, 0, 255), dtype=np.uint8)
        base = node.inputs[slot].name
        q_c = gs.Constant(self.gen(f"{base}_quantized"), q)
        s_c, z_c = self.consts(p)
        out = gs.Variable(self.gen(f"{base}_dequantized"), dtype=np.float32, shape=list(v.shape))
        self.node("DequantizeLinear", [q_c, s_c, z_c], [out], f"{base}_DequantizeLinear")
        node.inputs[slot] = out

    def hard_sigmoid(self, node: gs.Node, r: Role, x_name: str) -> None:
        """Rewrite an int8 HardSigmoid / HardSwish (input already behind its DQ) into QDQ Add (+ Mul).

        HardSigmoid: DQ(x_q, s_x * alpha) -> Add(DQ(beta)) -> [the node's own output Q clips to [0, 1]].
        HardSwish: the same Add into an internal tensor quantized on [0, 1], then Mul(DQ(x), DQ(h)).
        """
        alpha, beta = r.params
        px = self.params(self.plan.tensors[x_name])
        shape = getattr(node.inputs[0], "shape", None)
        if r.role == "hswish" and node.name in self.hswish_grid:
            # x's grid starts at -3 (zero point k, scale 3 / k): min(q_x, 2k) are the codes of x + 3,
            # read at scale s / 6 they are the HardSigmoid factor (see _hswish_grids)
            top = round(1.0 / (alpha * px.scale))
            codes = self.q_var[x_name]
            if top < QMAX_U8:
                codes = gs.Variable(self.gen(f"{node.name}_hardsigmoid_codes"), dtype=np.uint8, shape=shape)
                lo_c = gs.Constant(self.gen(f"{node.name}_codes_min"), np.array(0, np.uint8))
                hi_c = gs.Constant(self.gen(f"{node.name}_codes_max"), np.array(top, np.uint8))
                self.node("Clip", [self.q_var[x_name], lo_c, hi_c], [codes], f"{node.name}_hardsigmoid_Clip")
            hs_c, hz_c = self.consts(QParams(float(np.float32(px.scale * alpha)), 0))
            h = gs.Variable(self.gen(f"{node.name}_hardsigmoid_dequantized"), dtype=np.float32, shape=shape)
            self.node("DequantizeLinear", [codes, hs_c, hz_c], [h], f"{node.name}_hardsigmoid_DequantizeLinear")
            x_dq = node.inputs[0]
            node.op, node.attrs = "Mul", {}
            node.inputs.clear()
            node.inputs.extend([x_dq, h])
            self.stats["hardswish_int8"] += 1
            self.stats["hardswish_codes_clip"] += 1
            return
        s_c, z_c = self.consts(QParams(float(np.float32(px.scale * alpha)), px.zero_point))
        t1 = gs.Variable(self.gen(f"{x_name}_times_alpha"), dtype=np.float32, shape=shape)
        self.node("DequantizeLinear", [self.q_var[x_name], s_c, z_c], [t1], f"{x_name}_DequantizeLinear")
        b = np.array(beta, np.float32)
        pb = qparams_u8(min(float(b), 0.0), max(float(b), 0.0))
        bq = np.array(np.clip(np.round(b / pb.scale) + pb.zero_point, 0, 255), np.uint8)
        bs_c, bz_c = self.consts(pb)
        bq_c = gs.Constant(self.gen(f"{node.name}_beta_quantized"), bq)
        bd = gs.Variable(self.gen(f"{node.name}_beta_dequantized"), dtype=np.float32, shape=[])
        self.node("DequantizeLinear", [bq_c, bs_c, bz_c], [bd], f"{node.name}_beta_DequantizeLinear")
        if r.role == "hsig":
            node.op, node.attrs = "Add", {}
            node.inputs.clear()
            node.inputs.extend([t1, bd])
            return
        x_dq = node.inputs[0]
        h_f = gs.Variable(self.gen(f"{node.name}_hardsigmoid"), dtype=np.float32, shape=shape)
        self.node("Add", [t1, bd], [h_f], f"{node.name}_hardsigmoid_Add")
        hs_c, hz_c = self.consts(QParams(float(np.float32(1.0 / 255.0)), 0))
        h_q = gs.Variable(self.gen(f"{node.name}_hardsigmoid_quantized"), dtype=np.uint8, shape=shape)
        self.node("QuantizeLinear", [h_f, hs_c, hz_c], [h_q], f"{node.name}_hardsigmoid_QuantizeLinear")
        h = gs.Variable(self.gen(f"{node.name}_hardsigmoid_dequantized"), dtype=np.float32, shape=shape)
        self.node("DequantizeLinear", [h_q, hs_c, hz_c], [h], f"{node.name}_hardsigmoid_DequantizeLinear")
        node.op, node.attrs = "Mul", {}
        node.inputs.clear()
        node.inputs.extend([x_dq, h])
        self.stats["hardswish_int8"] += 1

    def table(self, node: gs.Node) -> None:
        """Gather(table, ids): the table becomes uint8 behind a DQ, the output a Q/DQ pair with the
        same parameters (onnxruntime then gathers uint8 rows directly)."""
        v = np.asarray(_const(node.inputs[0]), np.float32)
        p = qparams_u8(float(v.min()), float(v.max()))
        q = np.asarray(np.clip(np.round(v / p.scale) + p.zero_point, 0, 255), dtype=np.uint8)
        base = node.inputs[0].name
        s_c, z_c = self.consts(p)
        q_c = gs.Constant(self.gen(f"{base}_quantized"), q)
        deq = gs.Variable(self.gen(f"{base}_dequantized"), dtype=np.float32, shape=list(v.shape))
        self.node("DequantizeLinear", [q_c, s_c, z_c], [deq], f"{base}_DequantizeLinear")
        node.inputs[0] = deq
        y = node.outputs[0]
        fresh = gs.Variable(self.gen(f"{y.name}_float"), dtype=np.float32, shape=getattr(y, "shape", None))
        node.outputs[0] = fresh
        yq = gs.Variable(self.gen(f"{y.name}_quantized"), dtype=np.uint8, shape=getattr(y, "shape", None))
        self.node("QuantizeLinear", [fresh, s_c, z_c], [yq], f"{y.name}_QuantizeLinear")
        self.node("DequantizeLinear", [yq, s_c, z_c], [y], f"{y.name}_DequantizeLinear")
        self.stats["tables_uint8"] += 1
        self.stats["weight_bytes_int8"] += int(q.nbytes)

    # -- main
    def run(self) -> dict:
        order = list(self.g.nodes)
        outs = [(n, n.outputs[0].name) for n in order if n.name in self.plan.roles and n.outputs]
        for node in order:
            r = self.plan.roles.get(node.name)
            if r is None or r.role in ("pass", "scale"):
                continue
            if r.role == "table":
                self.table(node)
                continue
            in_names = [node.inputs[i].name for i in r.acts]
            scales = [self.use(node, i) for i in r.acts]
            if r.role in ("hsig", "hswish"):
                self.hard_sigmoid(node, r, in_names[0])
            elif r.role == "conv":
                cout = int(np.asarray(_const(node.inputs[1])).shape[0])
                self.weight_dq(node, 1, 0, scales[0], 2, cout)
            elif r.role == "matmul":
                n = int(np.asarray(_const(node.inputs[1])).shape[1])
                del n
                self.weight_dq(node, 1, 1, scales[0], None, None)
            elif r.role == "gemm":
                bw = np.asarray(_const(node.inputs[1]))
                trans_b = int(node.attrs.get("transB", 0))
                n = bw.shape[0] if trans_b else bw.shape[1]
                self.weight_dq(node, 1, 0 if trans_b else 1, scales[0], 2, n)
            elif r.role == "binary":
                for i in range(len(node.inputs)):
                    if i not in r.acts:
                        self.const_dq(node, i)
            if node.name in self.plan.q_output:
                y = node.outputs[0]
                eff, chain = _effective_output(self.g, node)
                target = eff if chain and all(c.name in self.plan.absorbed for c in chain) else y
                self.materialize(target.name)
        # pass nodes: their outputs get a Q/DQ with the shared parameters; inputs read the DQ
        for node, out in outs:
            r = self.plan.roles.get(node.name)
            if r is not None and r.role == "pass":
                self.use(node, r.acts[0])
                self.materialize(out)
        for node, out in outs:
            r = self.plan.roles.get(node.name)
            if r is not None and r.role == "scale":
                self.materialize(out)
        self.g.cleanup(remove_unused_graph_inputs=False)
        self.g.toposort()
        out = dict(self.stats)
        out["bias_scale_raised_channels"] = self.bias_clamped
        return out


def emit(graph: gs.Graph, plan: Plan, qparams: dict[str, QParams], opts: EmitOptions | None = None) -> dict:
    """Rewrite ``graph`` in place into QDQ form following ``plan``; returns counts of what was emitted."""
    missing = [t.root for t in plan.tensors.values() if t.root not in qparams]
    if missing:
        raise KeyError(f"no quantization parameters for {sorted(set(missing))[:5]}")
    return _Emitter(graph, plan, qparams, opts or EmitOptions()).run()
