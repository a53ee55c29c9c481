"""RazorAttention: the compensation token (mean of exactly the dropped keys and values, counted
N_d times) against a numpy oracle of the paper's formula, identification of induction / echo
heads on planted attention maps, the model's forward (all retrieval = dense; bias entries have
no kernel: 'pallas' refuses before any work) and the spec."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cache_oracles import ring_kept
from hypothesis import given, settings
from hypothesis import strategies as st

from lcache.analysis.head_patterns import razor_scores
from lcache.attention.decode import decode_over_view
from lcache.cache import Compensated, Dense, StreamingLLM, razor_heads, razor_layers, registry

B, H, G, D = 2, 2, 2, 8


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(3, 20), sinks=st.integers(0, 2),
       window=st.integers(1, 4), chunk=st.integers(1, 7))
def test_compensation_token_matches_the_formula(seed, n, sinks, window, chunk):
    rng = np.random.default_rng(seed)
    keys = rng.normal(size=(B, H, n, D)).astype(np.float32)
    values = rng.normal(size=(B, H, n, D)).astype(np.float32)
    q = rng.normal(size=(B, H * G, D)).astype(np.float32)
    policy = Compensated(StreamingLLM(window=window, num_sinks=sinks, positions="original"))
    state = policy.init(B, H, D)
    step = jax.jit(lambda s, k, v, p: policy.prefill(s, k, v, p))
    for a in range(0, n, chunk):  # chunked prefill: slots evicted and chunk tokens never stored
        b = min(a + chunk, n)
        pad = chunk - (b - a)
        pos = np.pad(np.arange(a, b), (0, pad), constant_values=-1)
        k, v = (np.pad(x[:, :, a:b], ((0, 0), (0, 0), (0, pad), (0, 0))) for x in (keys, values))
        state = step(state, jnp.asarray(k), jnp.asarray(v),
                     jnp.asarray(np.broadcast_to(pos, (B, chunk)), jnp.int32))
    out, _ = decode_over_view(jnp.asarray(q), policy.view(state), None, impl="xla")
    kept = sorted(ring_kept(n, sinks, window))
    dropped = [p for p in range(n) if p not in kept]
    want = np.zeros((B, H * G, D))
    for bb in range(B):
        for hq in range(H * G):
            h = hq // G
            logits = [keys[bb, h, p] @ q[bb, hq] / np.sqrt(D) for p in kept]
            vals = [values[bb, h, p] for p in kept]
            if dropped:
                logits.append(keys[bb, h, dropped].mean(0) @ q[bb, hq] / np.sqrt(D)
                              + np.log(len(dropped)))
                vals.append(values[bb, h, dropped].mean(0))
            w = np.exp(np.array(logits) - max(logits))
            want[bb, hq] = (w / w.sum()) @ np.array(vals)
    np.testing.assert_allclose(out, want, atol=2e-5)
    np.testing.assert_allclose(state.count, len(dropped))


def test_identification_on_planted_attention():
    period, t, layers, hq = 5, 15, 2, 4
    w = np.zeros((layers, 1, hq, t, t))
    i = np.arange(period, t)
    w[0, 0, 1, i, i - period + 1] = 1.0  # layer 0, query head 1 (kv head 0): induction
    w[1, 0, 2, i, i - period] = 1.0  # layer 1, query head 2 (kv head 1): echo
    w[..., 0] += 0.5  # everyone sinks too
    induction, echo = razor_scores(w, period, num_kv_heads=2)
    assert induction.argmax() == 0 and echo.argmax() == 3  # flattened [L, Hkv]
    retrieval = razor_heads(induction, echo, induction=0.25, echo=0.25)
    assert retrieval.tolist() == [[True, False], [False, True]]


def _logits(policies, impl="xla"):
    from flax import nnx

    from lcache.model import ModelConfig
    from lcache.model.transformer import Transformer

    cfg = ModelConfig(vocab_size=64, dim=64, num_layers=2, num_heads=4, num_kv_heads=H,
                      ffn_dim=64, max_seq_len=64, attention_impl=impl)
    m = Transformer(cfg, nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(3), (B, 14), 0, 64)
    pos = jnp.broadcast_to(jnp.arange(10), (B, 10))
    _, caches = m.prefill(tokens[:, :10], pos, m.init_cache(policies, B), policies)
    out = []
    for i in range(4):
        logits, caches = m.decode(tokens[:, 10 + i], jnp.full((B,), 10 + i), caches, policies)
        out.append(logits)
    return np.stack(out)


def test_model_forward():
    dense = _logits((Dense(16),) * 2)
    np.testing.assert_allclose(_logits(razor_layers(np.ones((2, H), bool), 2, 3, Dense(16))),
                               dense, atol=1e-5)
    mixed = razor_layers(np.array([[True, False], [False, False]]), 2, 3, Dense(16))
    assert np.isfinite(_logits(mixed)).all()
    with pytest.raises(ValueError, match="impl='pallas'.*logit bias"):
        _logits(mixed, impl="pallas")


def test_spec():
    ctx = dict(prompt_len=20, max_new=4, num_layers=2, head_scores=np.array([[1, 0], [0, 0]]))
    layers = registry.build("razor(sinks=2)", 10, **ctx)
    assert layers == razor_layers(np.array([[1, 0], [0, 0]], bool), 2, 7, Dense(24))
    assert registry.spec(layers) == "razor(sinks=2)"
    with pytest.raises(ValueError, match="original positions"):
        Compensated(StreamingLLM(window=4))
