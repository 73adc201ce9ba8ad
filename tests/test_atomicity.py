"""kill -9 during a save never leaves a corrupt OUT: a reader sees the old model or the new one, whole.

A child process saves models over the same OUT in a loop (alternating two different models, in each
of the three ways onnxopt writes: one buffer, streamed initializer by initializer, and graph + external
data); the parent SIGKILLs it at staggered moments and then loads OUT, which must be one of the two
models exactly, with its weights, never a mix or a truncation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxopt.model as mio

CHILD = r"""
import sys, onnx
import onnxopt.model as mio
mode, out, a, b = sys.argv[1:5]
models = [onnx.load(a), onnx.load(b)]
if mode == "streamed":
    mio.STREAM_SAVE_BYTES = 0
print("ready", flush=True)
i = 0
while True:
    mio.save(models[i % 2], out, external_data=(mode == "external"))
    i += 1
"""


def _model(fill: float) -> onnx.ModelProto:
    """x[1,256] @ w[256,256] (+ a second weight): 512 KB of weights, all equal to ``fill``."""
    w1 = numpy_helper.from_array(np.full((256, 256), fill, np.float32), "w1")
    w2 = numpy_helper.from_array(np.full((256, 256), -fill, np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _fill_of(model: onnx.ModelProto) -> float:
    w1, w2 = (numpy_helper.to_array(t) for t in model.graph.initializer)
    assert np.all(w1 == w1.flat[0]) and np.all(w2 == -w1.flat[0]), "weights of two saves mixed or torn"
    return float(w1.flat[0])


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("mode", ["buffer", "streamed", "external"])
def test_kill_9_during_save_leaves_old_or_new_model(tmp_path: Path, mode: str) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(_model(1.0), a)
    onnx.save(_model(2.0), b)
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    mio.save(_model(1.0), out, external_data=(mode == "external"))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    seen = set()
    for round_ in range(6):
        child = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(out), str(a), str(b)],
                                 stdout=subprocess.PIPE, env=env)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(0.05 + 0.037 * round_)  # staggered: the kill lands at different points of a write
        child.send_signal(signal.SIGKILL)
        child.wait()
        seen.add(_fill_of(mio.load(out)))  # loads whole (external data included) and is one model
    assert seen <= {1.0, 2.0}
    if mode == "external":  # at most one data file per model file that ever went live, plus temp litter
        live = {e.value for t in onnx.load(out, load_external_data=False).graph.initializer
                for e in t.external_data if e.key == "location"}
        assert len(live) == 1 and (out.parent / live.pop()).exists()
