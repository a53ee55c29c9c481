"""AdaKV over SnapKV's vote: the kept (head, token) pairs against a numpy oracle of kvpress's
formula, ragged per-head capacities in a pool of exactly H * budget entries, the decode ring,
the model's cached forward (a budget that keeps everything equals the dense cache; the pool
has no kernel: 'pallas' refuses before any work) and bad arguments."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cache_oracles import near_tie, snapkv_scores
from hypothesis import given, settings
from hypothesis import strategies as st

from lcache.cache import AdaKV, Dense, SnapKV, SnapVote, registry

B, H, G, T, D = 2, 2, 2, 16, 8
BIG = np.finfo(np.float32).max


def adakv_oracle(q_HqTD, k_HTD, window, kernel, pooling, budget, alpha):
    """kvpress AdaKVPress(SnapKVPress) on one row: per head, the kept token indices, and
    whether a float32 near-tie at a selection boundary could flip them."""
    s = snapkv_scores(q_HqTD, k_HTD, window, kernel, pooling, "mean")  # [H, T - window]
    h, t = k_HTD.shape[:2]
    full = np.concatenate([s, np.full((h, window), s.max() + 1)], axis=1)
    n_safe = max(1, int(budget * alpha)) if alpha > 0 else 0
    fragile = any(near_tie(row, n_safe, below=s.max() + 1) for row in full)
    for row in full:
        row[np.argsort(-row, kind="stable")[:n_safe]] = BIG
    fragile |= near_tie(full, h * budget, below=s.max() + 1)
    keep = np.argsort(-full.ravel(), kind="stable")[: h * budget]
    return [sorted(int(i) % t for i in keep if i // t == head) for head in range(h)], fragile


def _prefill(policy, q, k, v, lengths):
    pos = jnp.where(jnp.arange(T)[None] < jnp.asarray(lengths)[:, None], jnp.arange(T)[None], -1)
    state = policy.init(B, H, D)
    return jax.jit(lambda s, k, v, p, q: policy.prefill(s, k, v, p, queries=q))(
        state, k, v, pos.astype(jnp.int32), q)


def _kept(state, b):
    pos, owner = np.asarray(state.pos[b, 0]), np.asarray(state.owner[b, 0])
    return [sorted(int(p) for p in pos[(owner == h) & (pos >= 0)]) for h in range(H)]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), window=st.integers(1, 4), extra=st.integers(0, 8),
       kernel=st.sampled_from([1, 3, 5]), pooling=st.sampled_from(["avg", "max"]),
       alpha=st.sampled_from([0.0, 0.2, 0.5]))
def test_kept_pairs_match_kvpress_formula(seed, window, extra, kernel, pooling, alpha):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, H * G, T, D)).astype(np.float32) * 2
    k = rng.normal(size=(B, H, T, D)).astype(np.float32) * 2
    v = rng.normal(size=(B, H, T, D)).astype(np.float32)
    budget, lengths = window + extra, [T, T - 3]
    policy = AdaKV(budget, SnapVote(window, kernel, pooling), alpha, decode_capacity=2)
    state = _prefill(policy, jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), lengths)
    for b, n in enumerate(lengths):
        want, fragile = adakv_oracle(q[b, :, :n], k[b, :, :n], window, kernel, pooling, budget,
                                     alpha)
        if fragile:
            continue
        got = _kept(state, b)
        assert got == want
        assert sum(map(len, got)) == min(H * budget, H * n)
        for h, kept in enumerate(got):  # the stored keys are the kept tokens' keys
            sel = (np.asarray(state.owner[b, 0]) == h) & (np.asarray(state.pos[b, 0]) >= 0)
            order = np.argsort(np.asarray(state.pos[b, 0])[sel])
            np.testing.assert_array_equal(np.asarray(state.keys[b, 0])[sel][order], k[b, h, kept])


def test_ragged_capacities_in_a_pool_of_the_layer_budget():
    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.normal(size=(B, H * G, T, D)) * 3, jnp.float32)
    k = jnp.asarray(rng.normal(size=(B, H, T, D)) * 3, jnp.float32)
    policy = AdaKV(6, SnapVote(2, 1), 0.2, decode_capacity=4)
    state = _prefill(policy, q, k, k, [T, T])
    counts = [[len(x) for x in _kept(state, b)] for b in range(B)]
    assert all(sum(c) == H * 6 for c in counts) and any(c[0] != c[1] for c in counts)
    assert state.keys.shape == (B, 1, H * 6, D)
    assert policy.nbytes(1, H, 64) < SnapKV(6, 2, decode_capacity=4).nbytes(1, H, 64) + 64


def test_decode_ring_keeps_the_newest():
    rng = np.random.default_rng(4)
    q = jnp.asarray(rng.normal(size=(B, H * G, T, D)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(B, H, T, D)), jnp.float32)
    policy = AdaKV(4, SnapVote(2, 1), 0.2, decode_capacity=3)
    state = _prefill(policy, q, k, k, [T, 10])
    for i in range(5):
        p = jnp.asarray([T + i, 10 + i], jnp.int32)
        state = policy.append(state, k[:, :, 0] + i, k[:, :, 0], p)
    ring = policy.view(state).segments[1]
    for b, first in enumerate((T, 10)):
        got = sorted(int(p) for p in np.asarray(ring.key_pos[b, 0])[np.asarray(ring.valid[b, 0])])
        assert got == [first + 2, first + 3, first + 4]


def _logits(policies, impl="xla", prompt=10, steps=4):
    from flax import nnx

    from lcache.model import ModelConfig
    from lcache.model.transformer import Transformer

    cfg = ModelConfig(vocab_size=64, dim=64, num_layers=2, num_heads=4, num_kv_heads=H,
                      ffn_dim=64, max_seq_len=64, attention_impl=impl)
    m = Transformer(cfg, nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(2), (B, prompt + steps), 0, 64)
    pos = jnp.broadcast_to(jnp.arange(prompt), (B, prompt))
    _, caches = m.prefill(tokens[:, :prompt], pos, m.init_cache(policies, B), policies)
    out = []
    for i in range(steps):
        logits, caches = m.decode(tokens[:, prompt + i], jnp.full((B,), prompt + i), caches,
                                  policies)
        out.append(logits)
    return np.stack(out)


def test_model_budget_of_the_whole_prompt_is_dense():
    ada = AdaKV(10, SnapVote(2, 3), 0.2, decode_capacity=4)
    np.testing.assert_allclose(_logits((ada,) * 2), _logits((Dense(14),) * 2), atol=1e-5)
    small = _logits((AdaKV(4, SnapVote(2, 3), 0.2, decode_capacity=4),) * 2)
    assert np.isfinite(small).all()
    with pytest.raises(ValueError, match="impl='pallas'.*pool"):
        _logits((ada,) * 2, impl="pallas", steps=1)


def test_bad_arguments_and_spec():
    with pytest.raises(ValueError, match="budget=3 must be >= the 4 tokens every head keeps"):
        AdaKV(3, SnapVote(4))
    with pytest.raises(ValueError, match="alpha must be in"):
        AdaKV(8, SnapVote(4), alpha=1.5)
    with pytest.raises(ValueError, match="decode_capacity"):
        AdaKV(8, SnapVote(4), decode_capacity=0)
    policy = registry.build("adakv(window=4,alpha=0.3)", 12, prompt_len=40, max_new=6)
    assert policy == AdaKV(12, SnapVote(4, 5, "avg"), 0.3, 6)
    assert registry.spec(policy) == "adakv(window=4,decode=6,alpha=0.3)"
    with pytest.raises(ValueError, match="PoolState; quantized storage needs"):
        registry.build("adakv(window=4)@int4", 12, prompt_len=40, max_new=6).init(1, 2, 32)
