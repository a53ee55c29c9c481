"""SlidingWindow and StreamingLLM against the set oracle, on random chunked streams."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cache_oracles import ring_kept, ring_rank
from cache_streams import feed, make_stream
from hypothesis import given, settings
from hypothesis import strategies as st

from lcache.cache import SlidingWindow, StreamingLLM

# Few (sinks, window) shapes so that hypothesis mostly varies data, not compilations.
SHAPES = [(0, 3), (2, 2), (4, 3)]


def ring(sinks, window):
    return SlidingWindow(window) if sinks == 0 else StreamingLLM(window=window, num_sinks=sinks)


@settings(max_examples=25, deadline=None)
@given(shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**16))
def test_ring_matches_oracle(shape, seed):
    """Kept set every step, sinks pinned, content intact, in-cache RoPE ranks at the end."""
    sinks, window = shape
    policy = ring(sinks, window)
    stream = make_stream(seed)
    state, (pos_hist, _) = feed(policy, stream)
    pos_hist = np.asarray(pos_hist)
    for step, dec in enumerate(stream.dec_pos):
        for b in range(2):
            for h in range(2):
                row = pos_hist[step, b, h]
                got = {int(p) for p in row if p >= 0}
                assert got == ring_kept(int(dec[b]) + 1, sinks, window)
                assert len(got) == int((row >= 0).sum()) <= policy.capacity  # no duplicates
                # sinks pinned in slots 0..S-1
                assert all(row[p] == p for p in range(min(sinks, int(dec[b]) + 1)))
    # content travelled with its position
    valid = np.asarray(state.pos) >= 0
    np.testing.assert_array_equal(np.asarray(state.keys[..., 0])[valid],
                                  np.asarray(state.pos)[valid])
    # 'cache' positions: keys rotated with their rank in the cache, the query consistent
    view = policy.view(state)
    assert not view.keys_rotated
    pos, rope = np.asarray(state.pos), np.asarray(view.rope_pos)
    offset = np.asarray(view.query_offset)
    for b, seen in enumerate(stream.seen):
        for h in range(2):
            for slot in np.flatnonzero(pos[b, h] >= 0):
                assert rope[b, h, slot] == ring_rank(pos[b, h, slot], seen, sinks, window)
        # the query of the last token (inserted, then attending) has the largest rank
        assert seen - 1 - offset[b] == ring_rank(seen - 1, seen, sinks, window)


@settings(max_examples=10, deadline=None)
@given(shape=st.sampled_from(SHAPES[1:]), seed=st.integers(0, 2**16))
def test_chunked_prefill_equals_token_by_token(shape, seed):
    policy = ring(*shape)
    chunked = make_stream(seed, chunk=6, num_chunks=2, steps=0)
    n, b, h, t, d = chunked.chunk_k.shape
    # the same tokens one at a time (one-token chunks)
    single = make_stream(seed, chunk=1, num_chunks=n * t, steps=0)
    order = np.argsort(np.where(chunked.chunk_pos >= 0, chunked.chunk_pos, 10**6).transpose(
        1, 0, 2).reshape(b, -1), axis=1, kind="stable")
    for name in ("chunk_pos", "chunk_k", "chunk_v"):
        x = getattr(chunked, name)
        x = np.moveaxis(x, 0, 1)  # [B, n, ...]
        if name == "chunk_pos":
            flat = x.reshape(b, n * t)
            flat = np.take_along_axis(flat, order, 1)
            setattr(single, name, flat.T[:, :, None].copy())
        else:
            flat = np.moveaxis(x, 3, 2).reshape(b, n * t, h, d)  # [B, n*t, H, D]
            flat = np.take_along_axis(flat, order[..., None, None], 1)
            setattr(single, name, np.moveaxis(flat, 1, 0)[:, :, :, None, :].copy())
    single.chunk_q = np.zeros((n * t, b, h, 1, d), np.float32)
    single.feedback = single.feedback[: n * t]
    a, _ = feed(policy, chunked)
    c, _ = feed(policy, single)
    for field in ("pos", "keys", "values", "seen"):
        np.testing.assert_array_equal(np.asarray(getattr(a, field)), np.asarray(getattr(c, field)))


def test_visible_is_streaming_window():
    policy = StreamingLLM(window=3, num_sinks=2)
    q = jnp.arange(10)[:, None]
    k = jnp.arange(10)[None, :]
    vis = np.asarray(policy.visible(q, k))
    for qi in range(10):
        assert {int(x) for x in np.flatnonzero(vis[qi])} == ring_kept(qi + 1, 2, 3)


def test_original_positions_view():
    policy = StreamingLLM(window=2, num_sinks=1, positions="original")
    assert policy.rope_mode == "original"

    @jax.jit
    def prefill_view(keys):
        return policy.view(policy.prefill(policy.init(1, 1, 2), keys, keys, jnp.arange(6)[None]))

    view = prefill_view(jnp.ones((1, 1, 6, 2)))
    assert view.keys_rotated
    assert sorted(np.asarray(view.key_pos[0, 0]).tolist()) == [0, 4, 5]
    np.testing.assert_array_equal(view.rope_pos, view.key_pos)
    assert int(view.query_offset[0]) == 0


def test_edge_cases_empty_and_capacity_one():
    policy = SlidingWindow(1)
    state = policy.init(2, 1, 2)
    assert not np.asarray(policy.view(state).valid).any() and policy.capacity == 1
    append = jax.jit(policy.append)
    for p in range(5):  # wrap-around every step
        x = jnp.full((2, 1, 2), p, jnp.float32)
        state = append(state, x, x, jnp.full((2,), p))
        assert np.asarray(state.pos).ravel().tolist() == [p, p]
    assert np.asarray(state.keys).ravel().tolist() == [4.0] * 4


@pytest.mark.parametrize("kw,match", [
    (dict(window=0), "window must be >= 1"),
    (dict(window=4, num_sinks=-1), "num_sinks must be >= 0"),
    (dict(window=4, positions="rotated"), "positions must be one of"),
])
def test_bad_config_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        StreamingLLM(**kw)


def test_from_budget():
    assert StreamingLLM.from_budget(48, num_sinks=4) == StreamingLLM(window=44, num_sinks=4)
    with pytest.raises(ValueError, match="must exceed num_sinks"):
        StreamingLLM.from_budget(4, num_sinks=4)
