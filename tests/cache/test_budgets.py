"""Budgets, per-layer allocators (PyramidKV, DynamicKV) and the bytes they cost."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from lcache.cache import (
    H2O,
    Budget,
    Dense,
    KVState,
    SnapKV,
    StreamingLLM,
    cache_bytes,
    dynamic,
    per_layer,
    pyramid,
    uniform,
)


def test_budget_resolution_follows_kvpress_rounding():
    assert Budget(tokens=10).resolve(96) == 10
    assert Budget(fraction=0.5).resolve(96) == 48
    assert Budget.from_compression_ratio(0.3).resolve(97) == int(97 * (1 - 0.3)) == 67
    assert Budget.from_compression_ratio(0.999).resolve(10) == 1  # max(1, ...)
    assert Budget.from_compression_ratio(0.5).exact(95) == 47.5


@pytest.mark.parametrize("kw,match", [
    (dict(), "exactly one"),
    (dict(tokens=4, fraction=0.5), "exactly one"),
    (dict(tokens=0), "tokens must be >= 1"),
    (dict(fraction=1.5), r"fraction must be in \(0, 1\]"),
])
def test_bad_budget_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        Budget(**kw)


def test_budget_errors_on_use():
    with pytest.raises(ValueError, match="larger than the 8-token prompt"):
        Budget(tokens=9).resolve(8)
    with pytest.raises(ValueError, match=r"compression ratio must be in \[0, 1\)"):
        Budget.from_compression_ratio(1.0)


def test_pyramid_factory_schedule():
    # KVCache-Factory PyramidKVCluster: min = (C-w)//beta, max = 2(C-w) - min, integer steps
    b = pyramid(128, 32, 100_000, window=8)
    assert b[0] == 242 and b[1] == 235 and b[-1] == 25  # steps (234 - 6) // 31 = 7
    assert list(b) == sorted(b, reverse=True)
    # the largest layer is capped by the prompt: max = T - w, min = 2(C - w) - max
    b = pyramid(128, 32, 240, window=8)
    assert b[0] == 240 and b[-1] == 232 - 31 * 7 + 8
    assert pyramid(128, 4, 100, window=8) == (100,) * 4  # prompt shorter than the budget
    assert pyramid(128, 4, 200, window=8) == (128,) * 4  # shorter than 2 (C - w): uniform
    assert pyramid(64, 1, 1000, window=8) == (64 * 2 - 8 - 56 // 20,)  # one layer: no steps


def test_pyramid_kvpress_schedule():
    r = Budget.from_compression_ratio(0.5)
    assert pyramid(r, 4, 96, window=8, rounding="kvpress") == (88, 61, 35, 8)
    # infeasible (min < window): uniform max(1, round(T * (1 - ratio)))
    assert pyramid(Budget.from_compression_ratio(0.9), 4, 96, window=8,
                   rounding="kvpress") == (10,) * 4
    assert np.mean(pyramid(r, 8, 512, window=16, rounding="kvpress")) == pytest.approx(256, abs=1)


@pytest.mark.parametrize("kw,match", [
    (dict(beta=0), "beta must be > 0"),
    (dict(rounding="paper"), "rounding must be one of"),
    (dict(budget=8), "must exceed window"),
])
def test_bad_pyramid_raises(kw, match):
    args = dict(budget=64, num_layers=4, prompt_len=512, window=8) | kw
    with pytest.raises(ValueError, match=match):
        pyramid(**args)


def probe(scores_BHT, window):
    """A probe cache as ``SnapKV(budget=T)`` leaves it: every token, pooled vote in ``score``."""
    b, h, t = scores_BHT.shape
    pos = jnp.broadcast_to(jnp.arange(t), (b, h, t))
    return KVState(keys=jnp.zeros((b, h, t, 1)), values=jnp.zeros((b, h, t, 1)), pos=pos,
                   score=jnp.asarray(scores_BHT, jnp.float32), seen=jnp.full((b,), t))


def test_dynamic_moves_budget_to_layers_with_strong_votes():
    rng = np.random.default_rng(0)
    t, w = 64, 4
    layers = [probe(rng.uniform(size=(1, 2, t)) * scale, w) for scale in (10.0, 1.0, 0.1)]
    b = dynamic(layers, budget=12, window=w, r_max=3)
    assert sum(b) == 12 * 3
    assert b[0] > b[1] >= b[2] >= w
    assert b[0] - w <= 3 * (12 - w)  # no layer beyond r_max x base
    even = dynamic([probe(rng.uniform(size=(1, 2, t)), w)] * 3, budget=12, window=w)
    assert even == (12, 12, 12)
    with pytest.raises(ValueError, match="must exceed window"):
        dynamic(layers, budget=4, window=4)


def test_per_layer_and_real_bytes():
    budgets = pyramid(Budget.from_compression_ratio(0.5), 4, 96, window=8, rounding="kvpress")
    policies = per_layer(lambda c: SnapKV(budget=c, window=8, decode_capacity=0), budgets)
    assert [p.capacity for p in policies] == [88, 61, 35, 8]
    per_slot = 2 * 16 * 2 + 4 + 4  # keys + values (bf16) + pos + score, per head
    assert cache_bytes(policies, 1, 2, 16) == sum(budgets) * 2 * per_slot + 4 * 4  # + seen
    dense = cache_bytes(Dense(96), 1, 2, 16)
    half = per_layer(lambda c: H2O(heavy=c - 8, recent=8), uniform(48, 4))
    assert cache_bytes(half, 1, 2, 16) < 4 * dense / 1.9  # half the slots, half the bytes
    snap = functools.partial(SnapKV, 40, decode_capacity=0)
    assert cache_bytes(snap(gqa="per_query_head"), 1, 2, 16, q_heads=8) == \
        4 * cache_bytes(snap(), 1, 2, 16) - 3 * 4
    assert cache_bytes(StreamingLLM(window=4), 2, 2, 8, dtype=jnp.float32) == \
        2 * 2 * 8 * (2 * 8 * 4 + 8) + 2 * 4
