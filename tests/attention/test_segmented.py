"""Decode attention over segmented views (plain, head groups, pools, keys before RoPE, sink
logit) against a numpy oracle that gathers, per head, every entry it sees and takes one
softmax; the kernel routes against the XLA merge; a layout no kernel takes raises."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lcache.attention.decode import decode_over_view, kernel_plan
from lcache.cache import CacheView, Segment
from pallas_kernels.decode.reference import rope_rotate

B, H, G, D = 2, 3, 2, 32  # D >= 32: in-kernel RoPE
INV_FREQ = 1.0 / (10000 ** (np.arange(0, D, 2) / D))


def _segment(rng, kind, cap, rotated=True):
    """kind: 'all', a tuple of heads, or 'pool'."""
    s = 1 if kind == "pool" else H if kind == "all" else len(kind)
    f = functools.partial(jnp.asarray, dtype=jnp.float32)
    pos = jnp.asarray(rng.integers(0, 50, (B, s, cap)), jnp.int32)
    return Segment(
        keys=f(rng.normal(size=(B, s, cap, D))), values=f(rng.normal(size=(B, s, cap, D))),
        valid=jnp.asarray(rng.random((B, s, cap)) < 0.8), key_pos=pos, rope_pos=pos,
        owner=jnp.asarray(rng.integers(-1, H, (B, 1, cap)), jnp.int32) if kind == "pool"
        else None, heads=kind if isinstance(kind, tuple) else None, keys_rotated=rotated)


def _oracle(q, view, sink=None):
    """Per (row, head): the entries it sees across segments, one softmax."""
    q = np.asarray(q, np.float64).reshape(B, H, G, D)
    out = np.zeros((B, H, G, D))
    probs = [np.zeros((B, H, s.capacity)) for s in view.segments]
    for b in range(B):
        for h in range(H):
            logits, vals, where = [], [], []
            for i, s in enumerate(view.segments):
                keys = np.asarray(s.keys if s.keys_rotated else rope_rotate(
                    s.keys, s.rope_pos, INV_FREQ), np.float64)
                j = (s.heads.index(h) if s.heads and h in s.heads else None if s.heads
                     else 0 if s.owner is not None else h)
                if j is None:
                    continue
                for c in range(s.capacity):
                    ok = bool(s.valid[b, j, c]) and (s.owner is None or int(s.owner[b, 0, c]) == h)
                    if ok:
                        logits.append(keys[b, j, c] @ q[b, h].T / np.sqrt(D))  # [G]
                        vals.append(np.asarray(s.values[b, j, c], np.float64))
                        where.append((i, c))
            if not logits:
                continue
            lg = np.stack(logits, -1)  # [G, n]
            extra = np.zeros(G) if sink is None else np.exp(np.asarray(sink).reshape(H, G)[h])
            m = lg.max(-1, keepdims=True)
            if sink is not None:
                m = np.maximum(m, np.asarray(sink).reshape(H, G)[h][:, None])
            e = np.exp(lg - m)
            den = e.sum(-1) + extra * np.exp(-m[:, 0])
            p = e / den[:, None]
            out[b, h] = p @ np.stack(vals)
            for k, (i, c) in enumerate(where):
                probs[i][b, h, c] += p[:, k].sum()
    return out.reshape(B, H * G, D), np.concatenate(probs, -1)


LAYOUTS = {
    "plain+group": (("all", 5, True), ((0, 2), 7, True)),
    "groups": (((0, 2), 9, True), ((1,), 4, True)),
    "pool+plain": (("pool", 12, True), ("all", 3, True)),
    "unrotated": (("all", 6, False), ("all", 5, False)),
    "unrotated groups": (((0, 1), 6, False), ((2,), 5, False)),
    "overlap unrotated": (("all", 6, False), ((1, 2), 5, False)),
    "three": (("all", 4, True), ((2,), 3, True), ("pool", 6, True)),
}


@settings(max_examples=20, deadline=None)
@given(layout=st.sampled_from(sorted(LAYOUTS)), seed=st.integers(0, 2**16),
       with_sink=st.booleans())
def test_lse_merge_equals_one_softmax(layout, seed, with_sink):
    rng = np.random.default_rng(seed)
    view = CacheView(tuple(_segment(rng, k, c, r) for k, c, r in LAYOUTS[layout]),
                     jnp.zeros((B,), jnp.int32), H)
    q = jnp.asarray(rng.normal(size=(B, H * G, D)), jnp.float32)
    sink = jnp.asarray(rng.normal(size=H * G), jnp.float32) if with_sink else None
    out, probs = decode_over_view(q, view, INV_FREQ, impl="xla",
                                  variant="sink_logit" if with_sink else "softmax",
                                  sink_logit=sink)
    want_out, want_probs = _oracle(q, view, sink)
    np.testing.assert_allclose(out, want_out, atol=2e-5)
    np.testing.assert_allclose(probs, want_probs, atol=2e-6)


@pytest.mark.parametrize("layout", ["plain+group", "groups", "unrotated", "unrotated groups"])
def test_kernel_routes_match_the_merge(layout):
    """Head groups partitioning the heads: one decode kernel per group; full-head segments:
    concatenated into one kernel call (interpreted on CPU)."""
    rng = np.random.default_rng(1)
    view = CacheView(tuple(_segment(rng, k, c, r) for k, c, r in LAYOUTS[layout]),
                     jnp.zeros((B,), jnp.int32), H)
    q = jnp.asarray(rng.normal(size=(B, H * G, D)), jnp.float32)
    reason, _ = kernel_plan(view)
    if layout == "plain+group":  # head 0 and 2 in two segments: no kernel, a clear error
        assert "no decode kernel" in reason
        with pytest.raises(ValueError, match="impl='pallas'.*no decode kernel takes segments"):
            decode_over_view(q, view, INV_FREQ, impl="pallas")
        return
    assert reason is None
    want = decode_over_view(q, view, INV_FREQ, impl="xla")
    got = jax.jit(lambda q, v: decode_over_view(q, v, INV_FREQ, impl="pallas"))(q, view)
    np.testing.assert_allclose(got[0], want[0], atol=2e-5)
    np.testing.assert_allclose(got[1], want[1], atol=2e-6)


def test_pool_has_no_kernel_and_auto_falls_back():
    rng = np.random.default_rng(2)
    view = CacheView(tuple(_segment(rng, k, c, r) for k, c, r in LAYOUTS["pool+plain"]),
                     jnp.zeros((B,), jnp.int32), H)
    q = jnp.asarray(rng.normal(size=(B, H * G, D)), jnp.float32)
    with pytest.raises(ValueError, match="pool"):
        decode_over_view(q, view, INV_FREQ, impl="pallas")
    out, _ = decode_over_view(q, view, INV_FREQ, impl="auto")  # CPU: the merge
    np.testing.assert_allclose(out, _oracle(q, view)[0], atol=2e-5)


def test_flat_frame_and_split():
    rng = np.random.default_rng(3)
    view = CacheView(tuple(_segment(rng, k, c, r) for k, c, r in LAYOUTS["three"]),
                     jnp.zeros((B,), jnp.int32), H)
    flat = view.flat()
    assert flat.keys.shape == (B, H, 13, D) and view.size == 13
    assert [x.shape[-1] for x in view.split(flat.valid)] == [4, 3, 6]
    group = view.split(flat.valid)[1]
    assert not np.asarray(group[:, :2]).any()  # heads 0, 1 do not see head 2's group
    pool = np.asarray(view.split(flat.valid)[2])
    owner = np.asarray(view.segments[2].owner)
    assert (pool.sum(1) <= 1).all() and not pool[np.broadcast_to(owner < 0, pool.shape)].any()
    with pytest.raises(ValueError, match="no single keys array"):
        _ = view.keys
