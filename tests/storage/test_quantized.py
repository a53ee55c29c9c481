"""Quantized storage around selection policies: exact residual and sinks, bounded error on the
rest, identical selection decisions, and clear errors."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcache.cache import (
    H2O,
    Dense,
    KVState,
    PrefillMass,
    Quantized,
    SnapKV,
    StreamingLLM,
    quantized,
)
from lcache.cache import quant_ops as qo

B, H, D, T, P = 2, 2, 16, 72, 24  # batch, heads, head dim, stream length, prefill length
CHUNK = 8  # tokens per prefill call when streaming in chunks


def _inputs(capacity, seed=0):
    rng = np.random.default_rng(seed)
    f = functools.partial(jnp.asarray, dtype=jnp.float32)
    keys = rng.normal(size=(B, H, T, D)) * np.linspace(0.1, 4.0, D)  # per-channel spread
    return dict(keys=f(keys), values=f(rng.normal(size=(B, H, T, D))),
                queries=f(rng.normal(size=(B, H, T, D))),
                mass_cache=f(rng.random((B, H, capacity))), mass_chunk=f(rng.random((B, H, T))),
                probs=f(rng.random((T - P, B, H, capacity))))


@functools.partial(jax.jit, static_argnames="policy")
def _stream(policy, x):
    """Prefill ``P`` tokens, then append/observe one token at a time."""
    pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    state = policy.prefill(policy.init(B, H, D), x["keys"][:, :, :P], x["values"][:, :, :P],
                           pos[:, :P], queries=x["queries"][:, :, :P],
                           mass=PrefillMass(x["mass_cache"], x["mass_chunk"][..., :P]))

    def step(st, xs):
        k, v, p, probs = xs
        return policy.observe(policy.append(st, k, v, p), probs), None

    xs = (jnp.moveaxis(x["keys"][:, :, P:], 2, 0), jnp.moveaxis(x["values"][:, :, P:], 2, 0),
          pos[:, P:].T, x["probs"])
    return jax.lax.scan(step, state, xs)[0]


def _chunked(policy, x, chunk=CHUNK, **kw):
    """The stream as prefill chunks of ``chunk`` tokens (one compiled chunk step)."""
    step = jax.jit(lambda st, k, v, p, q, m, kw: policy.prefill(st, k, v, p, queries=q, mass=m,
                                                                **kw))
    state = policy.init(B, H, D)
    for i in range(0, T, chunk):
        sl = slice(i, i + chunk)
        pos = jnp.broadcast_to(jnp.arange(i, i + chunk, dtype=jnp.int32), (B, chunk))
        state = step(state, x["keys"][:, :, sl], x["values"][:, :, sl], pos,
                     x["queries"][:, :, sl], PrefillMass(x["mass_cache"], x["mass_chunk"][..., sl]),
                     {k: v[:, sl] for k, v in kw.items()})
    return state


def _check(policy: Quantized, st, x, widened_keys: bool, ref: KVState | None = None):
    """Exact residual and sinks, bounded error elsewhere, against the token each slot holds;
    with ``ref`` (the unquantized run), also the same slots and scores."""
    if ref is not None:
        np.testing.assert_array_equal(st.pos, ref.pos)
        np.testing.assert_allclose(st.score, ref.score, rtol=1e-6)
    got = policy.materialise(st)
    idx = jnp.maximum(st.pos, 0)[..., None]
    true_k = jnp.take_along_axis(x["keys"], idx, axis=2)
    true_v = jnp.take_along_axis(x["values"], idx, axis=2)
    exact = (st.pos >= policy.flush_point(st.seen)[:, None, None]) | ~st.valid
    if policy.keep_sinks:
        exact |= (st.pos[..., None] == st.sink_pos[:, None, None, :]).any(-1)
    exact = exact[..., None]
    valid = st.valid[..., None]
    np.testing.assert_array_equal(jnp.where(exact & valid, got.keys - true_k, 0), 0)
    np.testing.assert_array_equal(jnp.where(exact & valid, got.values - true_v, 0), 0)
    g = policy.group
    k_bound = qo.per_slot(st.k_scale, g, st.capacity).astype(jnp.float32)
    k_bound = k_bound if widened_keys else k_bound / 2
    v_bound = jnp.repeat(st.v_scale.astype(jnp.float32), g, axis=-1) / 2
    tol = 1e-5
    assert bool(jnp.all(exact | (jnp.abs(got.keys - true_k) <= k_bound * (1 + tol) + tol)))
    assert bool(jnp.all(exact | (jnp.abs(got.values - true_v) <= v_bound * (1 + tol) + tol)))
    assert bool(jnp.any(~exact))  # something was actually quantized


def test_dense_in_order_is_kivi_with_exact_first_sinks():
    """Dense fills slots in token order: every key block is one fresh KIVI group."""
    inner = Dense(80)
    policy = quantized(inner, bits=2, group=8, residual=16, keep_sinks=3)
    x = _inputs(inner.capacity)
    st = _stream(policy, x)
    assert st.k_codes.dtype == jnp.uint16 and st.k_codes.shape[-1] == D * 2 // 16
    _check(policy, st, x, widened_keys=False, ref=_stream(inner, x))
    # 16 >= residual > 8 newest tokens stay exact (the ring flushes whole groups).
    assert int(policy.flush_point(st.seen)[0]) == 56
    np.testing.assert_array_equal(st.sink_pos, [[0, 1, 2]] * B)
    got = policy.materialise(st)
    np.testing.assert_array_equal(got.keys[:, :, :3], x["keys"][:, :, :3])
    np.testing.assert_array_equal(got.values[:, :, :3], x["values"][:, :, :3])
    assert not bool(jnp.all(got.keys[:, :, 3:8] == x["keys"][:, :, 3:8]))


@pytest.mark.parametrize("inner", [
    StreamingLLM(window=28, num_sinks=4),
    H2O(heavy=12, recent=20),
    SnapKV(budget=16, window=8, decode_capacity=16),
], ids=lambda p: type(p).__name__)
def test_composes_with_selection_policies(inner):
    """Chunks keep evicting and overwriting slots of quantized key blocks."""
    policy = quantized(inner, bits=2, group=8, residual=16, keep_sinks=2)
    x = _inputs(inner.capacity)
    st = _chunked(policy, x)
    ref = _chunked(inner, x)
    # SnapKV re-scores cached keys with queries: dequantized keys may change its choice.
    _check(policy, st, x, widened_keys=True, ref=None if isinstance(inner, SnapKV) else ref)
    assert policy.view(st).keys_rotated == inner.view(ref).keys_rotated


def test_outlier_sinks_from_sink_score_then_from_mass():
    """Top-N sink scores win across chunks: a later, higher score demotes (quantizes) a sink;
    without a ``sink_score``, the token that receives the most attention is the sink."""
    inner = Dense(80)
    policy = quantized(inner, bits=2, group=8, residual=8, keep_sinks=2, sink_detect="outlier")
    x = _inputs(inner.capacity)
    score = jnp.zeros((B, T)).at[:, 3].set(1.0).at[:, 5].set(9.0).at[:, 17].set(7.0)
    st = _chunked(policy, x, sink_score=score)
    np.testing.assert_array_equal(st.sink_pos, [[5, 17]] * B)  # 3 was a sink until 17 came
    got = policy.materialise(st)
    np.testing.assert_array_equal(got.keys[:, :, [5, 17]], x["keys"][:, :, [5, 17]])
    assert not bool(jnp.all(got.keys[:, :, 3] == x["keys"][:, :, 3]))
    _check(policy, st, x, widened_keys=True)  # 3 joined its key block late
    x["mass_chunk"] = x["mass_chunk"].at[:, :, 11].set(500.0)
    assert bool(jnp.all(_chunked(policy, x, chunk=T).sink_pos[:, 0] == 11))


def test_zero_residual_quantizes_everything():
    inner = Dense(80)
    policy = quantized(inner, bits=8, group=8, residual=0, keep_sinks=0)
    x = _inputs(inner.capacity)
    st = _chunked(policy, x, chunk=T)
    assert st.ring_keys.shape[2] == 0 and int(policy.flush_point(st.seen)[0]) == T
    _check(policy, st, x, widened_keys=False)


def test_memory_really_shrinks():
    inner = Dense(4096)
    dense = inner.nbytes(1, 8, 128, dtype=jnp.bfloat16)
    for bits, most in [(8, 0.65), (4, 0.40), (2, 0.28)]:
        assert quantized(inner, bits=bits).nbytes(1, 8, 128) < most * dense


class _OtherState(Dense):
    def init(self, *args, **kw):
        @jax.tree_util.register_dataclass
        @dataclasses.dataclass
        class Wrapped(KVState):
            pass

        return Wrapped(**vars(super().init(*args, **kw)))


@pytest.mark.parametrize("kw, match", [
    (dict(bits=3), "bits must be one of"),
    (dict(residual=-8), "residual must be >= 0"),
    (dict(group=8, residual=12), "multiple of group"),
    (dict(group=0), "group must be >= 1"),
    (dict(keep_sinks=-1), "keep_sinks must be >= 0"),
    (dict(sink_detect="norm"), "sink_detect must be one of"),
    (dict(scale_dtype="float32"), "scale_dtype must be one of"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        quantized(Dense(64), **kw)


def test_bad_dims_and_policies():
    with pytest.raises(ValueError, match="must divide value_dim"):
        quantized(Dense(64), group=32).init(1, 1, 64, value_dim=48)
    with pytest.raises(ValueError, match="packed into 16-bit words"):
        quantized(Dense(64), bits=2, group=2, residual=0).init(1, 1, 6)
    with pytest.raises(ValueError, match="plain KVState"):
        quantized(_OtherState(64)).init(1, 1, 32)
    with pytest.raises(ValueError, match="wraps a selection policy"):
        quantized(quantized(Dense(64)))
    policy = quantized(Dense(64), keep_sinks=2, sink_detect="outlier")
    st = policy.init(1, 1, 32)
    with pytest.raises(ValueError, match="needs sink_score or mass"):
        policy.prefill(st, jnp.zeros((1, 1, 4, 32)), jnp.zeros((1, 1, 4, 32)),
                       jnp.arange(4)[None])
