"""Bad inputs to the cache policies and storage wrappers: each raises a clear error (type and
message) before any work. Method calls are eager: every check runs before a single jnp op."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from lcache.cache import (
    H2O,
    TOVA,
    Budget,
    Dense,
    KeyNorm,
    PrefillMass,
    Random,
    Recompress,
    SlidingWindow,
    SnapKV,
    StreamingLLM,
    pyramid,
    quantized,
)
from lcache.cache.validate import MAX_POSITION

B, H, D, T = 2, 2, 8, 5
NAN, INF = float("nan"), float("inf")

CONSTRUCTORS = [
    ("dense_str", lambda: Dense("4"), TypeError, r"Dense\.max_len must be an int, got str"),
    ("dense_float", lambda: Dense(4.0), TypeError, r"Dense\.max_len must be an int, got float"),
    ("dense_overflow", lambda: Dense(4, overflow="wrap"), ValueError,
     r"Dense\.overflow must be one of \('error', 'drop'\), got 'wrap'"),
    ("window_bool", lambda: SlidingWindow(True), TypeError,
     r"SlidingWindow\.window must be an int"),
    ("sinks_float", lambda: StreamingLLM(window=4, num_sinks=2.5), TypeError,
     r"StreamingLLM\.num_sinks must be an int, got float 2\.5"),
    ("from_budget_sinks_only", lambda: StreamingLLM.from_budget(4, num_sinks=4), ValueError,
     "must exceed num_sinks=4: the ring needs at least one slot"),
    ("snapkv_kernel_float", lambda: SnapKV(16, window=4, kernel=3.0), TypeError,
     r"SnapKV\.kernel must be an int"),
    ("snapkv_decode_negative", lambda: SnapKV(16, window=4, decode_capacity=-2), ValueError,
     r"SnapKV\.decode_capacity must be >= 0, got -2"),
    ("snapkv_gqa_none", lambda: SnapKV(16, window=4, gqa=None), ValueError,
     r"SnapKV\.gqa must be one of"),
    ("h2o_float", lambda: H2O(heavy=2.5, recent=2), TypeError, r"H2O\.heavy must be an int"),
    ("h2o_normalize_str", lambda: H2O(2, 2, normalize="yes"), TypeError,
     r"H2O\.normalize must be a bool"),
    ("tova_str", lambda: TOVA(budget="8"), TypeError, r"TOVA\.budget must be an int"),
    ("random_seed_float", lambda: Random(4, seed=1.5), TypeError, r"Random\.seed must be an int"),
    ("knorm_window_none", lambda: KeyNorm(4, window=None), TypeError,
     r"KeyNorm\.window must be an int, got NoneType"),
    ("recompress_interval", lambda: Recompress(KeyNorm(4), interval=2.0, target=4), TypeError,
     r"Recompress\.interval must be an int"),
    ("quantized_group", lambda: quantized(Dense(64), group=8.0), TypeError,
     r"Quantized\.group must be an int"),
    ("quantized_bits", lambda: quantized(Dense(64), bits=4.0), TypeError,
     r"Quantized\.bits must be an int"),
    ("budget_nan", lambda: Budget(fraction=NAN), ValueError, r"Budget\.fraction must be finite"),
    ("budget_bool", lambda: Budget(tokens=True), TypeError, r"Budget\.tokens must be an int"),
    ("pyramid_beta_inf", lambda: pyramid(64, 4, 512, beta=INF), ValueError,
     "pyramid: beta must be finite"),
    ("init_batch_zero", lambda: Dense(8).init(0, H, D), ValueError, "batch must be >= 1, got 0"),
    ("init_dim_float", lambda: Dense(8).init(B, H, 8.0), TypeError, "key_dim must be an int"),
    ("snapkv_unsized", lambda: SnapKV(16, window=4).init(B, H, D), ValueError,
     "has no size for its decode room.*decode_capacity=0 evicts"),
]


@pytest.mark.parametrize("make,error,match", [c[1:] for c in CONSTRUCTORS],
                         ids=[c[0] for c in CONSTRUCTORS])
def test_bad_constructor_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def chunk(t=T, b=B, h=H, d=D, start=0):
    """Keys, values ``[b, h, t, d]`` and positions ``[b, t]`` of a stream chunk."""
    kv = jnp.ones((b, h, t, d), jnp.float32)
    return kv, kv, jnp.broadcast_to(jnp.arange(start, start + t, dtype=jnp.int32), (b, t))


def prefill(policy, *args, state=None, **kw):
    state = policy.init(B, H, D) if state is None else state
    return lambda: policy.prefill(state, *args, **kw)


K, V, P = chunk()
DENSE, SNAP = Dense(16), SnapKV(8, window=2, kernel=3, decode_capacity=0)
Q = jnp.ones((B, 2 * H, T, D))
CALLS = [
    ("keys_heads", prefill(DENSE, chunk(h=3)[0], V, P), ValueError,
     r"Dense\.prefill: keys must be \[B=2, H=2, T=5, Dk=8\], got shape \(2, 3, 5, 8\)"),
    ("values_dim", prefill(DENSE, K, chunk(d=6)[1], P), ValueError,
     r"values must be \[B=2, H=2, T=5, Dv=8\], got shape \(2, 2, 5, 6\)"),
    ("pos_rank", prefill(DENSE, K, V, P[0]), ValueError,
     r"pos must be \[B=2, T\], got shape \(5,\)"),
    ("pos_float", prefill(DENSE, K, V, P.astype(jnp.float32)), TypeError,
     "pos must be an int array, got float32"),
    ("keys_int", prefill(DENSE, K.astype(jnp.int32), V, P), TypeError,
     "keys must be a float array, got int32"),
    ("batch", prefill(DENSE, *chunk(b=3)), ValueError,
     r"pos must be \[B=2, T\], got shape \(3, 5\)"),
    ("keys_list", prefill(DENSE, K.tolist(), V, P), TypeError, "keys must be an array"),
    ("append_rank", lambda: DENSE.append(DENSE.init(B, H, D), K[:, 0, 0], V[:, :, 0], P[:, 0]),
     ValueError, r"Dense\.append: key must be \[B=2, H=2, Dk=8\], got shape \(2, 8\)"),
    ("append_pos_rank", lambda: DENSE.append(DENSE.init(B, H, D), K[:, :, 0], V[:, :, 0], P),
     ValueError, r"Dense\.append: pos must be \[B=2\], got shape \(2, 5\)"),
    ("observe_capacity", lambda: H2O(2, 2).observe(H2O(2, 2).init(B, H, D), jnp.ones((B, H, 5))),
     ValueError, r"H2O\.observe: slot_probs must be \[B=2, H=2, C=4\], got shape \(2, 2, 5\)"),
    ("mass_capacity", prefill(H2O(2, 2), K, V, P, mass=PrefillMass(jnp.ones((B, H, 3)),
                                                                    jnp.ones((B, H, T)))),
     ValueError, r"mass\.cache must be \[B=2, H=2, C=4\]"),
    ("queries_group", prefill(SNAP, K, V, P, queries=jnp.ones((B, 3, T, D))), ValueError,
     "queries have 3 heads, not a multiple of the cache's 2 heads"),
    ("queries_dim", prefill(SNAP, K, V, P, queries=jnp.ones((B, 2 * H, T, 4))), ValueError,
     r"queries must be \[B=2, Hq, T=5, Dk=8\]"),
    ("state_none", prefill(DENSE, K, V, P, state=()), TypeError,
     r"Dense\.prefill: state must be the KVState the policy's init\(\) returns, got tuple"),
    ("quantized_plain_state", lambda: quantized(Dense(64), group=8, residual=8).append(
        Dense(64).init(B, H, D), K[:, :, 0], V[:, :, 0], P[:, 0]), TypeError,
     "state must be the QuantizedKVState"),
    ("per_query_head_kv_cache",
     prefill(SnapKV(8, window=2, kernel=3, gqa="per_query_head", decode_capacity=0), K, V, P,
             queries=Q), ValueError,
     r"gqa='per_query_head'\) selects per query head.*4 query heads and a cache of 2 heads"),
    ("snapkv_no_queries", prefill(SNAP, K, V, P), ValueError, "needs the chunk's rotated"),
    ("h2o_no_mass", prefill(H2O(2, 2), K, V, P), ValueError, "needs the chunk's attention `mass`"),
    ("dense_overflow", prefill(Dense(4), *chunk(t=7)), ValueError,
     r"position 6 is past Dense\(max_len=4\).*overflow='drop'"),
    ("dense_append_overflow", lambda: Dense(4).append(Dense(4).init(B, H, D), K[:, :, 0],
                                                      V[:, :, 0], jnp.full((B,), 4)),
     ValueError, r"Dense\.append: position 4 is past Dense\(max_len=4\)"),
    ("sinks_never_fill", prefill(StreamingLLM(4, num_sinks=2), *chunk(start=100)), ValueError,
     "row 0 starts its stream at position 100; the 2 sinks are positions 0..1"),
    ("position_past_bound", prefill(H2O(2, 2), *chunk(start=MAX_POSITION - 3),
                                    mass=PrefillMass(jnp.ones((B, H, 4)), jnp.ones((B, H, T)))),
     ValueError, r"position 2147483647 is outside \[-1, 2147483646\]"),
    ("position_wrapped", prefill(SlidingWindow(4), K, V, P - 3), ValueError,
     r"position -3 is outside \[-1, "),
]


@pytest.mark.parametrize("call,error,match", [c[1:] for c in CALLS], ids=[c[0] for c in CALLS])
def test_bad_method_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_asked_for_drops_are_kept_quiet():
    """``overflow='drop'`` is the old Dense behaviour, by name: positions past it are skipped."""
    policy = Dense(4, overflow="drop")
    state = policy.prefill(policy.init(B, H, D), *chunk(t=7))
    assert state.pos[0, 0].tolist() == [0, 1, 2, 3]
