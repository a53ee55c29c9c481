"""The model through the Pallas kernels (interpreted on CPU) equals its ``jnp`` path: prefill
(fresh causal chunks through the prefill kernels, SnapKV votes and H2O mass from them), GQA and
MLA decode, ragged odd-length prompts; and the run-time choice between the two prefill paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lcache.attention import cudnn
from lcache.attention import prefill as attn_prefill
from lcache.cache import H2O, Dense, SnapKV
from lcache.model import ModelConfig, Transformer

GQA = dict(vocab_size=61, dim=64, num_layers=1, num_heads=4, num_kv_heads=2, ffn_dim=64)
MLA = dict(GQA, mla_kv_lora_rank=32, mla_qk_nope_dim=16, mla_qk_rope_dim=16, mla_v_dim=16)
LENGTHS = (13, 9)  # right-padded to 13: odd lengths, a ragged batch


def _generate(cfg, policy, chunks=1, steps=1):
    """Prefill ``LENGTHS`` prompts (``chunks`` chunks), decode ``steps`` tokens; one program
    compiled without backend optimisations (interpreted kernels are large HLO programs).
    -> ``(logits [S + 1, B, ...], caches)``."""
    graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(0)))
    t, lengths = max(LENGTHS), jnp.asarray(LENGTHS)
    tokens = jax.random.randint(jax.random.key(1), (len(LENGTHS), t + steps), 0, 61)

    def run(params, tokens):
        m = nnx.merge(graphdef, params)
        caches = m.init_cache(policy, len(LENGTHS))
        pos = jnp.where(jnp.arange(t) < lengths[:, None], jnp.arange(t), -1)
        logits = []
        for part in np.array_split(np.arange(t), chunks):
            lg, caches = m.prefill(tokens[:, part], pos[:, part], caches, policy)
            logits.append(lg[jnp.arange(len(LENGTHS)), jnp.minimum(lengths - 1, part[-1])])
        for i in range(steps):
            lg, caches = m.decode(tokens[:, t + i], lengths + i, caches, policy)
            logits.append(lg)
        return jnp.stack(logits), caches

    compiled = jax.jit(run).lower(params, tokens).compile(
        compiler_options={"xla_backend_optimization_level": 0})
    return compiled(params, tokens)


def _check_same(cfg, policy, **kw):
    want, want_caches = _generate(ModelConfig(**cfg), policy, **kw)
    got, got_caches = _generate(ModelConfig(**cfg, attention_impl="pallas"), policy, **kw)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
    for g, w in zip(got_caches, want_caches, strict=True):
        np.testing.assert_array_equal(g.pos, w.pos)  # the kept tokens
        np.testing.assert_allclose(g.score, w.score, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cfg,policy", [
    (GQA, SnapKV(8, window=3, kernel=3, pooling="max", decode_capacity=2)),
    (dict(GQA, attention="sink_logit"), H2O(heavy=4, recent=3)),
    (MLA, H2O(heavy=4, recent=3)),
], ids=["gqa-snapkv", "sink-h2o", "mla-h2o"])
def test_pallas_equals_xla(cfg, policy):
    _check_same(cfg, policy)


def test_snapkv_votes_come_from_the_kernel(monkeypatch):
    """A fresh chunk takes the kernel branch, a later chunk the masked one (at run time): with
    the kernel's votes poisoned, SnapKV's choice changes after a one-chunk prefill only (the
    first of two chunks fits the budget, the second selects on the masked path's votes)."""
    real = attn_prefill.observation_scores

    def poisoned(q_obs, obs_idx, *a, **kw):
        s = real(q_obs, obs_idx, *a, **kw)
        return s if obs_idx.shape[1] == s.shape[-1] else -s  # the votes, not the mass
    monkeypatch.setattr(attn_prefill, "observation_scores", poisoned)
    policy = SnapKV(8, window=2, kernel=1, decode_capacity=0)
    kept = {(impl, chunks): np.sort(_generate(ModelConfig(**GQA, attention_impl=impl), policy,
                                              chunks=chunks, steps=0)[1][0].pos, axis=-1)
            for impl in ("xla", "pallas") for chunks in (1, 2)}  # slot order aside
    assert not np.array_equal(kept["pallas", 1], kept["xla", 1])
    np.testing.assert_array_equal(kept["pallas", 2], kept["xla", 2])


def test_fresh_chunk():
    empty, held = jnp.zeros((2, 1, 4), bool), jnp.ones((2, 1, 4), bool)
    right = jnp.array([[0, 1, 2, -1], [5, 6, 7, 8]])
    assert attn_prefill.fresh_chunk(empty, right)
    assert not attn_prefill.fresh_chunk(held, right)
    assert not attn_prefill.fresh_chunk(empty, jnp.array([[-1, 0, 1, 2], [0, 1, 2, 3]]))  # left
    assert not attn_prefill.fresh_chunk(empty, jnp.array([[0, 2, 3, 4], [0, 1, 2, 3]]))  # a gap


def test_pallas_unsupported_head_dim_raises_auto_falls_back(monkeypatch):
    cfg = ModelConfig(**dict(GQA, dim=48, num_heads=2, num_kv_heads=1))  # head dim 24
    m = Transformer(cfg.replace(attention_impl="pallas"), nnx.Rngs(0))
    tokens, pos = jnp.ones((1, 5), jnp.int32), jnp.arange(5)[None]
    with pytest.raises(ValueError, match="prefill_flash.*D=24"):
        m.prefill(tokens, pos, m.init_cache(Dense(8), 1), Dense(8))
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    auto = Transformer(cfg.replace(attention_impl="auto"), nnx.Rngs(0))
    xla = Transformer(cfg, nnx.Rngs(0))
    np.testing.assert_allclose(auto.prefill(tokens, pos, auto.init_cache(Dense(8), 1), Dense(8))[0],
                               xla.prefill(tokens, pos, xla.init_cache(Dense(8), 1), Dense(8))[0],
                               atol=1e-6)


def test_cudnn_decode_plumbing(monkeypatch):
    """'cudnn' decode hands the head-major cache to jax's cuDNN attention in BNTH layout with a
    per-query-head mask (emulated here in ``jnp``: no cuDNN on the CPU); H2O still gets its
    probabilities (from the ``jnp`` path)."""
    calls = []

    def emulated(q, k, v, mask=None, scale=1.0, qkv_layout="BTNH"):
        calls.append(qkv_layout)
        g = q.shape[1] // k.shape[1]
        s = jnp.einsum("bntd,bnsd->bnts", q, jnp.repeat(k, g, 1),
                       preferred_element_type=jnp.float32) * scale
        p = jax.nn.softmax(jnp.where(mask, s, -1e9), axis=-1)
        return jnp.einsum("bnts,bnsd->bntd", p, jnp.repeat(v, g, 1).astype(p.dtype)).astype(
            q.dtype)

    monkeypatch.setattr(cudnn.cudnn_attention, "dot_product_attention", emulated)
    cfg = dict(GQA, compute_dtype="bfloat16")
    want, want_caches = _generate(ModelConfig(**cfg), H2O(heavy=4, recent=3))
    got, got_caches = _generate(ModelConfig(**cfg, attention_impl="cudnn"), H2O(heavy=4, recent=3))
    assert calls == ["BNTH"]
    np.testing.assert_allclose(got, want, atol=2e-2)
    np.testing.assert_array_equal(got_caches[0].pos, want_caches[0].pos)
    with pytest.raises(ValueError, match="needs compute_dtype='bfloat16'"):
        ModelConfig(**GQA, attention_impl="cudnn")
