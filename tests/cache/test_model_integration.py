"""Every policy through the model's cached forward (per-layer policies), and orbax resume."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from cache_oracles import ring_kept
from flax import nnx

from lcache.cache import (
    H2O,
    TOVA,
    KeyNorm,
    Random,
    Recompress,
    SlidingWindow,
    SnapKV,
    StreamingLLM,
    ValueAware,
    cache_bytes,
)
from lcache.generate import generate
from lcache.model import ModelConfig
from lcache.model.transformer import Transformer
from lcache.sampling import Sampling

B, T, STEPS, VOCAB = 2, 10, 9, 64


def model(num_layers, **kw):
    cfg = ModelConfig(vocab_size=VOCAB, dim=32, num_layers=num_layers, num_heads=4,
                      num_kv_heads=2, ffn_dim=64, max_seq_len=64, **kw)
    return Transformer(cfg, nnx.Rngs(0))


@functools.partial(jax.jit, static_argnums=(0, 2))
def prefill(graphdef, params, policies, prompt_BT, lengths_B):
    """A right-padded prompt (row ``b`` has ``lengths[b]`` tokens) -> logits, caches."""
    m = nnx.merge(graphdef, params)
    steps = jnp.arange(prompt_BT.shape[1])
    pos = jnp.where(steps[None] < lengths_B[:, None], steps[None], -1)
    return m.prefill(prompt_BT, pos, m.init_cache(policies, prompt_BT.shape[0]), policies)


@functools.partial(jax.jit, static_argnums=(0, 2))
def decode(graphdef, params, policies, caches, new_BS, start_B):
    """Decode ``new`` one token per step from positions ``start`` (a scan) -> ``[B, S, V]``."""
    m = nnx.merge(graphdef, params)

    def body(caches, xs):
        i, tok = xs
        out, caches = m.decode(tok, start_B + i, caches, policies)
        return caches, out

    caches, out = jax.lax.scan(body, caches, (jnp.arange(new_BS.shape[1]), new_BS.T))
    return out.transpose(1, 0, 2), caches


def tokens(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, shape), jnp.int32)


def every_policy(c):
    """One layer per policy (the window policies have their own tests below), all of capacity
    ``c`` (equal shapes let XLA share kernels across layers: a faster compile)."""
    return (StreamingLLM(window=c - 2, num_sinks=2),
            H2O(heavy=c - 2, recent=2), ValueAware(heavy=c - 2, recent=2, normalize=True),
            SnapKV(budget=c - 3, window=2, kernel=3, decode_capacity=3),
            SnapKV(budget=c - 3, window=2, kernel=3, gqa="per_query_head", decode_capacity=3),
            TOVA(c), KeyNorm(c), Random(c),
            Recompress(KeyNorm(c - 2, window=1), interval=2, target=c - 2))


def test_every_policy_through_the_model():
    """One compiled program, two streams: a short one that fits every cache must reproduce the
    uncached forward exactly; a long one evicts, and every cache keeps its invariants."""
    policies = every_policy(c=10)
    m = model(len(policies), num_sink_tokens=1)  # a learnable sink, prefilled at init_cache
    graphdef, params = nnx.split(m)
    prompt, new = tokens(0, (B, T)), tokens(1, (B, STEPS))

    short = jnp.array([1, 1])  # sink + 1 prompt token + 8 decoded = 10 tokens: nothing evicted
    logits, caches = prefill(graphdef, params, policies, prompt, short)
    dec, _ = decode(graphdef, params, policies, caches, new[:, :STEPS - 1], short)
    uncached = jax.jit(lambda params, x: nnx.merge(graphdef, params)(x))
    ref = uncached(params, jnp.concatenate([prompt[:, :1], new[:, :STEPS - 1]], axis=1))
    np.testing.assert_allclose(np.asarray(logits[:, 0]), np.asarray(ref[:, 0]), atol=2e-5)
    np.testing.assert_allclose(np.asarray(dec), np.asarray(ref[:, 1:]), atol=2e-5)

    lengths = jnp.array([T, 7])  # right padding in row 1
    _, caches = prefill(graphdef, params, policies, prompt, lengths)
    dec, caches = decode(graphdef, params, policies, caches, new[:, :STEPS - 1], lengths)
    assert np.isfinite(np.asarray(dec)).all()
    seen = np.asarray(lengths) + STEPS  # the sink sits at position 0
    for policy, cache in zip(policies, caches, strict=True):
        pos = np.asarray(cache.pos)
        assert cache.keys.shape[2] == policy.capacity  # a real array of that size
        assert np.asarray(cache.seen).tolist() == seen.tolist()
        for b in range(B):
            for h in range(pos.shape[1]):
                kept = {int(p) for p in pos[b, h] if p >= 0}
                assert len(kept) == (pos[b, h] >= 0).sum() <= policy.capacity
                assert kept <= set(range(seen[b])) and seen[b] - 1 in kept
                if isinstance(policy, (SlidingWindow, StreamingLLM)):
                    assert kept == ring_kept(seen[b], policy.num_sinks, policy.window)


WINDOWS = (SlidingWindow(3), StreamingLLM(window=3, num_sinks=2, positions="original"))


def test_window_chunk_equals_token_by_token_decode():
    """Window policies mask a chunk as streaming would: prompt logits equal decode logits."""
    graphdef, params = nnx.split(model(2))
    prompt = tokens(2, (B, T))
    chunk_logits, _ = prefill(graphdef, params, WINDOWS, prompt, jnp.full((B,), T))
    one = jnp.ones((B,), jnp.int32)  # the first token alone (the rest is padding), then decode
    first, caches = prefill(graphdef, params, WINDOWS, prompt, one)
    dec, _ = decode(graphdef, params, WINDOWS, caches, prompt[:, 1:], one)
    np.testing.assert_allclose(np.asarray(chunk_logits),
                               np.concatenate([np.asarray(first[:, :1]), np.asarray(dec)], 1),
                               atol=2e-5)


def test_orbax_resume_mid_stream_gives_identical_logits(tmp_path):
    graphdef, params = nnx.split(model(2))
    lengths = jnp.array([T, 7])
    new = tokens(3, (B, 2 * STEPS))
    _, caches = prefill(graphdef, params, WINDOWS, tokens(4, (B, T)), lengths)
    _, caches = decode(graphdef, params, WINDOWS, caches, new[:, :STEPS], lengths)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "caches", caches)
    ckpt.wait_until_finished()
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, caches)
    restored = ckpt.restore(tmp_path / "caches", target)
    for a, b in zip(jax.tree.leaves(caches), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    resume = lengths + STEPS
    out_a, _ = decode(graphdef, params, WINDOWS, caches, new[:, STEPS:], resume)
    out_b, _ = decode(graphdef, params, WINDOWS, restored, new[:, STEPS:], resume)
    np.testing.assert_array_equal(np.asarray(out_a), np.asarray(out_b))


def test_generate_and_real_bytes():
    out = generate(model(1), [[1, 2, 3, 4, 5, 6, 7, 8, 9], [3, 4]], StreamingLLM(window=5),
                   Sampling(max_new_tokens=4))
    assert [len(o) for o in out] == [4, 4]
    caches = model(2).init_cache(WINDOWS, 1)
    assert sum(c.nbytes() for c in caches) == cache_bytes(WINDOWS, 1, 2, 8, dtype=jnp.float32)
