"""Exact score ties keep the older token (smaller position), whatever slot it sits in: the
order of a top-k over a cache kept in position order that prefers lower indices (kvpress, the
H2O reference; both leave ties to ``torch.topk``)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from lcache.cache import H2O, PrefillMass, keep_top, select

B, H, D = 1, 1, 2


def kept(state):
    return sorted(np.asarray(state.pos)[state.pos >= 0].tolist())


def test_decode_evicts_the_newest_of_tied_tokens():
    """Three tokens with no attention at all, then a fourth: the victim is position 2, not the
    token in the lowest slot (position 0)."""
    policy = H2O(heavy=2, recent=1)
    state = policy.init(B, H, D)
    for p in range(4):
        x = jnp.ones((B, H, D))
        state = policy.append(state, x, x, jnp.array([p]))
        state = policy.observe(state, jnp.zeros((B, H, policy.capacity)))
    assert kept(state) == [0, 1, 3]


def test_prefill_keeps_the_oldest_of_tied_tokens():
    """A chunk given newest first: ties go by position, not by index in the chunk."""
    policy = H2O(heavy=2, recent=0)
    x = jnp.ones((B, H, 4, D))
    pos = jnp.array([[3, 2, 1, 0]])
    mass = PrefillMass(cache=jnp.zeros((B, H, 2)), chunk=jnp.zeros((B, H, 4)))
    state = policy.prefill(policy.init(B, H, D), x, x, pos, mass=mass)
    assert kept(state) == [0, 1]


def test_selection_primitive_with_positions():
    pri = jnp.array([[[1.0, 1.0, 1.0, 0.0]]])
    pos = jnp.array([[[5, 3, 4, 9]]])
    assert np.asarray(keep_top(pri, 2, pos))[0, 0].tolist() == [False, True, True, False]
    assert np.asarray(keep_top(pri, 2))[0, 0].tolist() == [True, True, False, False]  # index
    # one new token ties the cache's lowest slots: the cached token stays (it is older)
    dest, _ = select(pri, jnp.array([[[1.0]]]), None, pos, jnp.array([[[10]]]))
    assert np.asarray(dest).ravel().tolist() == [3]  # the lowest (0.0) slot is replaced
    dest, _ = select(pri[..., :3], jnp.array([[[1.0]]]), None, pos[..., :3],
                     jnp.array([[[10]]]))
    assert np.asarray(dest).ravel().tolist() == [3]  # a tie: dropped, the cache is kept
