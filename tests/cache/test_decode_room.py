"""SnapKV's decode room: by default (``decode_capacity=None``) room for the whole generation,
sized by whoever knows its length (``reserve_decode_room``, called by ``generate``), so the
prompt's selection survives decoding as in the reference; ``decode_capacity=0`` is the former
evict-at-every-step behaviour, by name."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcache.cache import H2O, KeyNorm, Recompress, SnapKV, quantized, reserve_decode_room

B, H, HQ, D, T, NEW = 1, 2, 4, 8, 12, 6
SNAP = SnapKV(budget=6, window=2, kernel=3)


def test_sizes_every_unsized_room_and_nothing_else():
    assert reserve_decode_room(SNAP, NEW) == SnapKV(6, 2, 3, decode_capacity=NEW)
    assert reserve_decode_room(quantized(SNAP), NEW).inner.decode_capacity == NEW
    assert reserve_decode_room(Recompress(SNAP, 2, 4), NEW).base.decode_capacity == NEW
    h2o, explicit = H2O(2, 2), SnapKV(6, 2, 3, decode_capacity=0)
    layers = reserve_decode_room((SNAP, h2o, explicit), NEW)
    assert layers[0].decode_capacity == NEW and layers[1] is h2o and layers[2] is explicit
    same = (h2o, explicit)
    assert reserve_decode_room(same, NEW) is same
    with pytest.raises(ValueError, match="has no size for its decode room"):
        _ = SNAP.capacity


def run(policy, seed=0):
    """Prefill a ``T``-token prompt, then ``NEW`` decode steps with random attention feedback.
    -> ``(head, position)`` pairs the prompt kept, and the pairs held at the end."""
    rng = np.random.default_rng(seed)
    k = jnp.asarray(rng.normal(size=(B, H, T, D)), jnp.float32)
    q = jnp.asarray(rng.normal(size=(B, HQ, T, D)), jnp.float32)
    pos = jnp.arange(T, dtype=jnp.int32)[None]
    state = policy.prefill(policy.init(B, H, D), k, k, pos, queries=q)
    prompt = held(state)
    append, observe = jax.jit(policy.append), jax.jit(policy.observe)
    for i in range(NEW):
        x = jnp.asarray(rng.normal(size=(B, H, D)), jnp.float32)
        state = append(state, x, x, jnp.array([T + i], jnp.int32))
        probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(B, H, policy.capacity))), -1)
        state = observe(state, jnp.where(state.pos >= 0, probs, 0.0))
    return prompt, held(state)


def held(state):
    pos = np.asarray(state.pos)[0]
    return {(h, int(p)) for h in range(pos.shape[0]) for p in pos[h] if p >= 0}


def test_prompt_selection_survives_generation():
    prompt, end = run(reserve_decode_room(SNAP, NEW))
    assert len(prompt) == H * SNAP.budget
    new = {(h, p) for h in range(H) for p in range(T, T + NEW)}
    assert end == prompt | new  # the reference: the selection + every new token


def test_old_behaviour_by_name_evicts_at_every_step():
    prompt, end = run(SnapKV(6, 2, 3, decode_capacity=0))
    assert len(end) == H * 6 and not prompt <= end  # the selection erodes as decoding goes on


def test_streaming_scorers_keep_their_capacity():
    """Scorers that rank decode tokens (H2O, TOVA, KeyNorm, Random) evict at every step by
    design: nothing to size."""
    assert reserve_decode_room(KeyNorm(4), NEW) == KeyNorm(4)
