"""Fuzzing (short run): mutated fixture models and data files end in success or a clear OnnxOptError.

The long run is `python bench/bench_fuzz.py --cases 10000`.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest import make_mlp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fixtures
from onnxopt.data import NpzData, input_specs
from onnxopt.errors import BadDataError
from onnxopt.fuzzing import FuzzStats, mutate, optimize_bytes, packed_seeds, run_case, unpack_bytes

SEEDS = {name: fixtures.get(name).SerializeToString() for name in sorted(fixtures.FIXTURES)}


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_mutated_fixture_models(name):
    rng = random.Random(f"fuzz-{name}")
    stats = FuzzStats()
    for i in range(25):
        run_case(optimize_bytes, mutate(SEEDS[name], rng), stats, f"{name}#{i}", time_limit=60)
    assert not stats.findings, stats.findings
    assert stats.cases == 25


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_random_bytes_are_refused_cleanly(data):
    stats = FuzzStats()
    run_case(optimize_bytes, data, stats, "random")
    assert not stats.findings, stats.findings
    assert stats.ok == 0  # random bytes are never a valid model


def test_mutated_packed_files():
    """Damaged .onnxpack files: a clean BadModelError (or a bit-exact unpack when the damage is inert)."""
    packed = packed_seeds({n: SEEDS[n] for n in sorted(SEEDS)[:6]})
    rng = random.Random(7)
    stats = FuzzStats()
    for i in range(120):
        name = rng.choice(sorted(packed))
        run_case(unpack_bytes, mutate(packed[name], rng), stats, f"{name}#{i}", time_limit=60)
    assert stats.findings == []
    assert stats.errors.get("BadModelError", 0) > 60  # most damage is detected (CRCs, bounds)


def test_mutated_npz_files(tmp_path):
    specs = input_specs(make_mlp())
    good = tmp_path / "good.npz"
    np.savez(good, x=np.random.default_rng(0).standard_normal((4, 1, 8)).astype(np.float32))
    raw = good.read_bytes()
    rng = random.Random(5)
    outcomes = {"ok": 0, "refused": 0}
    for i in range(300):
        bad = tmp_path / f"m{i}.npz"
        bad.write_bytes(mutate(raw, rng))
        try:
            data = NpzData(bad, specs)
            list(data)
            outcomes["ok"] += 1
        except BadDataError as exc:
            assert str(bad) in str(exc)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0
