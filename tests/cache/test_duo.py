"""DuoAttention with given gates: per-head kept positions against a numpy oracle (retrieval
heads: everything; streaming heads: sinks + recent), real per-group memory, kvpress's choice
of streaming heads, the model's cached forward at the two ends (all retrieval = dense, all
streaming = StreamingLLM), and bad gate files."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cache_oracles import ring_kept
from cache_streams import lookup, make_stream
from hypothesis import given, settings
from hypothesis import strategies as st

from lcache.cache import Dense, PrefillMass, Quantized, StreamingLLM, registry
from lcache.cache.duo import duo_layers, load_gates, save_gates, streaming_heads
from lcache.cache.head_groups import HeadGroups

H = 4


@functools.partial(jax.jit, static_argnums=0)
def _run(policy, arrays):
    """A stream through any policy, feedback looked up through its flat view."""
    cp, ck, cv, cq, dp, dk, dv, fb = arrays
    n = cp.shape[0]
    state = policy.init(ck.shape[1], ck.shape[2], ck.shape[-1])

    def flat_pos(state):
        flat = policy.view(state).flat()
        return jnp.where(flat.valid, flat.key_pos, -1)

    def prefill(state, xs):
        pos, k, v, q, table = xs
        mass = PrefillMass(lookup(table, flat_pos(state)),
                           lookup(table, jnp.broadcast_to(pos[:, None], k.shape[:3])))
        return policy.prefill(state, k, v, pos, queries=q, mass=mass), None

    def decode(state, xs):
        pos, k, v, table = xs
        state = policy.append(state, k, v, pos)
        return policy.observe(state, lookup(table, flat_pos(state))), None

    state = jax.lax.scan(prefill, state, (cp, ck, cv, cq, fb[:n]))[0]
    return jax.lax.scan(decode, state, (dp, dk, dv, fb[n:]))[0]


def _kept_by_head(policy, state, b):
    """Per cache head, the positions its segments hold (and their stored channel 0)."""
    flat = policy.view(state).flat()
    out = []
    for h in range(H):
        ok = np.asarray(flat.valid[b, h])
        pos = np.asarray(flat.key_pos[b, h])[ok]
        np.testing.assert_array_equal(np.asarray(flat.keys[b, h, :, 0])[ok], pos)
        out.append(sorted(int(p) for p in pos))
    return out


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), sparsity=st.sampled_from([0.25, 0.5, 0.75]),
       sinks=st.integers(0, 2), recent=st.integers(1, 4))
def test_kept_positions_match_the_oracle(seed, sparsity, sinks, recent):
    rng = np.random.default_rng(seed)
    gates = rng.random((2, H))
    stream = make_stream(seed, heads=H, chunk=6, num_chunks=2, steps=5)
    layers = duo_layers(gates, sparsity, sinks, recent, Dense(64))
    streaming = streaming_heads(gates, sparsity)
    arrays = tuple(jnp.asarray(a) for a in (
        stream.chunk_pos, stream.chunk_k, stream.chunk_v, stream.chunk_q, stream.dec_pos,
        stream.dec_k, stream.dec_v, stream.feedback))
    for layer, policy in enumerate(layers):
        state = _run(policy, arrays)
        for b in range(2):
            n = int(stream.seen[b])
            want = [sorted(ring_kept(n, sinks, recent)) if streaming[layer, h]
                    else list(range(n)) for h in range(H)]
            assert _kept_by_head(policy, state, b) == want


def test_streaming_heads_are_kvpress_lowest_gates():
    gates = np.array([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.05, 0.7]])
    got = streaming_heads(gates, 0.5)  # round(0.5 * 8) = 4 lowest
    assert got.tolist() == [[False, True, False, True], [True, False, True, False]]
    assert not streaming_heads(gates, 0.0).any() and streaming_heads(gates, 1.0).all()


def test_memory_scales_with_what_each_head_keeps():
    gates = np.array([[1.0, 0.0, 1.0, 0.0]])
    (policy,) = duo_layers(gates, 0.5, 4, 60, Dense(1024))
    retrieval = Dense(1024).nbytes(1, 2, 64)
    streaming = StreamingLLM(window=60, num_sinks=4, positions="original").nbytes(1, 2, 64)
    assert policy.nbytes(1, H, 64) == retrieval + streaming
    assert policy.nbytes(1, H, 64) < 0.54 * Dense(1024).nbytes(1, H, 64)
    state = policy.init(1, H, 64)
    assert [g.keys.shape for g in state.groups] == [(1, 2, 1024, 64), (1, 2, 64, 64)]


def test_bad_head_groups_and_gate_files(tmp_path):
    with pytest.raises(ValueError, match="partition the heads"):
        HeadGroups((((0, 1), Dense(8)), ((1, 3), Dense(8))))
    with pytest.raises(ValueError, match="original positions"):
        HeadGroups((((0,), StreamingLLM(window=4)),))
    (policy,) = duo_layers(np.zeros((1, 4)), 0.5, 1, 2, Dense(8))
    with pytest.raises(ValueError, match="cover 4 heads, the model has 2"):
        policy.init(1, 2, 8)
    path = tmp_path / "gates.json"
    save_gates(path, np.ones((3, 4)), source="test")
    np.testing.assert_array_equal(load_gates(path, num_layers=3, num_kv_heads=4), 1.0)
    with pytest.raises(ValueError, match="3 layers x 4 KV heads, the model has 2 x 4"):
        load_gates(path, num_layers=2, num_kv_heads=4)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a head-gate file"):
        load_gates(path, num_layers=2, num_kv_heads=4)


def test_spec_builds_per_layer_policies():
    ctx = dict(prompt_len=20, max_new=4, num_layers=2,
               head_scores=np.arange(8.0).reshape(2, 4))
    layers = registry.build("duo(sinks=2)", 10, **ctx)
    assert registry.spec(layers) == "duo(sinks=2)"
    assert layers[0].groups[0][0] == (0, 1, 2, 3)  # layer 0 holds the 4 lowest gates
    assert layers[0].groups[0][1] == StreamingLLM(window=8, num_sinks=2, positions="original")
    assert layers[1].groups == (((0, 1, 2, 3), Dense(24)),)
    quant = registry.build("duo(sinks=2)@int4+sinks2", 10, **ctx)
    assert registry.spec(quant) == "duo(sinks=2)@int4+sinks2"
    assert all(isinstance(p, Quantized) for layer in quant for _, p in layer.groups)
    with pytest.raises(ValueError, match=r"head_scores of shape \(2, 4\) are not \[L=3"):
        registry.build("duo", 10, **dict(ctx, num_layers=3))
    with pytest.raises(ValueError, match="duo needs head_scores"):
        registry.build("duo", 10, prompt_len=20, num_layers=2)


def _logits(policies, impl="xla", steps=6, prompt=5):
    """Prefill ``prompt`` tokens, decode ``steps`` more through a 2-layer model -> decode
    logits. A prompt within sinks + recent: the prefill sees the same keys under both ends
    (StreamingLLM's prefill also masks keys out of its window; head groups attend causally)."""
    from flax import nnx

    from lcache.model import ModelConfig
    from lcache.model.transformer import Transformer

    cfg = ModelConfig(vocab_size=64, dim=128, num_layers=2, num_heads=8, num_kv_heads=H,
                      ffn_dim=64, max_seq_len=64, attention_impl=impl)
    m = Transformer(cfg, nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, prompt + steps), 0, 64)
    pos = jnp.broadcast_to(jnp.arange(prompt), (2, prompt))
    _, caches = m.prefill(tokens[:, :prompt], pos, m.init_cache(policies, 2), policies)
    out = []
    for i in range(steps):
        logits, caches = m.decode(tokens[:, prompt + i], jnp.full((2,), prompt + i), caches,
                                  policies)
        out.append(logits)
    return np.stack(out)


def test_model_all_retrieval_is_dense_all_streaming_is_streaming_llm():
    gates = np.random.default_rng(0).random((2, H))
    dense = _logits((Dense(32),) * 2)
    np.testing.assert_allclose(_logits(duo_layers(gates, 0.0, 2, 3, Dense(32))), dense,
                               atol=1e-5)
    ring = StreamingLLM(window=3, num_sinks=2, positions="original")
    want = _logits((ring,) * 2)
    np.testing.assert_allclose(_logits(duo_layers(gates, 1.0, 2, 3, Dense(32))), want,
                               atol=1e-5)
    assert np.abs(want - dense).max() > 1e-3  # the ends differ: the test can tell them apart


def test_model_mixed_heads_kernel_route_matches_xla():
    """Retrieval and streaming groups partition the heads: one decode kernel per group."""
    layers = duo_layers(np.random.default_rng(1).random((2, H)), 0.5, 2, 3, Dense(32))
    np.testing.assert_allclose(_logits(layers, "pallas", steps=2), _logits(layers, steps=2),
                               atol=2e-5)
