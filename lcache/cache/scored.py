"""Base of the score-based policies: a stored score per slot, ``select`` decides who stays.

A subclass says how chunks and decode tokens are scored (``prefill``, ``token_score``,
``observe``), how many of the most recent tokens are protected (``recent_protected``) and, if a
stored score is not directly the selection priority, how to rank it (``rank``). Keys are stored
rotated at their original positions (``rope_mode = 'original'``).

Decode is insert-then-attend: ``append`` writes the new token (always kept) over the
lowest-priority unprotected slot when the cache is full (one pass over the slots, no sort),
then attention runs over the view and ``observe`` feeds its probabilities back.

Budget as data: ``block_slots`` marks ``BLOCKED`` slots a row may never use, so rows of one
batch (one compiled program) keep different budgets below the capacity; a blocked slot ranks
above every candidate (never evicted, so never written) and is not valid (never attended).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from lcache.cache.base import Policy, write_slots
from lcache.cache.selection import evict, keep_top, lowest, priority, select
from lcache.cache.state import EMPTY, KVState

BLOCKED = -2  # ``pos`` of a slot a row may never use (``block_slots``)


def block_slots(state: KVState, surplus_B) -> KVState:
    """Block the last ``surplus [B]`` empty slots of each row and head: the row keeps
    ``budget - surplus`` tokens in a cache built for ``budget``."""
    empty = state.pos == EMPTY
    from_end = jnp.cumsum(empty[..., ::-1], axis=-1)[..., ::-1]  # empty slots at or after
    blocked = empty & (from_end <= jnp.asarray(surplus_B)[:, None, None])
    return dataclasses.replace(state, pos=jnp.where(blocked, BLOCKED, state.pos))


def _unevictable(priority_BHC, pos_BHC):
    """Slot priorities with ``BLOCKED`` slots above every candidate."""
    return jnp.where(pos_BHC == BLOCKED, jnp.inf, priority_BHC)


def newest_pos(state: KVState, pos_BT):
    """``[B]`` the largest position after consuming ``pos`` (``-1`` for an empty stream)."""
    return jnp.maximum(state.seen - 1, jnp.max(pos_BT, axis=-1))


@dataclasses.dataclass(frozen=True)
class ScoredPolicy(Policy):
    """Shared insert/evict logic of H2O, SnapKV, TOVA, KeyNorm, Random and ValueAware."""

    # True when the stored score is a vote of recent queries that a re-selection should restart
    # from zero (SnapKV's observation window; see ``Recompress``).
    decode_votes: ClassVar[bool] = False

    def recent_protected(self) -> int:
        """How many of the most recent positions can never be evicted."""
        raise NotImplementedError

    def rank(self, score, pos, values, seen):
        """Selection priority of stored ``score [B, H, N]`` for tokens at ``pos [B, H, N]`` with
        ``values [B, H, N, Dv]``, when ``seen [B]`` tokens have been consumed."""
        del pos, values, seen
        return score

    def token_score(self, state: KVState, key, value, pos):
        """Stored score ``[B, H]`` of a decode token (before any attention has seen it)."""
        del key, value, pos
        return jnp.zeros(state.seen.shape + state.pos.shape[1:2], jnp.float32)

    def insert(self, state: KVState, keys, values, pos, slot_score, chunk_score, *,
               keep: int | None = None, force_new: bool = False) -> KVState:
        """Keep the top candidates among the cache (re-scored ``slot_score [B, H, C]``) and a
        chunk (``chunk_score [B, H, T]``), at most ``keep`` of them; write the chunk's winners.

        The ``recent_protected()`` newest positions are forced in; ``force_new`` forces the whole
        chunk (a decode token is always stored: the current query attends to it). A row whose
        chunk is all padding is left as it was.
        """
        active = jnp.any(pos >= 0, axis=-1)
        slot_score = jnp.where(active[:, None, None], slot_score, state.score)
        if keep is not None:
            keep = jnp.where(active, keep, state.capacity)
        newest = newest_pos(state, pos)[:, None, None]
        seen = jnp.maximum(state.seen, newest[:, 0, 0] + 1)
        pos_bht = jnp.broadcast_to(pos[:, None, :], chunk_score.shape)
        slot_pri = self._slot_priority(state, slot_score, newest, seen)
        new_pri = priority(self.rank(chunk_score, pos_bht, values, seen), pos_bht >= 0,
                           force_new | (pos_bht > newest - self.recent_protected()))
        dest, kept = select(slot_pri, new_pri, keep, state.pos, pos_bht)
        state = evict(dataclasses.replace(state, score=slot_score.astype(jnp.float32)), kept)
        return write_slots(state, dest, keys, values, pos, chunk_score.astype(jnp.float32))

    def _slot_priority(self, state: KVState, score, newest_B11, seen_B):
        """``[B, H, C]`` selection priority of the cached slots: ``rank`` of ``score``, the
        newest ``recent_protected()`` positions ``+inf``, empty ``-inf``, blocked above all."""
        pri = priority(self.rank(score, state.pos, state.values, seen_B), state.valid,
                       state.pos > newest_B11 - self.recent_protected())
        return _unevictable(pri, state.pos)

    def append(self, state, key, value, pos):
        """A decode token, always kept: ``insert(..., force_new=True)`` for one token, in one
        pass over the slots (``lowest``, no sort, no gather) and one scatter per array. The
        token replaces the lowest-priority slot (an empty one first) unless every slot is
        protected; no other slot changes (empty slots already score 0: nothing to evict)."""
        newest = newest_pos(state, pos[:, None])[:, None, None]
        seen = jnp.maximum(state.seen, newest[:, 0, 0] + 1)
        victim, low = lowest(self._slot_priority(state, state.score, newest, seen), state.pos)
        keep = (pos >= 0)[:, None, None] & (low < jnp.inf)
        return write_slots(state, jnp.where(keep, victim, state.capacity), key[:, :, None],
                           value[:, :, None], pos[:, None],
                           self.token_score(state, key, value, pos)[..., None])

    def prune(self, state: KVState, keep: int, rows_B) -> KVState:
        """Keep the top ``keep`` slots (recent positions protected) in rows where ``rows_B``."""
        pri = self._slot_priority(state, state.score, (state.seen - 1)[:, None, None],
                                  state.seen)
        return evict(state, keep_top(pri, keep, state.pos) | ~rows_B[:, None, None])


def accumulate(state: KVState, slot_probs_BHC) -> KVState:
    """Add a decode step's attention to the stored scores (H2O's heavy-hitter sum)."""
    return dataclasses.replace(state, score=state.score + jnp.where(state.valid, slot_probs_BHC, 0))
