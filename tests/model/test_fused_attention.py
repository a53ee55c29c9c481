"""The fused (cuDNN) training attention path: same layout and GQA grouping as the explicit one.

The GPU path calls ``jax.nn.dot_product_attention(implementation='cudnn')``; on the CPU the test
routes it to the XLA implementation of the same function, so the transposes and the query-head
-> KV-head mapping are checked against the explicit-mask path."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lcache.model import ModelConfig, Transformer

TINY = dict(vocab_size=61, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=96,
            compute_dtype="bfloat16")


@pytest.mark.parametrize("sinks", [0, 1])
def test_fused_matches_explicit(monkeypatch, sinks):
    tokens = jax.random.randint(jax.random.key(1), (2, 37), 0, 61)
    explicit = Transformer(ModelConfig(**TINY, num_sink_tokens=sinks, train_attention="xla"),
                           nnx.Rngs(0))(tokens)
    calls = []
    real = jax.nn.dot_product_attention

    def as_xla(*args, implementation=None, **kw):
        calls.append(implementation)
        return real(*args, implementation="xla", **kw)

    monkeypatch.setattr(jax.nn, "dot_product_attention", as_xla)
    fused = Transformer(ModelConfig(**TINY, num_sink_tokens=sinks, train_attention="cudnn"),
                        nnx.Rngs(0))(tokens)
    assert calls == ["cudnn"] * TINY["num_layers"]
    np.testing.assert_allclose(np.asarray(fused), np.asarray(explicit), atol=3e-2, rtol=0)


def test_fused_skipped_where_it_does_not_apply(monkeypatch):
    monkeypatch.setattr(jax.nn, "dot_product_attention", functools.partial(
        pytest.fail, "fused path must not be used"))
    tokens = jnp.zeros((1, 8), jnp.int32) + 3
    for kw in (dict(attention="sigmoid"), dict(sliding_window=4), dict(compute_dtype="float32")):
        cfg = ModelConfig(**{**TINY, **kw, "train_attention": "cudnn"})
        Transformer(cfg, nnx.Rngs(0))(tokens)
    Transformer(ModelConfig(**TINY, train_attention="auto"), nnx.Rngs(0))(tokens)  # CPU: xla


def test_bad_train_attention():
    with pytest.raises(ValueError, match="unknown train_attention 'flash'"):
        ModelConfig(**TINY, train_attention="flash")
