"""The one selection primitive every score-based policy uses.

A cache of capacity ``C`` holding scored slots meets ``T`` incoming scored tokens; the top ``C``
of the ``C + T`` candidates stay. Nothing moves: an incoming token that makes the cut is written
over a slot that does not (an empty one first), so a decode step costs one ``argmin``-like
``top_k`` over ``C`` slots and one scatter, never a gather of the whole cache.

Priorities are float32: ``+inf`` for protected candidates (sinks, recent windows), ``-inf`` for
empty slots and padding, the policy's score otherwise. A tie between a cached slot and a new
token keeps the cached one; among equal new tokens the lower index wins (``lax.top_k`` order).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lcache.cache.state import EMPTY, KVState


def priority(score, valid, protected):
    """``+inf`` where ``protected``, ``-inf`` where not ``valid``, else ``score`` (float32)."""
    score = score.astype(jnp.float32)
    return jnp.where(valid, jnp.where(protected, jnp.inf, score), -jnp.inf)


def keep_top(priority_BHN, keep):
    """``[B, H, N]`` bool: the ``keep`` (an int or ``[B]``) highest entries of each row that are
    not ``-inf`` (ties: lower index first)."""
    rank = jnp.argsort(jnp.argsort(-priority_BHN, axis=-1, stable=True), axis=-1)
    return (rank < jnp.reshape(jnp.asarray(keep), (-1, 1, 1))) & (priority_BHN > -jnp.inf)


def select(slot_priority_BHC, new_priority_BHT, keep=None):
    """Keep the top ``min(C, keep)`` of ``C`` cached slots and ``T`` new tokens (``keep``: an int
    or ``[B]`` per row).

    Returns ``dest [B, H, T]`` int32, the slot each new token is written to (``C`` = dropped),
    and ``kept [B, H, C]`` bool, the cached slots that survive (before new tokens overwrite
    their ``dest`` slots; a slot that is not ``kept`` and not a ``dest`` must be emptied).

    Merge rule: with cached slots sorted up (``v_1 <= v_2 <= ...``) and new tokens sorted down
    (``q_1 >= q_2 >= ...``), new token ``i`` replaces slot ``v_i`` iff ``q_i > v_i``; the pairs
    that swap form a prefix, which is exactly the top-``C`` of the union.
    """
    c, t = slot_priority_BHC.shape[-1], new_priority_BHT.shape[-1]
    if keep is not None and not (isinstance(keep, int) and keep >= c):
        # A budget below the capacity: decide the survivors over the union first, then place.
        kept_all = keep_top(jnp.concatenate([slot_priority_BHC, new_priority_BHT], -1), keep)
        slot_priority_BHC = jnp.where(kept_all[..., :c], slot_priority_BHC, -jnp.inf)
        new_priority_BHT = jnp.where(kept_all[..., c:], new_priority_BHT, -jnp.inf)
    k = min(c, t)
    low_neg, victim = jax.lax.top_k(-slot_priority_BHC, k)  # lowest slots, ascending
    high, order = jax.lax.top_k(new_priority_BHT, k)  # best new tokens, descending
    dest_sorted = jnp.where(high > -low_neg, victim, c).astype(jnp.int32)
    dest = jnp.full(new_priority_BHT.shape, c, jnp.int32)
    dest = jnp.put_along_axis(dest, order, dest_sorted, axis=-1, inplace=False)
    return dest, slot_priority_BHC > -jnp.inf


def evict(state: KVState, kept_BHC) -> KVState:
    """Empty the slots where ``kept`` is False (``pos = -1``, ``score = 0``)."""
    return KVState(keys=state.keys, values=state.values,
                   pos=jnp.where(kept_BHC, state.pos, EMPTY),
                   score=jnp.where(kept_BHC, state.score, 0.0), seen=state.seen)
