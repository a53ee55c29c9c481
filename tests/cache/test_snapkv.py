"""SnapKV against a float64 NumPy oracle of the observation-window vote (algorithms.md §0)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cache_oracles import assert_valid_topk, snapkv_scores
from hypothesis import given, settings
from hypothesis import strategies as st

from lcache.cache import Budget, SnapKV

B, HKV, HQ, T, D = 2, 2, 4, 16, 8
CONFIGS = [
    dict(budget=9, window=4, kernel=3, pooling="avg", gqa="mean"),
    dict(budget=7, window=2, kernel=5, pooling="max", gqa="max"),
    dict(budget=6, window=3, kernel=1, pooling="avg", gqa="per_query_head"),
]


@functools.partial(jax.jit, static_argnums=0)
def prefill(policy, keys, values, pos, queries):
    h = keys.shape[1]
    state = policy.init(keys.shape[0], h, keys.shape[-1])
    return policy.prefill(state, keys, values, pos, queries=queries)


def prompt(seed, lengths):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, HQ, T, D)).astype(np.float32) * 2
    k = rng.normal(size=(B, HKV, T, D)).astype(np.float32) * 2
    v = rng.normal(size=(B, HKV, T, D)).astype(np.float32)
    pos = np.where(np.arange(T)[None] < np.asarray(lengths)[:, None], np.arange(T)[None], -1)
    return q, k, v, pos.astype(np.int32)


@settings(max_examples=20, deadline=None)
@given(config=st.sampled_from(CONFIGS), seed=st.integers(0, 2**16),
       short=st.integers(8, T))
def test_matches_oracle_with_right_padding(config, seed, short):
    policy = SnapKV(**config, decode_capacity=0)
    q, k, v, pos = prompt(seed, [T, short])
    reps = policy.cache_heads(HKV, HQ) // HKV
    kc, vc = np.repeat(k, reps, 1), np.repeat(v, reps, 1)
    state = prefill(policy, jnp.asarray(kc), jnp.asarray(vc), jnp.asarray(pos), jnp.asarray(q))
    w = policy.window
    for b, length in enumerate([T, short]):
        scores = snapkv_scores(q[b, :, :length], k[b, :, :length], w, policy.kernel,
                               policy.pooling, policy.gqa)
        for h in range(scores.shape[0]):
            kept = {int(p) for p in np.asarray(state.pos[b, h]) if p >= 0}
            by_pos = {p: scores[h, p] for p in range(length - w)}
            by_pos.update({p: np.inf for p in range(length - w, length)})
            assert_valid_topk(kept, by_pos, policy.budget, forced=range(length - w, length))
            # stored keys are the prompt's keys at those positions
            slots = np.asarray(state.pos[b, h]) >= 0
            np.testing.assert_array_equal(np.asarray(state.keys[b, h])[slots],
                                          kc[b, h][np.asarray(state.pos[b, h])[slots]])


def test_short_prompt_keeps_everything():
    policy = SnapKV(**CONFIGS[0], decode_capacity=0)  # budget 9
    q, k, v, pos = prompt(0, [9, 5])
    state = prefill(policy, *map(jnp.asarray, (k, v, pos, q)))
    assert {int(p) for p in np.asarray(state.pos[0, 0]) if p >= 0} == set(range(9))
    assert {int(p) for p in np.asarray(state.pos[1, 1]) if p >= 0} == set(range(5))


def test_decode_appends_then_evicts_lowest_vote_outside_window():
    policy = SnapKV(budget=6, window=2, kernel=3, decode_capacity=3)
    q, k, v, pos = prompt(1, [T, T])
    state = prefill(policy, *map(jnp.asarray, (k, v, pos, q)))
    prompt_kept = np.asarray(state.pos) >= 0
    assert prompt_kept.sum(-1).max() == 6 and state.capacity == 9

    @jax.jit
    def step(state, p, probs):
        x = jnp.full((B, HKV, D), 1.0)
        state = policy.append(state, x, x, jnp.full((B,), p))
        return policy.observe(state, probs)

    rng = np.random.default_rng(0)
    for i in range(3):  # fills the spare slots: nothing evicted
        state = step(state, T + i, jnp.asarray(rng.uniform(size=(B, HKV, 9)), jnp.float32))
        assert ((np.asarray(state.pos) >= 0) == (prompt_kept | (np.asarray(state.pos) >= T))).all()
    before_pos, before_score = np.asarray(state.pos), np.asarray(state.score)
    state = step(state, T + 3, jnp.zeros((B, HKV, 9), jnp.float32))
    for b in range(B):
        for h in range(HKV):
            old = dict(zip(before_pos[b, h].tolist(), before_score[b, h].tolist(), strict=True))
            now = set(np.asarray(state.pos[b, h]).tolist())
            (victim,) = set(old) - now
            assert victim <= T + 3 - 2  # outside the protected window
            assert old[victim] == min(s for p, s in old.items() if p <= T + 1)


@pytest.mark.parametrize("kw,match", [
    (dict(budget=3, window=4), "must be >= window"),
    (dict(budget=8, window=0), "window must be >= 1"),
    (dict(budget=8, window=4, kernel=4), "positive odd"),
    (dict(budget=8, window=4, kernel=-1), "positive odd"),
    (dict(budget=8, window=4, pooling="mean"), "pooling must be one of"),
    (dict(budget=8, window=4, gqa="sum"), "gqa must be one of"),
    (dict(budget=8, window=4, decode_capacity=-1), "decode_capacity"),
])
def test_bad_config_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        SnapKV(**kw)


def test_for_prompt_resolves_and_validates():
    assert SnapKV.for_prompt(96, Budget.from_compression_ratio(0.5), window=8).budget == 48
    assert SnapKV.for_prompt(96, Budget(fraction=0.25), window=8).budget == 24
    with pytest.raises(ValueError, match="longer than the 16-token prompt"):
        SnapKV.for_prompt(16, 40, window=32)
    with pytest.raises(ValueError, match="larger than the 16-token prompt"):
        SnapKV.for_prompt(16, Budget(tokens=20), window=4)
    assert SnapKV(budget=40, gqa="per_query_head").cache_heads(2, 8) == 8
    assert SnapKV(budget=40).cache_heads(2, 8) == 2
