"""Shared benchmark helpers: interleaved timing, medians and ratios, peak RSS, markdown tables.

Machines here are shared and noisy: every comparison runs its candidates interleaved in one process
(A B A B ...), reports medians of repeated runs and the ratio to the anchor, never a single timing.
"""

from __future__ import annotations

import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np


def interleaved_medians(fns: dict[str, Callable[[], object]], repeat: int = 7, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each callable, run round-robin so drift in machine load hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def ort_sessions(models: dict[str, bytes | str], threads: int = 1) -> dict:
    """onnxruntime CPU sessions for timing: ``threads`` intra-op threads, warnings off."""
    import onnxruntime as ort

    sessions = {}
    for k, m in models.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        sessions[k] = ort.InferenceSession(m, opts, providers=["CPUExecutionProvider"])
    return sessions


def ort_latency(models: dict[str, bytes | str], feed: dict[str, np.ndarray], repeat: int = 20,
                threads: int = 1) -> dict[str, float]:
    """Median ORT CPU latency (seconds) of several models on one feed, measured interleaved."""
    sessions = ort_sessions(models, threads)
    return interleaved_medians({k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}, repeat=repeat,
                               warmup=3)


def _vm_hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(cmd: Sequence[str], timeout: float = 1800) -> dict:
    """Run a command; return wall seconds, peak RSS (MB, from VmHWM polled every 20 ms), exit code, output.

    ``ru_maxrss`` is not used: it survives exec, so a child forked from a big parent reports the
    parent's size.
    """
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _vm_hwm_kb(proc.pid))
            if time.perf_counter() - t0 > timeout:
                proc.kill()
            time.sleep(0.02)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        return {"rc": proc.returncode, "seconds": seconds, "rss_mb": peak / 1024,
                "stdout": out.read().decode(errors="replace")[-2000:],
                "stderr": err.read().decode(errors="replace")[-2000:]}


def self_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def reproduce_line() -> str:
    return "reproduce: python " + " ".join(shlex.quote(a) for a in sys.argv)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
