"""Expected Attention: kept sets against a float64 numpy oracle of kvpress's formula (from the
pre-RoPE queries, kvpress's averaged-RoPE matrix), per head (alpha=1) and across heads (AdaKV);
query-agnostic: the score sees only the queries' statistics, so shuffling which token asked
which query keeps the same cache."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cache_oracles import near_tie
from hypothesis import given, settings
from hypothesis import strategies as st

from lcache.cache import ExpectedAttention, ExpectedScores, registry

B, H, G, T, D = 2, 2, 2, 20, 8
THETA = 10000.0
INV = THETA ** (-np.arange(0, D, 2) / D)


def rope(x, pos):
    """Rotate-half RoPE, float64: ``x [..., T, D]`` at ``pos [T]``."""
    ang = np.asarray(pos, np.float64)[:, None] * INV
    cos, sin = np.cos(ang), np.sin(ang)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def pool(s_HN, kernel, pooling):
    """``torch.nn.functional.{max,avg}_pool1d`` (stride 1, padding ``kernel // 2``, padding
    counted in the average) along the last axis, float64."""
    r = kernel // 2
    fill = -np.inf if pooling == "max" else 0.0
    x = np.pad(s_HN, ((0, 0), (r, r)), constant_values=fill)
    win = np.stack([x[:, i: i + s_HN.shape[1]] for i in range(kernel)])
    return win.max(0) if pooling == "max" else win.sum(0) / kernel


def oracle_scores(q_pre_HqTD, k_HTD, v_HTD, n_future, sinks, epsilon, kernel=1, pooling="max"):
    """kvpress ExpectedAttentionPress.score on one row, float64 -> ``[H, T]`` (then pooled
    along positions when ``kernel > 1``: our extension)."""
    n = q_pre_HqTD.shape[1]
    q = q_pre_HqTD[:, sinks:]
    mu = q.mean(1)
    c = q - mu[:, None]
    cov = np.einsum("hsi,hsj->hij", c, c) / q.shape[1]
    pos = np.arange(n, n + n_future)
    ang = pos[:, None] * INV
    cos = np.concatenate([np.cos(ang)] * 2, -1)  # [F, D]
    sin = np.concatenate([np.sin(ang)] * 2, -1)
    eye, p = np.eye(D), np.zeros((D, D))
    p[D // 2:, : D // 2], p[: D // 2, D // 2:] = np.eye(D // 2), -np.eye(D // 2)
    r = (cos[:, None, :] * eye + sin[:, None, :] * p).mean(0)  # kvpress: column scaling
    mu, cov = mu @ r.T, r @ cov @ r.T
    k = np.repeat(k_HTD[:, sinks:], G, axis=0)
    s = np.einsum("hd,htd->ht", mu, k) / np.sqrt(D)
    s += np.einsum("hti,hij,htj->ht", k, cov, k) / D / 2
    s = np.exp(s - s.max(-1, keepdims=True))
    s = (s / s.sum(-1, keepdims=True)).reshape(H, G, -1).mean(1)
    s = (s + epsilon) * np.linalg.norm(v_HTD[:, sinks:], axis=-1)
    s = pool(s, kernel, pooling) if kernel > 1 else s
    return np.concatenate([np.full((H, sinks), s.max() + 1), s], axis=1)


def oracle_kept(scores_HT, budget, alpha):
    """Per head the kept tokens, or None where a float32 near-tie could flip them."""
    s = scores_HT.copy()
    n_safe = max(1, int(budget * alpha)) if alpha > 0 else 0
    forced = s.max()  # the sinks' max + 1
    if any(near_tie(row, n_safe, below=forced) for row in s):
        return None
    for row in s:
        row[np.argsort(-row, kind="stable")[:n_safe]] = np.finfo(np.float32).max
    if near_tie(s, H * budget, below=forced):
        return None
    keep = np.argsort(-s.ravel(), kind="stable")[: H * budget]
    t = s.shape[1]
    return [sorted(int(i) % t for i in keep if i // t == h) for h in range(H)]


def _case(seed):
    rng = np.random.default_rng(seed)
    q_pre = rng.normal(size=(B, H * G, T, D)) * 1.5 + rng.normal(size=(1, H * G, 1, D))
    k = rng.normal(size=(B, H, T, D)) * 1.5
    v = rng.normal(size=(B, H, T, D))
    return q_pre, rope(k, np.arange(T)), v


def _kept(policy, q_pre, k, v, n=T):
    pos = jnp.where(jnp.arange(T)[None] < n, jnp.arange(T)[None], -1).astype(jnp.int32)
    pos = jnp.broadcast_to(pos, (B, T))
    q = jnp.asarray(rope(q_pre, np.arange(T)), jnp.float32)
    state = jax.jit(lambda s, k, v, p, q: policy.prefill(s, k, v, p, queries=q))(
        policy.init(B, H, D), jnp.asarray(k, jnp.float32), jnp.asarray(v, jnp.float32), pos, q)
    out = []
    for b in range(B):
        pos_, owner = np.asarray(state.pos[b, 0]), np.asarray(state.owner[b, 0])
        out.append([sorted(int(p) for p in pos_[(owner == h) & (pos_ >= 0)]) for h in range(H)])
    return out


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), budget=st.integers(4, 12), sinks=st.integers(0, 3),
       alpha=st.sampled_from([1.0, 0.2]), epsilon=st.sampled_from([0.0, 0.01]),
       n_future=st.sampled_from([1, 64, 512]),
       pooled=st.sampled_from([(1, "max"), (3, "max"), (5, "avg")]))
def test_kept_match_kvpress_formula(seed, budget, sinks, alpha, epsilon, n_future, pooled):
    q_pre, k, v = _case(seed)
    kernel, pooling = pooled
    policy = ExpectedAttention(budget, ExpectedScores(n_future, sinks, epsilon, kernel=kernel,
                                                      pooling=pooling), alpha, 2)
    got = _kept(policy, q_pre, k, v)
    for b in range(B):
        scores = oracle_scores(q_pre[b], k[b], v[b], n_future, sinks, epsilon, kernel, pooling)
        want = oracle_kept(scores, budget, alpha)
        assert want is None or got[b] == want


def test_query_agnostic_shuffle_keeps_the_cache():
    q_pre, k, v = _case(7)
    policy = ExpectedAttention(6, ExpectedScores(64, 2), 0.2, 2)
    perm = np.concatenate([np.arange(2), 2 + np.random.default_rng(0).permutation(T - 2)])
    assert _kept(policy, q_pre, k, v) == _kept(policy, q_pre[:, :, perm], k, v)


def test_spec_and_bad_arguments():
    p = registry.build("expected_attention(sinks=2,alpha=0.2)", 8, prompt_len=32, max_new=4)
    assert p == ExpectedAttention(8, ExpectedScores(sinks=2), 0.2, 4)
    assert registry.spec(p) == "expected_attention(sinks=2,alpha=0.2,decode=4)"
    pooled = registry.build("expected_attention(kernel=29)", 64, prompt_len=128, max_new=4)
    assert pooled.scorer.kernel == 29 and registry.spec(pooled).startswith(
        "expected_attention(kernel=29")
    with pytest.raises(ValueError, match="pool"):
        registry.build("expected_attention(pool=mean)", 8, prompt_len=32, max_new=4)
    with pytest.raises(ValueError, match="budget=2 must be >= the 4 tokens"):
        ExpectedAttention(2, decode_capacity=1)
    with pytest.raises(ValueError, match="epsilon >= 0"):
        ExpectedScores(epsilon=-1.0)
