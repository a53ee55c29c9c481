"""Every attention variant inside the model (fp32): cached prefill + decode == the full forward
under the Dense cache and StreamingLLM, finite gradients, no NaN on a 2048-token sequence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lcache.cache import Dense, StreamingLLM
from lcache.model import ModelConfig, Transformer
from lcache.train import loss_fn

TINY = dict(vocab_size=61, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=48,
            max_seq_len=2048)
VARIANTS = {
    "softmax": {},
    "off_by_one": dict(attention="off_by_one"),
    "sink_logit": dict(attention="sink_logit"),
    "softpick": dict(attention="softpick"),
    "sigmoid": dict(attention="sigmoid"),
    "relu": dict(attention="relu"),
    "gated": dict(gated_attention=True),
    "sink_token": dict(num_sink_tokens=1),
}
# Sequences hold S positions in all, sink tokens included, so that every variant runs the same
# array shapes (op-by-op execution compiles each shape once: keeps the file fast).
B, S, SPLIT, WINDOW, PINNED = 2, 10, 4, 3, 2


def _model(variant: str, scale: float = 0.3) -> Transformer:
    """A tiny model with random parameters ``N(0, scale²)`` (norm scales ``1 + N(0, scale²)``):
    the 0.02 init gives near-uniform attention, under which the variants barely differ."""
    model = nnx.eval_shape(lambda: Transformer(ModelConfig(**(TINY | VARIANTS[variant])),
                                               nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    state = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.asarray(jax.tree_util.keystr(path).endswith("['scale']")
                                    + scale * rng.standard_normal(x.shape), jnp.float32),
        nnx.state(model))
    nnx.update(model, state)
    return model


def _tokens(model, positions=S, batch=B):
    """Random text ``[batch, positions - K]``: with the K sink tokens, ``positions`` in all."""
    t = positions - model.cfg.num_sink_tokens
    return jax.random.randint(jax.random.key(2), (batch, t), 0, TINY["vocab_size"])


def _cached(model, tokens, policy, split=SPLIT):
    """Prefill ``tokens[:, :split]`` as one chunk, decode the rest one by one -> [B, T, V]."""
    tokens = np.asarray(tokens)  # host-side slicing: no per-step compiles of slice ops
    b, t = tokens.shape
    caches = model.init_cache(policy, b, jnp.float32)
    pos = np.broadcast_to(np.arange(split, dtype=np.int32), (b, split))
    logits, caches = model.prefill(jnp.asarray(tokens[:, :split]), jnp.asarray(pos), caches,
                                   policy)
    out = [logits]
    for i in range(split, t):
        step, caches = model.decode(jnp.asarray(tokens[:, i]), jnp.full((b,), i, jnp.int32),
                                    caches, policy)
        out.append(step[:, None])
    return jnp.concatenate(out, axis=1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_decode_equals_full_forward(variant):
    """Dense: prefill + decode == the full forward. StreamingLLM (pins the first two positions:
    the sink token and the first text token, or the first two text tokens): token-by-token
    decode == one prefill chunk (whose mask is what streaming keeps) == the full forward while
    nothing has been evicted, and differs from it afterwards."""
    model = _model(variant)
    toks = _tokens(model)
    full = model(toks)
    np.testing.assert_allclose(_cached(model, toks, Dense(S)), full, atol=1e-4)
    k = model.cfg.num_sink_tokens
    policy = StreamingLLM(window=WINDOW, num_sinks=PINNED, positions="original")
    one_shot = _cached(model, toks, policy, split=toks.shape[1])
    np.testing.assert_allclose(_cached(model, toks, policy), one_shot, atol=1e-4)
    kept_all = policy.capacity - k  # text positions < this have seen every earlier token
    np.testing.assert_allclose(one_shot[:, :kept_all], full[:, :kept_all], atol=1e-4)
    assert not np.allclose(one_shot[:, kept_all:], full[:, kept_all:], atol=1e-3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_finite(variant):
    model = _model(variant)
    toks = _tokens(model, S + 1)
    grads = nnx.grad(loss_fn)(model, toks, jnp.ones((B, toks.shape[1] - 1)))
    flat = {jax.tree_util.keystr(p): np.asarray(g) for p, g in
            jax.tree_util.tree_leaves_with_path(grads)}
    assert all(np.isfinite(g).all() for g in flat.values())
    cfg = model.cfg
    own = [n for n in flat if n.startswith("['sink_tokens']") or "['attn']['sink_logit']" in n
           or "['attn']['gate']" in n]  # the variant's own parameters
    assert len(own) == (bool(cfg.num_sink_tokens) + cfg.num_layers * (cfg.attention == "sink_logit")
                        + cfg.num_layers * cfg.gated_attention)
    assert all(np.abs(flat[n]).max() > 0 for n in own)


@pytest.mark.parametrize("variant", VARIANTS)
def test_long_sequence_no_nan(variant):
    """2048 positions with large weights (q·k logits in the hundreds): finite logits."""
    model = _model(variant, scale=1.0)
    assert np.isfinite(np.asarray(model(_tokens(model, 2048, batch=1)))).all()
