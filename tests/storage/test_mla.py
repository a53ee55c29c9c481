"""Multi-head latent attention: cached decode equals the full forward, absorbed equals naive,
it trains, and every selection policy (quantized or not) runs on its latent cache."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lcache.cache import Dense, SnapKV, StreamingLLM, quantized
from lcache.model import ModelConfig, Transformer

CFG = ModelConfig(dim=64, num_layers=1, num_heads=4, num_kv_heads=2, ffn_dim=128,
                  mla_kv_lora_rank=32, mla_q_lora_rank=24, mla_qk_nope_dim=16,
                  mla_qk_rope_dim=8, mla_v_dim=16)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 259, (2, 40)), jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "policy", "prefill_len"))
def _cached_logits(graphdef, params, tokens_BT, *, policy, prefill_len):
    """Prefill ``prefill_len`` tokens, then decode the rest one at a time -> logits [B, T, V]."""
    model = nnx.merge(graphdef, params)
    b, t = tokens_BT.shape
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    caches = model.init_cache(policy, b)
    first, caches = model.prefill(tokens_BT[:, :prefill_len], pos[:, :prefill_len], caches,
                                  policy)

    def step(caches, xs):
        logits, caches = model.decode(*xs, caches, policy)
        return caches, logits

    _, rest = jax.lax.scan(step, caches, (tokens_BT[:, prefill_len:].T, pos[:, prefill_len:].T))
    return jnp.concatenate([first, rest.transpose(1, 0, 2)], axis=1)


@nnx.jit
def _full(model, tokens_BT):
    return model(tokens_BT)


def _run(cfg, policy, prefill_len=16):
    graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(0)))
    return _cached_logits(graphdef, params, TOKENS, policy=policy, prefill_len=prefill_len)


def test_cached_decode_matches_full_forward_and_absorbed_equals_naive():
    """Naive over ``Dense`` (keys rotated once), absorbed over a StreamingLLM window that evicts
    nothing (keys rotated at attention time): both are the full forward."""
    full = _full(Transformer(CFG, nnx.Rngs(0)), TOKENS)
    naive = _run(CFG.replace(mla_impl="naive"), Dense(48))
    absorbed = _run(CFG.replace(mla_impl="absorb"), StreamingLLM(window=44, num_sinks=4))
    np.testing.assert_allclose(naive, full, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(absorbed, full, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(absorbed, naive, atol=2e-5, rtol=1e-4)


def test_quantized_snapkv_on_latent_tokens():
    """SnapKV votes with the query proxy; sinks found from attention mass; 2-bit latents."""
    cfg = CFG.replace(mla_q_lora_rank=0)
    policy = quantized(SnapKV(budget=12, window=4, decode_capacity=12), bits=2, group=8,
                       residual=8, keep_sinks=2, sink_detect="outlier")
    logits = _run(cfg, policy)
    full = _full(Transformer(cfg, nnx.Rngs(0)), TOKENS)
    # The prompt attends in full precision over itself: exact; decode reads 2-bit latents.
    np.testing.assert_allclose(logits[:, :16], full[:, :16], atol=2e-5, rtol=1e-4)
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_latent_cache_layout():
    model = Transformer(CFG, nnx.Rngs(0))
    cache = model.init_cache(Dense(48), 3)[0]
    assert cache.keys.shape == (3, 1, 48, CFG.mla_qk_rope_dim)
    assert cache.values.shape == (3, 1, 48, CFG.mla_kv_lora_rank)


def test_trains():
    """Every MLA weight gets a finite, nonzero gradient and one SGD step lowers the loss."""
    graphdef, params = nnx.split(Transformer(CFG, nnx.Rngs(0)))

    def loss(params):
        logits = nnx.merge(graphdef, params)(TOKENS[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, TOKENS[:, 1:]).mean()

    @jax.jit
    def step(params):
        value, grads = jax.value_and_grad(loss)(params)
        return value, grads, loss(jax.tree.map(lambda p, g: p - 0.5 * g, params, grads))

    before, grads, after = step(params)
    attn = grads["blocks"][0]["attn"]
    for name in ("wq_a", "wq_b", "wkv_a", "wkv_b", "wo"):
        g = attn[name]["kernel"][...]
        assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0, name
    assert float(after) < float(before)


@pytest.mark.parametrize("kw, match", [
    (dict(mla_kv_lora_rank=-1), "must be >= 0"),
    (dict(mla_qk_rope_dim=0), "mla_qk_rope_dim >= 1"),
    (dict(mla_qk_rope_dim=7), "even mla_qk_rope_dim"),
    (dict(mla_qk_nope_dim=0), "mla_qk_nope_dim >= 1"),
    (dict(mla_v_dim=0), "mla_v_dim >= 1"),
    (dict(mla_impl="fast"), "unknown mla_impl"),
    (dict(gated_attention=True), "MLA supports no gated_attention"),
    (dict(attention_impl="pallas", mla_impl="naive"), "needs attention='softmax' and mla_impl"),
    (dict(attention_impl="pallas", attention="sink_logit"), "got attention='sink_logit'"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        CFG.replace(**kw)
