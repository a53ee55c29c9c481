"""Model shapes, config validation, and cached inference == full forward (fp32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lcache.cache import Dense
from lcache.model import ModelConfig, Transformer

TINY = dict(vocab_size=61, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=48)


def _model(**kw):
    return Transformer(ModelConfig(**(TINY | kw)), nnx.Rngs(0))


def test_shapes_and_hidden():
    m = _model()
    toks = jax.random.randint(jax.random.key(0), (3, 9), 0, 61)
    logits, hidden = m(toks, return_hidden=True)
    assert logits.shape == (3, 9, 61) and hidden.shape == (3, 3, 9, 32)
    taps = m.analyze(toks)
    assert taps["weights"].shape == (2, 3, 4, 9, 9) and taps["values"].shape == (2, 3, 2, 9, 8)
    np.testing.assert_allclose(taps["weights"].sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(tie_embeddings=False, qkv_bias=True),
                                dict(rope_scaling="llama3", rope_factor=8.0,
                                     rope_original_max_pos=16),
                                dict(num_kv_heads=4), dict(num_kv_heads=1)])
def test_cached_decode_equals_full_forward(kw):
    m = _model(**kw)
    b, t, split = 2, 14, 5
    toks = jax.random.randint(jax.random.key(1), (b, t), 0, 61)
    full = m(toks)
    policy = Dense(32)
    caches = m.init_cache(policy, b, jnp.float32)
    pos = jnp.broadcast_to(jnp.arange(split), (b, split))
    logits, caches = m.prefill(toks[:, :split], pos, caches, policy)
    steps = [logits]
    for i in range(split, t):
        step, caches = m.decode(toks[:, i], jnp.full((b,), i), caches, policy)
        steps.append(step[:, None])
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=2e-5)


def test_chunked_prefill_with_padding_equals_full():
    m = _model()
    toks = jax.random.randint(jax.random.key(2), (1, 10), 0, 61)
    full = m(toks)
    policy = Dense(16)
    caches = m.init_cache(policy, 1, jnp.float32)
    pos = jnp.array([[0, 1, 2, 3, -1, -1]])  # right-padded chunk: padding is never stored
    a, caches = m.prefill(jnp.pad(toks[:, :4], ((0, 0), (0, 2))), pos, caches, policy)
    b, caches = m.prefill(toks[:, 4:], jnp.arange(4, 10)[None], caches, policy)
    np.testing.assert_allclose(a[:, :4], full[:, :4], atol=2e-5)
    np.testing.assert_allclose(b, full[:, 4:], atol=2e-5)


@pytest.mark.parametrize("kw,match", [
    (dict(num_heads=4, num_kv_heads=3), "num_kv_heads=3"),
    (dict(head_dim=7), "even head_dim"),
    (dict(dim=0), "dim must be >= 1"),
    (dict(rope_scaling="yarn"), "yarn"),
    (dict(attention="linear"), "linear"),
    (dict(num_sink_tokens=-1), "-1"),
    (dict(attention_impl="triton"), "triton"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**(TINY | kw))
