"""HeadKV: per-head budgets (exact layer total, floor, order follows the scores), each head's
kept tokens equal to SnapKV at that head's budget (SnapKV selects each KV head on its own, and
has its kvpress parity), memory of the layer total, and bad budgets or score shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lcache.cache import SnapKV, head_budgets, headkv_layer, headkv_layers, registry

B, H, G, T, D = 2, 4, 2, 24, 8


@settings(max_examples=60, deadline=None)
@given(scores=st.lists(st.floats(0, 10), min_size=1, max_size=8), floor=st.integers(0, 5),
       extra=st.integers(0, 60))
def test_budgets_sum_to_the_layer_total(scores, floor, extra):
    total = floor * len(scores) + extra
    got = head_budgets(scores, total, floor)
    assert sum(got) == total and min(got) >= floor
    share = np.asarray(scores) / sum(scores) * extra if sum(scores) else np.full(len(scores), 0)
    assert all(abs(g - floor - s) < 1 for g, s in zip(got, share, strict=True)) or not sum(scores)


def _prefill(policy, seed):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(B, H * G, T, D)) * 2, jnp.float32)
    k = jnp.asarray(rng.normal(size=(B, H, T, D)) * 2, jnp.float32)
    pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    state = policy.init(B, H, D)
    return jax.jit(lambda s: policy.prefill(s, k, k, pos, queries=q))(state)


def _kept(policy, state):
    flat = policy.view(state).flat()
    return [[sorted(int(p) for p in np.asarray(flat.key_pos[b, h])[np.asarray(flat.valid[b, h])])
             for h in range(H)] for b in range(B)]


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), budget=st.integers(6, 12), base=st.sampled_from([0.0, 0.5]))
def test_each_head_keeps_what_snapkv_keeps_at_its_budget(seed, budget, base):
    scores = np.random.default_rng(seed).random((1, H))
    (layer,) = headkv_layers(scores, budget, base, window=3, kernel=3, pool="avg", decode=1)
    got = _kept(layer, _prefill(layer, seed))
    for heads, snap in layer.groups:
        want = _kept(snap, _prefill(snap, seed))
        for b in range(B):
            for h in heads:
                assert got[b][h] == want[b][h]
    assert sum(snap.budget * len(heads) for heads, snap in layer.groups) == H * budget


def test_memory_is_the_layer_total():
    layer = headkv_layer((4, 12, 8, 8), 32, window=2, kernel=1, pool="avg", decode=1)
    assert [g.keys.shape[1:3] for g in layer.init(1, H, 64).groups] == [(1, 5), (1, 13), (2, 9)]
    assert layer.nbytes(1, H, 64) < SnapKV(12, 2, decode_capacity=1).nbytes(1, H, 64)


def test_bad_budgets_and_scores():
    kw = dict(window=2, kernel=1, pool="avg", decode=1)
    with pytest.raises(ValueError, match=r"sum to 31, not the layer total 32"):
        headkv_layer((4, 11, 8, 8), 32, **kw)
    with pytest.raises(ValueError, match="each must exceed the window 2"):
        headkv_layer((2, 14, 8, 8), 32, **kw)
    with pytest.raises(ValueError, match="finite and >= 0"):
        head_budgets([1.0, -1.0], 10, 2)
    with pytest.raises(ValueError, match=r"head_scores of shape \(3, 4\) are not \[L=2"):
        registry.build("headkv(window=4)", 12, prompt_len=64, num_layers=2,
                       head_scores=np.ones((3, 4)))
    layers = registry.build("headkv(window=4)@int4", 12, prompt_len=64, max_new=3, num_layers=2,
                            head_scores=np.ones((2, 4)))
    assert registry.spec(layers) == "headkv(window=4,decode=3)@int4"
