"""Streaming activation statistics: exact against statistics over all samples held at once."""

from __future__ import annotations

import numpy as np
from conftest import make_mlp, run_ort

from onnxopt.activations import TensorStats, collect_stats


def test_histogram_growth_is_exact():
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal(1000).astype(np.float32) * s for s in (0.1, 1.0, 30.0, 2.0)]
    st = TensorStats("t", bins=64)
    for c in chunks:
        st.update(c)
    allv = np.concatenate(chunks)
    assert st.count == allv.size and st.hist.sum() == allv.size
    assert st.min == allv.min() and st.max == allv.max()
    assert st.bound >= np.abs(allv).max()
    # the streamed histogram equals a one-shot histogram on the final range
    ref, _ = np.histogram(allv, bins=st.edges)
    assert np.abs(ref - st.hist).sum() <= 4  # values exactly on a bin edge may land one bin over


def test_collect_stats_matches_direct_run():
    model = make_mlp()
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((1, 8)).astype(np.float32)} for _ in range(7)]
    stats = collect_stats(model, ["h2", "y", "x"], feeds, channel_axis={"h2": 1})
    ys = np.concatenate([run_ort(model, f)[0] for f in feeds])
    assert np.isclose(stats["y"].min, ys.min()) and np.isclose(stats["y"].max, ys.max())
    xs = np.concatenate([f["x"] for f in feeds])
    assert stats["x"].max == xs.max()
    assert stats["h2"].min >= 0  # after Relu
    assert stats["h2"].channel_abs_mean.shape == (16,)


def test_histogram_survives_values_near_float32_max():
    """Attention masks hold -3.4e38: binning must not overflow to inf or wrap int64."""
    import warnings

    stats = TensorStats("mask")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow would raise here
        stats.update(np.array([-3.4e38, 0.0, 1.0, 3.4e38], np.float32))
    assert stats.hist.sum() == 4
    assert stats.hist[0] == 1 and stats.hist[-1] == 1 and stats.hist[stats.bins // 2] == 2
    assert np.isfinite(stats.bound)
