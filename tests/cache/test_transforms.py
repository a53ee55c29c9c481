"""Policies under jit, vmap and scan; one compilation for a thousand decode steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from cache_oracles import assert_valid_topk, ring_kept, snapkv_scores

from lcache.cache import H2O, Recompress, SnapKV, StreamingLLM

B, H, D = 2, 2, 4


def step(policy, state, key, probs):
    """One decode step for every row: append at the next position, then attention feedback."""
    state = policy.append(state, key, key, state.seen)
    return policy.observe(state, probs[..., : state.capacity])


def test_one_compilation_for_1000_appends():
    policy = Recompress(H2O(3, 2), interval=2, target=3)  # evicts and re-selects
    traces = []

    @jax.jit
    def decode(state, key, probs):
        traces.append(None)  # runs only while tracing
        return step(policy, state, key, probs)

    state = policy.init(B, H, D)
    rng = np.random.default_rng(0)  # host arrays: slicing a device array would dispatch too
    keys = rng.normal(size=(1000, B, H, D)).astype(np.float32)
    probs = rng.uniform(size=(1000, B, H, 8)).astype(np.float32)
    for i in range(1000):
        state = decode(state, keys[i], probs[i])
    assert len(traces) == 1 and decode._cache_size() == 1
    pos = np.asarray(state.pos)
    assert (pos >= 0).sum(-1).max() <= policy.capacity
    assert (pos == 999).any(-1).all()  # the newest token is always cached
    assert np.asarray(state.seen).tolist() == [1000, 1000]


def test_scan_of_1000_appends_matches_oracle():
    policy = StreamingLLM(window=5, num_sinks=3)
    keys = jnp.broadcast_to(jnp.arange(1000.0)[:, None, None, None], (1000, B, H, D))

    @jax.jit
    def stream(state):
        return jax.lax.scan(lambda s, k: (step(policy, s, k, jnp.zeros((B, H, 8))), None),
                            state, keys)[0]

    state = stream(policy.init(B, H, D))
    for row in np.asarray(state.pos).reshape(-1, policy.capacity):
        assert set(row.tolist()) == ring_kept(1000, 3, 5)
    valid = np.asarray(state.pos) >= 0
    np.testing.assert_array_equal(np.asarray(state.keys)[..., 0][valid],
                                  np.asarray(state.pos)[valid])


def test_vmap_over_independent_caches():
    """SnapKV prefill vmapped over 3 independent caches keeps what the oracle keeps in each."""
    policy = SnapKV(budget=4, window=2, kernel=3, decode_capacity=0)
    n, t, hq = 3, 9, 4
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(n, B, H, t, D)).astype(np.float32) * 2
    queries = rng.normal(size=(n, B, hq, t, D)).astype(np.float32) * 2
    pos = jnp.broadcast_to(jnp.arange(t), (B, t))

    def one(k, q):
        return policy.prefill(policy.init(B, H, D), k, k, pos, queries=q).pos

    kept = np.asarray(jax.jit(jax.vmap(one))(keys, queries))
    for i in range(n):
        for b in range(B):
            scores = snapkv_scores(queries[i, b], keys[i, b], 2, 3, "avg", "mean")
            for h in range(H):
                by_pos = dict(enumerate(scores[h])) | {t - 2: np.inf, t - 1: np.inf}
                assert_valid_topk({int(p) for p in kept[i, b, h] if p >= 0}, by_pos, 4,
                                  forced=(t - 2, t - 1))
