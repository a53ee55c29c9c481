"""The one selection primitive every score-based policy uses.

A cache of capacity ``C`` holding scored slots meets ``T`` incoming scored tokens; the top ``C``
of the ``C + T`` candidates stay. Nothing moves: an incoming token that makes the cut is written
over a slot that does not (an empty one first), so a decode step costs one ``argmin``-like
``top_k`` over ``C`` slots and one scatter, never a gather of the whole cache.

(``ScoredPolicy.append`` takes that step on its own: ``lowest`` and one scatter per array.)

Priorities are float32: ``+inf`` for protected candidates (sinks, recent windows), ``-inf`` for
empty slots and padding, the policy's score otherwise. A tie between a cached slot and a new
token keeps the cached one. Other exact ties: given the candidates' positions, the older token
(smaller position) is kept, as a top-k over a cache in position order that prefers lower
indices (kvpress, the H2O reference; both leave ties to ``torch.topk``, and the kvpress parity
fixtures are tie-free); without positions, the lower index is kept (``lax.top_k`` order).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lcache.cache.state import EMPTY, KVState


def priority(score, valid, protected):
    """``+inf`` where ``protected``, ``-inf`` where not ``valid``, else ``score`` (float32)."""
    score = score.astype(jnp.float32)
    return jnp.where(valid, jnp.where(protected, jnp.inf, score), -jnp.inf)


def _best_first(priority_BHN, pos_BHN, k: int):
    """``[B, H, k]`` indices of the ``k`` highest entries, highest first; ties: smaller
    position first (``pos`` given), then lower index."""
    if pos_BHN is None:
        return jax.lax.top_k(priority_BHN, k)[1]
    return jnp.lexsort((pos_BHN, -priority_BHN), axis=-1)[..., :k]


def _lower(a, b):
    """The lower of two ``(priority, pos, index)`` candidates: lower priority, then larger
    position, then lower index (``_worst_first``'s order)."""
    (pa, qa, ia), (pb, qb, ib) = a, b
    first = (pa < pb) | ((pa == pb) & ((qa > qb) | ((qa == qb) & (ia < ib))))
    return tuple(jnp.where(first, x, y) for x, y in zip(a, b, strict=True))


def lowest(priority_BHN, pos_BHN):
    """``(index, value)`` ``[B, H, 1]`` of the lowest entry, ties as ``_worst_first``: one
    variadic reduction over the entries, no sort (a decode step replaces one slot)."""
    i32 = jnp.iinfo(jnp.int32)
    index = jax.lax.broadcasted_iota(jnp.int32, priority_BHN.shape, priority_BHN.ndim - 1)
    low, _, at = jax.lax.reduce(
        (priority_BHN.astype(jnp.float32), pos_BHN.astype(jnp.int32), index),
        (jnp.float32(jnp.inf), jnp.int32(i32.min), jnp.int32(i32.max)), _lower,
        (priority_BHN.ndim - 1,))
    return at[..., None], low[..., None]


def _worst_first(priority_BHN, pos_BHN, k: int):
    """``[B, H, k]`` indices of the ``k`` lowest entries, lowest first; ties: larger position
    first (``pos`` given; the older token stays), then lower index."""
    if pos_BHN is None:
        return jax.lax.top_k(-priority_BHN, k)[1]
    if k == 1:
        return lowest(priority_BHN, pos_BHN)[0]
    return jnp.lexsort((-pos_BHN, priority_BHN), axis=-1)[..., :k]


def keep_top(priority_BHN, keep, pos_BHN=None):
    """``[B, H, N]`` bool: the ``keep`` (an int or ``[B]``) highest entries of each row that are
    not ``-inf`` (ties: smaller ``pos [B, H, N]`` first when given, then lower index)."""
    order = (jnp.argsort(-priority_BHN, axis=-1, stable=True) if pos_BHN is None
             else _best_first(priority_BHN, pos_BHN, priority_BHN.shape[-1]))
    rank = jnp.argsort(order, axis=-1)
    return (rank < jnp.reshape(jnp.asarray(keep), (-1, 1, 1))) & (priority_BHN > -jnp.inf)


def select(slot_priority_BHC, new_priority_BHT, keep=None, slot_pos_BHC=None, new_pos_BHT=None):
    """Keep the top ``min(C, keep)`` of ``C`` cached slots and ``T`` new tokens (``keep``: an int
    or ``[B]`` per row). Exact ties go to the older token when the positions
    (``slot_pos [B, H, C]``, ``new_pos [B, H, T]``) are given.

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
        pos = None if slot_pos_BHC is None else jnp.concatenate([slot_pos_BHC, new_pos_BHT], -1)
        kept_all = keep_top(jnp.concatenate([slot_priority_BHC, new_priority_BHT], -1), keep,
                            pos)
        slot_priority_BHC = jnp.where(kept_all[..., :c], slot_priority_BHC, -jnp.inf)
        new_priority_BHT = jnp.where(kept_all[..., c:], new_priority_BHT, -jnp.inf)
    k = min(c, t)
    victim = _worst_first(slot_priority_BHC, slot_pos_BHC, k)  # lowest slots, ascending
    order = _best_first(new_priority_BHT, new_pos_BHT, k)  # best new tokens, descending
    low = jnp.take_along_axis(slot_priority_BHC, victim, axis=-1)
    high = jnp.take_along_axis(new_priority_BHT, order, axis=-1)
    dest_sorted = jnp.where(high > low, victim, c).astype(jnp.int32)
    dest = jnp.full(new_priority_BHT.shape, c, jnp.int32)
    dest = jnp.put_along_axis(dest, order, dest_sorted, axis=-1, inplace=False)
    return dest, slot_priority_BHC > -jnp.inf


def evict(state: KVState, kept_BHC) -> KVState:
    """Empty the slots where ``kept`` is False (``pos = -1``, ``score = 0``)."""
    return KVState(keys=state.keys, values=state.values,
                   pos=jnp.where(kept_BHC, state.pos, EMPTY),
                   score=jnp.where(kept_BHC, state.score, 0.0), seen=state.seen)
