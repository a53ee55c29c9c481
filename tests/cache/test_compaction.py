"""TriAttention-style decode-time compaction: kept positions after a prefill and a long decode
against a float64 numpy simulation (compaction exactly when budget + interval slots overflow,
sinks and recent kept, the rest by expected attention from the prompt's query centre), one
compiled decode step, the model's forward (a cache that never fills equals dense)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from cache_oracles import near_tie
from hypothesis import given, settings
from hypothesis import strategies as st

from lcache.cache import DecodeCompaction, Dense, registry

B, H, G, D = 2, 2, 2, 8
INV = 10000.0 ** (-np.arange(0, D, 2) / D)


def rope(x, pos):
    ang = np.asarray(pos, np.float64)[..., None] * INV
    cos, sin = np.cos(ang), np.sin(ang)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def oracle(p: DecodeCompaction, q_pre, keys, values, prompt, steps):
    """Per (row, head) the kept positions after the stream (keys are stored rotated), and
    whether a float32 near-tie at some compaction could flip them."""
    n = prompt + steps
    out, fragile = [], False
    for b in range(B):
        row = []
        for h in range(H):
            qs = q_pre[b, h * G:(h + 1) * G, p.sinks:prompt]  # [G, T', D]
            mu = qs.sum((0, 1)) / max(qs.shape[0] * qs.shape[1], 1)
            kept = []
            for t in range(n):
                kept.append(t)
                if t < prompt - 1:  # the prompt arrives as one chunk
                    continue
                if len(kept) <= p.capacity:
                    continue
                seen = t + 1
                pf = np.arange(seen, seen + p.n_future)[:, None] * INV
                c, s = np.cos(pf).mean(0), np.sin(pf).mean(0)
                m1, m2 = mu[: D // 2], mu[D // 2:]
                mu_r = np.concatenate([m1 * c - m2 * s, m2 * c + m1 * s])
                prot = [j for j in kept if j < p.sinks or j > seen - 1 - p.recent]
                ev = [j for j in kept if j not in prot]
                lg = np.array([keys[b, h, j] @ mu_r / np.sqrt(D) for j in ev])
                w = np.exp(lg - lg.max())
                w = w / w.sum() * np.linalg.norm(values[b, h, ev], axis=-1)
                fragile |= near_tie(w, p.budget - len(prot))
                best = [ev[i] for i in np.argsort(-w, kind="stable")[: p.budget - len(prot)]]
                kept = sorted(prot + best)
            row.append(kept)
        out.append(row)
    return out, fragile


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), budget=st.integers(6, 10), interval=st.integers(1, 4),
       prompt=st.integers(4, 20), sinks=st.integers(0, 2), recent=st.integers(0, 3))
def test_kept_positions_match_the_simulation(seed, budget, interval, prompt, sinks, recent):
    rng = np.random.default_rng(seed)
    steps = 2 * (budget + interval) + 1
    n = prompt + steps
    q_pre = rng.normal(size=(B, H * G, n, D)) + rng.normal(size=(1, H * G, 1, D))
    keys = rope(rng.normal(size=(B, H, n, D)), np.arange(n))
    values = rng.normal(size=(B, H, n, D))
    p = DecodeCompaction(budget, interval, sinks, recent, n_future=64)
    f = jnp.asarray
    pos = jnp.broadcast_to(jnp.arange(prompt, dtype=jnp.int32), (B, prompt))
    state = jax.jit(lambda s, k, v, q: p.prefill(s, k, v, pos, queries=q))(
        p.init(B, H, D), f(keys[:, :, :prompt], jnp.float32),
        f(values[:, :, :prompt], jnp.float32),
        f(rope(q_pre[:, :, :prompt], np.arange(prompt)), jnp.float32))
    step = jax.jit(p.append)
    for t in range(prompt, n):
        state = step(state, f(keys[:, :, t], jnp.float32), f(values[:, :, t], jnp.float32),
                     jnp.full((B,), t, jnp.int32))
        assert int((state.kv.pos >= 0).sum(-1).max()) <= p.capacity
    assert step._cache_size() == 1  # one program for every step, compacting or not
    want, fragile = oracle(p, q_pre, keys, values, prompt, steps)
    pos_ = np.asarray(state.kv.pos)
    got = [[sorted(int(x) for x in pos_[b, h] if x >= 0) for h in range(H)] for b in range(B)]
    assert fragile or got == want


def test_model_forward_and_spec():
    from flax import nnx

    from lcache.model import ModelConfig
    from lcache.model.transformer import Transformer

    cfg = ModelConfig(vocab_size=64, dim=64, num_layers=2, num_heads=4, num_kv_heads=H,
                      ffn_dim=64, max_seq_len=64)
    m = Transformer(cfg, nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(4), (B, 16), 0, 64)

    def run(policy):
        pos = jnp.broadcast_to(jnp.arange(8), (B, 8))
        _, caches = m.prefill(tokens[:, :8], pos, m.init_cache(policy, B), policy)
        out = []
        for i in range(8):
            logits, caches = m.decode(tokens[:, 8 + i], jnp.full((B,), 8 + i), caches, policy)
            out.append(logits)
        return np.stack(out)

    np.testing.assert_allclose(run(DecodeCompaction(12, 4, 2, 2)), run(Dense(16)), atol=1e-5)
    assert np.isfinite(run(DecodeCompaction(6, 2, 2, 2))).all()
    p = registry.build("compaction(interval=8,recent=4)", 24)
    assert p == DecodeCompaction(24, 8, 4, 4) and registry.spec(p) == \
        "compaction(interval=8,recent=4)"
