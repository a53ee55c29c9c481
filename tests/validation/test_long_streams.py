"""Long streams: positions are int32 and bounded by ``MAX_POSITION = 2**31 - 2`` (so that the
stream length ``pos + 1`` fits). Policies run correctly up to the bound, started a few steps
before it, and a position past it is a clear error, not a silent wrap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcache.cache import H2O, StreamingLLM
from lcache.cache.validate import MAX_POSITION

B, H, D = 1, 1, 4
START = MAX_POSITION - 7


def token(p):
    x = jnp.full((B, H, D), p % 97, jnp.float32)
    return x, x, jnp.full((B,), p, jnp.int32)


def test_streaming_llm_runs_to_the_bound():
    policy = StreamingLLM(window=4, num_sinks=2)
    state = policy.init(B, H, D)
    for p in range(2):  # the sinks: the stream starts at 0
        state = policy.append(state, *token(p))
    append = jax.jit(policy.append)
    for p in range(START, MAX_POSITION + 1):  # jump near the bound: the ring refills in 4 steps
        state = append(state, *token(p))
        if p < START + 4:
            continue
        assert int(state.seen[0]) == p + 1 > 0  # no wrap: 2**31 - 1 at the bound
        view = policy.view(state)
        kept = sorted(np.asarray(state.pos).ravel().tolist())
        assert kept == [0, 1, p - 3, p - 2, p - 1, p]
        ranks = dict(zip(np.asarray(state.pos).ravel().tolist(),
                         np.asarray(view.rope_pos).ravel().tolist(), strict=True))
        assert [ranks[q] for q in kept] == [0, 1, 2, 3, 4, 5]  # pos-shift ranks stay exact
        assert int(view.query_offset[0]) == p - 5  # a query at p is rotated as rank 5
    with pytest.raises(ValueError, match=r"position 2147483647 is outside \[-1, 2147483646\]"):
        policy.append(state, *token(MAX_POSITION + 1))


def test_h2o_ranks_near_the_bound():
    """Normalised H2O divides by ``seen - pos``: exact near the bound, where a wrapped ``seen``
    would flip the signs."""
    policy = H2O(heavy=2, recent=1, normalize=True)
    state = policy.init(B, H, D)
    append, observe = jax.jit(policy.append), jax.jit(policy.observe)
    feedback = {START: 3.0, START + 1: 0.5, START + 2: 2.0}  # attention each token receives
    for p in range(START, MAX_POSITION + 1):
        state = append(state, *token(p))
        probs = [feedback.get(q, 0.0) if q >= 0 else 0.0 for q in np.asarray(state.pos)[0, 0]]
        state = observe(state, jnp.asarray(probs, jnp.float32)[None, None])
    kept = set(np.asarray(state.pos).ravel().tolist())
    assert kept == {START, START + 2, MAX_POSITION}  # the two heavy hitters + the newest
    assert int(state.seen[0]) == 2**31 - 1
