"""Least-squares reconstruction of pruned layers from calibration data (He et al. 2017, ThiNet).

For every layer whose input channels were pruned (Conv with group 1, Gemm, MatMul with a constant
weight), re-fit its weight and bias so that, fed the *pruned* model's activations, it reproduces
the *original* model's outputs of that layer:

    min_W  sum_samples || Y_orig - [X_pruned, 1] W ||^2  +  lam ||W - W0||^2

where W0 is the plainly sliced weight (the ridge term pulls toward it when data is scarce). The
fit streams: per sample, the layer's input rows (im2col patches at a random subset of output
positions for convs) and target rows update the normal equations X^T X and X^T Y in float64;
no activation is kept past its sample.

Layers are fitted level by level (see :class:`Reconstructor`): after each level the new weights
go into the pruned model, so later levels see inputs in which earlier reconstruction already took
effect. Each stage runs only the prefix of the models that produces what it needs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .graph_utils import NameGen

log = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]


@dataclass(eq=False)
class FitLayer:
    """One layer to re-fit: where its input comes from, which original output it must match."""

    node: gs.Node
    kind: str  # conv | depthwise | gemm | matmul
    x_name: str
    y_name: str  # tensor in the original model to match (MatMul: its bias Add's output if fused below)
    out_keep: np.ndarray  # kept output channels of the original output
    in_keep: np.ndarray | None = None  # kept input positions along the input's channel axis
    in_axis: int = 1
    x_pruned: bool = True  # input read from the pruned model (else: original, restricted to kept channels)
    bias_node: gs.Node | None = None  # MatMul: the Add holding its bias
    bias_index: int = -1
    d_in: int = 0
    xtx: np.ndarray | None = field(default=None, repr=False)
    xty: np.ndarray | None = field(default=None, repr=False)
    rows: int = 0

    @property
    def has_bias(self) -> bool:
        return self.kind in ("conv", "depthwise", "gemm") or self.bias_node is not None

    def memory(self) -> int:
        """Bytes of the normal equations."""
        d = self.d_in + 1
        c = int(self.out_keep.sum())
        return 8 * (c * d * (d + 1) if self.kind == "depthwise" else d * d + d * c)


def _weight(node: gs.Node) -> np.ndarray:
    return np.asarray(node.inputs[1].values, dtype=np.float64)


def conv_geometry(node: gs.Node, x_shape: tuple[int, ...], y_shape: tuple[int, ...]
                  ) -> tuple[list[int], list[int], list[int], list[int]]:
    """kernel, strides, dilations and begin-pads of a 1-D/2-D conv, auto_pad resolved."""
    w = node.inputs[1].values
    nd = w.ndim - 2
    k = list(w.shape[2:])
    s = list(node.attrs.get("strides", [1] * nd))
    d = list(node.attrs.get("dilations", [1] * nd))
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begins = []
        for i in range(nd):
            total = max((y_shape[2 + i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 - x_shape[2 + i], 0)
            begins.append(total // 2 if auto == "SAME_UPPER" else total - total // 2)
    elif auto == "VALID":
        begins = [0] * nd
    else:
        pads = list(node.attrs.get("pads", [0] * (2 * nd)))
        begins = pads[:nd]
    return k, s, d, begins


def conv_patches(x: np.ndarray, y_hw: tuple[int, ...], k: list[int], s: list[int], d: list[int],
                 begins: list[int], positions: np.ndarray) -> np.ndarray:
    """im2col rows ``[len(positions), C*prod(k)]`` of one image ``x [C, *spatial]`` (1-D or 2-D)."""
    if x.ndim == 2:  # 1-D conv: view as 2-D with height 1
        x = x[:, None, :]
        y_hw, k, s, d, begins = (1, *y_hw), [1, *k], [1, *s], [1, *d], [0, *begins]
    _, h, w = x.shape
    wo = y_hw[1]
    oy, ox = positions // wo, positions % wo
    iy = oy[:, None] * s[0] + np.arange(k[0])[None, :] * d[0] - begins[0]  # [M, kh]
    ix = ox[:, None] * s[1] + np.arange(k[1])[None, :] * d[1] - begins[1]  # [M, kw]
    pad_t = max(0, -int(iy.min()))
    pad_l = max(0, -int(ix.min()))
    pad_b = max(0, int(iy.max()) - (h - 1))
    pad_r = max(0, int(ix.max()) - (w - 1))
    if pad_t or pad_l or pad_b or pad_r:
        x = np.pad(x, ((0, 0), (pad_t, pad_b), (pad_l, pad_r)))
    iy, ix = iy + pad_t, ix + pad_l
    p = x[:, iy[:, :, None], ix[:, None, :]]  # [C, M, kh, kw]
    return np.ascontiguousarray(p.transpose(1, 0, 2, 3)).reshape(len(positions), -1)


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            for n in g.node:
                names.update(i for i in n.input if i)
                names |= _subgraph_reads(n)
    return names


def segment(model: onnx.ModelProto, given: dict[str, np.ndarray] | set[str], outputs: list[str],
            types: dict[str, int]) -> tuple[onnx.ModelProto, list[str]]:
    """The part of ``model`` computing ``outputs`` from its graph inputs and the ``given`` tensors.

    Returns the model (``given`` tensors it needs become graph inputs) and the names it reads
    (graph inputs and given tensors). onnxruntime computes every node of a model whatever outputs
    are fetched, so each reconstruction stage runs only the slice of the graph it has not run yet.
    """
    needed = set(outputs)
    nodes = []
    for node in reversed(model.graph.node):
        if any(o in needed and o not in given for o in node.output):
            nodes.append(node)
            needed.update(i for i in node.input if i)
            needed |= _subgraph_reads(node)
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    g = m.graph
    g.name = model.graph.name
    g.node.extend(reversed(nodes))
    inits = {t.name for t in model.graph.initializer}
    g.initializer.extend(t for t in model.graph.initializer if t.name in needed)
    reads = []
    for vi in model.graph.input:
        if vi.name in needed and vi.name not in inits and vi.name not in given:
            g.input.append(vi)
            reads.append(vi.name)
    for name in sorted(n for n in given if n in needed):
        elem = types.get(name, onnx.TensorProto.FLOAT)
        g.input.append(onnx.helper.make_tensor_value_info(name, elem, None))
        reads.append(name)
    for name in outputs:
        g.output.append(onnx.helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None))
    return m, reads


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor (shape inference on a weight-free copy)."""
    from .prune_graph import _weightless

    m = _weightless(model, {})
    try:
        m = onnx.shape_inference.infer_shapes(m, check_type=False, strict_mode=False)
    except Exception as exc:  # types default to float
        log.debug("type inference failed: %s", exc)
    out = {}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            out[vi.name] = vi.type.tensor_type.elem_type
    return out


class _Stepper:
    """Runs a model forward in slices, one slice per stage, keeping per sample only the frontier:
    the computed tensors later slices still read."""

    def __init__(self, types: dict[str, int]):
        self.types = types
        self.cache: dict[int, dict[str, np.ndarray]] = {}

    def prepare(self, model: onnx.ModelProto, want: set[str], keep: set[str]):
        from onnxopt.validate import OrtRunner

        given = set(next(iter(self.cache.values()))) if self.cache else set()
        outputs = sorted((want | keep) - given)
        self.keep = keep
        self.want = want
        if not outputs:
            self.runner, self.reads = None, []
            return
        seg, self.reads = segment(model, given, outputs, self.types)
        self.runner = OrtRunner(seg)

    def step(self, i: int, feed: Feed) -> dict[str, np.ndarray]:
        cached = self.cache.get(i, {})
        values = dict(cached)
        if self.runner is not None:
            inputs = {n: (cached[n] if n in cached else feed[n]) for n in self.reads}
            values.update(self.runner.run(inputs))
        self.cache[i] = {n: values[n] for n in self.keep if n in values}
        return values

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None


class Reconstructor:
    """Streams calibration data through the original and pruned models and re-fits layers.

    ``x_source="pruned"``: layers are fitted level by level - a level holds the layers that do not
    depend on each other - so every layer sees inputs in which all upstream reconstruction already
    took effect (He et al.): it compensates upstream error instead of learning a stale one.
    ``x_source="original"``: one pass; each layer's input is the original activation restricted
    to the kept channels (cheap; upstream error is not compensated).
    """

    def __init__(self, layers: list[FitLayer], *, rows_per_layer: int, ridge: float, seed: int,
                 x_source: str = "pruned", max_stages: int = 1000, memory_bytes: int = 512 * 2**20):
        self.layers = layers
        self.x_source = x_source
        self.max_stages = max(1, max_stages)
        self.rows_per_layer = rows_per_layer
        self.ridge = ridge
        self.rng = np.random.default_rng(seed)
        self.memory_bytes = memory_bytes
        self.fitted = 0
        self.stages_run = 0
        self.skipped: list[str] = []

    def plan(self, graph: gs.Graph) -> list[list[FitLayer]]:
        """Stages of layers; sets ``layer.x_pruned`` (read the input from the pruned model).

        Layers are grouped by dependency level (a level's layers do not depend on each other).
        Consecutive levels are merged into at most ``max_stages`` stages: within a stage, the first
        level reads the pruned model (exact: everything upstream is already re-fitted) and deeper
        levels read the original activations restricted to the kept channels, the state perfect
        upstream reconstruction would produce. Never the pruned model's *stale* activations: a
        layer fitted to compensate an upstream error that a later fit removes makes things worse.
        """
        by_node = {id(ly.node): ly for ly in self.layers}
        tensor_level: dict[str, int] = {}
        consumer_level: dict[str, int] = {}
        level_of: dict[int, int] = {}
        dynamic = {t.name for t in graph.inputs}  # tensors that depend on the inputs (constants never cached)
        self.dynamic = dynamic
        for node in graph.nodes:
            reads = [t.name for t in node.inputs if t.name] + sorted(_gs_subgraph_reads(node))
            if any(n in dynamic for n in reads):
                dynamic.update(t.name for t in node.outputs if t.name)
            lvl = max((tensor_level.get(n, 0) for n in reads), default=0)
            layer = by_node.get(id(node))
            if layer is not None:
                lvl += 1
                level_of[id(layer)] = lvl
            for t in node.outputs:
                tensor_level[t.name] = lvl
            for n in reads:
                consumer_level[n] = max(consumer_level.get(n, 0), lvl)
        self.level_of, self.tensor_level, self.consumer_level = level_of, tensor_level, consumer_level
        levels: dict[int, list[FitLayer]] = {}
        for layer in self.layers:
            if layer.memory() > self.memory_bytes:
                self.skipped.append(f"{layer.node.name}: {layer.d_in} inputs, too wide to refit in memory")
            elif id(layer) in level_of:
                levels.setdefault(level_of[id(layer)], []).append(layer)
        ordered = [levels[k] for k in sorted(levels)]
        if self.x_source == "original":
            per_stage = max(1, len(ordered))
        else:
            per_stage = max(1, math.ceil(len(ordered) / self.max_stages))
        stages: list[list[FitLayer]] = []
        cur: list[FitLayer] = []
        cur_levels = mem = 0
        for level in ordered:
            for layer in level:
                need = layer.memory()
                if cur and mem + need > self.memory_bytes:
                    stages.append(cur)
                    cur, cur_levels, mem = [], 0, 0
                layer.x_pruned = self.x_source == "pruned" and (not cur or level_of[id(cur[0])] == level_of[id(layer)])
                cur.append(layer)
                mem += need
            cur_levels += 1
            if cur_levels >= per_stage:
                stages.append(cur)
                cur, cur_levels, mem = [], 0, 0
        if cur:
            stages.append(cur)
        return stages

    def frontier(self, t: int) -> set[str]:
        """Tensors final once every layer up to level ``t`` is fitted and still read beyond it."""
        return {n for n, lvl in self.tensor_level.items()
                if lvl <= t < self.consumer_level.get(n, -1) and n in self.dynamic}

    def run(self, original: onnx.ModelProto, pruned: gs.Graph, export: Callable[[], onnx.ModelProto],
            feeds: Callable[[], Iterable[Feed]], n_samples: int, names: NameGen) -> None:
        per_sample = max(16, math.ceil(self.rows_per_layer / max(n_samples, 1)))
        self.skipped.clear()
        stages = self.plan(pruned)
        if not stages:
            return
        types = elem_types(original)
        model_p = export()  # patched in place after every stage (node i of the proto = graph.nodes[i])
        index = {id(n): i for i, n in enumerate(pruned.nodes)}
        inits = {t.name for t in model_p.graph.initializer}
        orig_steps, pruned_steps = _Stepper(types), _Stepper(types)
        use_pruned = False
        for stage in stages:
            self.stages_run += 1
            levels = [self.level_of[id(ly)] for ly in stage]
            t_pruned, t_orig = min(levels) - 1, max(levels)
            want_p = {ly.x_name for ly in stage if ly.x_pruned}
            want_o = {ly.y_name for ly in stage} | {ly.x_name for ly in stage if not ly.x_pruned}
            use_pruned = self.x_source == "pruned"
            orig_steps.prepare(original, want_o, self.frontier(t_orig))
            if use_pruned:
                pruned_steps.prepare(model_p, want_p, self.frontier(t_pruned))
            try:
                for layer in stage:
                    d = layer.d_in + (1 if layer.has_bias else 0)
                    c = int(layer.out_keep.sum())
                    if layer.kind == "depthwise":  # one small system per channel
                        layer.xtx, layer.xty = np.zeros((c, d, d)), np.zeros((c, d))
                    else:
                        layer.xtx, layer.xty = np.zeros((d, d)), np.zeros((d, c))
                    layer.rows = 0
                for i, feed in enumerate(_limited(feeds(), n_samples)):
                    yo = orig_steps.step(i, feed)
                    xp = pruned_steps.step(i, feed) if use_pruned else {}
                    for layer in stage:
                        if layer.x_name in feed:
                            x = np.asarray(feed[layer.x_name])
                        elif layer.x_pruned:
                            x = np.asarray(xp[layer.x_name])
                        else:
                            x = np.asarray(yo[layer.x_name])
                            if layer.in_keep is not None:
                                x = np.compress(layer.in_keep, x, axis=layer.in_axis)
                        self._accumulate(layer, x, np.asarray(yo[layer.y_name]), per_sample)
            finally:
                orig_steps.close()
                if use_pruned:
                    pruned_steps.close()
            for layer in stage:
                self._solve(layer, names)
                layer.xtx = layer.xty = None
                for node in (layer.node, layer.bias_node):
                    if node is not None and id(node) in index:
                        _patch(model_p, index[id(node)], node, inits)

    # ------------------------------------------------------------------ accumulate / solve

    def _rows(self, layer: FitLayer, x: np.ndarray, y: np.ndarray, m: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        keep = layer.out_keep
        if layer.kind in ("conv", "depthwise"):
            k, s, d, begins = conv_geometry(layer.node, x.shape, y.shape)
            for b in range(x.shape[0]):
                spatial = y.shape[2:]
                total = math.prod(spatial)
                pos = np.sort(self.rng.choice(total, size=min(m, total), replace=False))
                xr = conv_patches(x[b], tuple(spatial), k, s, d, begins, pos)
                yr = y[b].reshape(y.shape[1], -1)[:, pos].T
                yield xr, yr[:, keep]
        else:
            xr = x.reshape(-1, x.shape[-1])
            yr = y.reshape(-1, y.shape[-1])
            if xr.shape[0] > m:
                pos = np.sort(self.rng.choice(xr.shape[0], size=m, replace=False))
                xr, yr = xr[pos], yr[pos]
            yield xr, yr[:, keep]

    def _accumulate(self, layer: FitLayer, x: np.ndarray, y: np.ndarray, m: int) -> None:
        for xr, yr in self._rows(layer, x, y, m):
            xr = xr.astype(np.float32, copy=False)
            if layer.kind == "depthwise":
                c = yr.shape[1]
                x3 = xr.reshape(xr.shape[0], c, -1)
                x3 = np.concatenate([x3, np.ones((x3.shape[0], c, 1), np.float32)], axis=2)
                layer.xtx += np.einsum("mck,mcl->ckl", x3, x3, optimize=True).astype(np.float64)
                layer.xty += np.einsum("mck,mc->ck", x3, yr.astype(np.float32), optimize=True).astype(np.float64)
                layer.rows += xr.shape[0]
                continue
            if layer.has_bias:
                xr = np.concatenate([xr, np.ones((xr.shape[0], 1), np.float32)], axis=1)
            layer.xtx += (xr.T @ xr).astype(np.float64)
            layer.xty += (xr.T @ yr.astype(np.float32)).astype(np.float64)
            layer.rows += xr.shape[0]

    def _current(self, layer: FitLayer) -> tuple[np.ndarray, np.ndarray | None]:
        """The layer's current weight as a [D, Cout] matrix and bias [Cout] (None if none)."""
        node = layer.node
        w = _weight(node)
        cout = int(layer.out_keep.sum())
        if layer.kind == "depthwise":  # [C, k] per-channel filters
            b = node.inputs[2].values if len(node.inputs) > 2 and node.inputs[2].name else np.zeros(cout)
            return w.reshape(w.shape[0], -1), np.asarray(b, dtype=np.float64).reshape(-1)
        if layer.kind == "conv":
            wm = w.reshape(w.shape[0], -1).T
            b = node.inputs[2].values if len(node.inputs) > 2 and node.inputs[2].name else np.zeros(cout)
            return wm, np.asarray(b, dtype=np.float64).reshape(-1)
        if layer.kind == "gemm":
            alpha = float(node.attrs.get("alpha", 1.0))
            beta = float(node.attrs.get("beta", 1.0))
            wm = (w.T if int(node.attrs.get("transB", 0)) else w) * alpha
            b = np.zeros(cout)
            if len(node.inputs) > 2 and node.inputs[2].name:
                c = np.asarray(node.inputs[2].values, dtype=np.float64).reshape(-1) * beta
                b = c.copy() if c.size == cout else np.full(cout, c[0])
            return wm, b
        b = None
        if layer.bias_node is not None:
            b = np.asarray(layer.bias_node.inputs[layer.bias_index].values, dtype=np.float64).reshape(-1)
        return w, b

    def _solve(self, layer: FitLayer, names: NameGen) -> None:
        if layer.rows < 1 or layer.xtx is None or layer.xty is None:
            self.skipped.append(f"{layer.node.name}: no data")
            return
        w0, b0 = self._current(layer)
        if layer.kind == "depthwise":
            self._solve_depthwise(layer, w0, b0, names)
            return
        if w0.shape != (layer.d_in, int(layer.out_keep.sum())):
            self.skipped.append(f"{layer.node.name}: weight shape {w0.shape} unexpected")
            return
        theta0 = np.concatenate([w0, b0[None, :]], axis=0) if layer.has_bias else w0
        a = layer.xtx / layer.rows
        rhs = layer.xty / layer.rows
        # ridge toward the sliced weights; stronger when rows are few compared with unknowns
        lam = (self.ridge + a.shape[0] / layer.rows) * max(float(np.trace(a)) / a.shape[0], 1e-12)
        a = a + lam * np.eye(a.shape[0])
        rhs = rhs + lam * theta0
        try:
            theta = np.linalg.solve(a, rhs)
        except np.linalg.LinAlgError:
            theta = np.linalg.lstsq(a, rhs, rcond=None)[0]
        if not np.isfinite(theta).all():
            self.skipped.append(f"{layer.node.name}: non-finite solution")
            return
        w = theta[: layer.d_in]
        b = theta[layer.d_in] if layer.has_bias else None
        self._write(layer, w, b, names)
        self.fitted += 1

    def _solve_depthwise(self, layer: FitLayer, w0: np.ndarray, b0: np.ndarray, names: NameGen) -> None:
        """Per-channel least squares: channel c's filter only ever sees input channel c."""
        if w0.shape != (int(layer.out_keep.sum()), layer.d_in):
            self.skipped.append(f"{layer.node.name}: weight shape {w0.shape} unexpected")
            return
        theta0 = np.concatenate([w0, b0[:, None]], axis=1)  # [C, k+1]
        a = layer.xtx / layer.rows
        rhs = layer.xty / layer.rows
        d = a.shape[1]
        scale = np.maximum(np.trace(a, axis1=1, axis2=2) / d, 1e-12)
        lam = (self.ridge + d / layer.rows) * scale
        eye = np.eye(d)[None]
        theta = np.linalg.solve(a + lam[:, None, None] * eye, (rhs + lam[:, None] * theta0)[..., None])[..., 0]
        if not np.isfinite(theta).all():
            self.skipped.append(f"{layer.node.name}: non-finite solution")
            return
        node = layer.node
        old = node.inputs[1].values
        base = node.name or node.outputs[0].name
        node.inputs[1] = gs.Constant(names(f"{base}_refit_w"),
                                     np.ascontiguousarray(theta[:, :-1].reshape(old.shape).astype(old.dtype)))
        c = gs.Constant(names(f"{base}_refit_b"), theta[:, -1].astype(old.dtype))
        if len(node.inputs) > 2:
            node.inputs[2] = c
        else:
            node.inputs.append(c)
        self.fitted += 1

    def _write(self, layer: FitLayer, w: np.ndarray, b: np.ndarray | None, names: NameGen) -> None:
        node = layer.node
        old = node.inputs[1].values
        dtype = old.dtype
        base = node.name or node.outputs[0].name
        if layer.kind == "conv":
            new_w = w.T.reshape(old.shape)
        elif layer.kind == "gemm":
            alpha = float(node.attrs.get("alpha", 1.0)) or 1.0
            new_w = (w.T if int(node.attrs.get("transB", 0)) else w) / alpha
        else:
            new_w = w
        node.inputs[1] = gs.Constant(names(f"{base}_refit_w"), np.ascontiguousarray(new_w.astype(dtype)))
        if b is None:
            return
        if layer.kind == "conv":
            c = gs.Constant(names(f"{base}_refit_b"), b.astype(dtype))
            if len(node.inputs) > 2:
                node.inputs[2] = c
            else:
                node.inputs.append(c)
        elif layer.kind == "gemm":
            beta = float(node.attrs.get("beta", 1.0))
            has_c = len(node.inputs) > 2 and node.inputs[2].name
            if has_c and beta:
                node.inputs[2] = gs.Constant(names(f"{base}_refit_b"), (b / beta).astype(dtype))
            else:
                node.attrs["beta"] = 1.0
                c = gs.Constant(names(f"{base}_refit_b"), b.astype(dtype))
                if len(node.inputs) > 2:
                    node.inputs[2] = c
                else:
                    node.inputs.append(c)
        elif layer.bias_node is not None:
            bn = layer.bias_node
            shape = bn.inputs[layer.bias_index].values.shape
            bn.inputs[layer.bias_index] = gs.Constant(names(f"{base}_refit_b"), b.reshape(shape).astype(dtype))


def _gs_subgraph_reads(node: gs.Node) -> set[str]:
    names: set[str] = set()
    for v in node.attrs.values():
        subs = [v] if isinstance(v, gs.Graph) else [g for g in v if isinstance(g, gs.Graph)] \
            if isinstance(v, (list, tuple)) else []
        for sub in subs:
            for n in sub.nodes:
                names.update(t.name for t in n.inputs if t.name)
                names |= _gs_subgraph_reads(n)
    return names


def _patch(model: onnx.ModelProto, i: int, node: gs.Node, inits: set[str]) -> None:
    """Mirror a re-fitted node's inputs (new constants) and Gemm's beta into exported node ``i``."""
    from onnx import numpy_helper

    p = model.graph.node[i]
    if p.op_type != node.op:
        raise RuntimeError(f"exported node {i} is {p.op_type}, expected {node.op}")
    del p.input[:]
    p.input.extend(t.name for t in node.inputs)
    for t in node.inputs:
        if isinstance(t, gs.Constant) and t.name not in inits:
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(t.values), t.name))
            inits.add(t.name)
    if node.op == "Gemm" and "beta" in node.attrs:
        for a in p.attribute:
            if a.name == "beta":
                a.f = float(node.attrs["beta"])
                break
        else:
            p.attribute.append(onnx.helper.make_attribute("beta", float(node.attrs["beta"])))


def _limited(it: Iterable[Feed], n: int) -> Iterator[Feed]:
    for i, feed in enumerate(it):
        if i >= n:
            return
        yield feed
