"""Decode-time re-compression of a score-based policy (kvpress ``DecodingPress``, SnapKV-D).

The cache grows by one token per decode step; once it is full (``target + interval`` slots) the
base policy's ranking keeps ``target`` of them (its protected recent window included), so the
cache oscillates between ``target`` and ``target + interval`` with static shapes, and the
selection cost is paid once every ``interval`` steps. For vote-based bases (SnapKV) the scores
restart at zero after the prefill and after each re-selection, so each re-selection ranks by the
attention of the decode queries since the previous one: the observation window of SnapKV-D.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lcache.cache import validate as v
from lcache.cache.base import Policy
from lcache.cache.registry import Arg, register
from lcache.cache.scored import ScoredPolicy
from lcache.cache.snapkv import SNAP_ARGS, SnapKV, snap_args_of, snap_from_args, snap_least


@dataclasses.dataclass(frozen=True)
class Recompress(Policy):
    """Re-select ``base``'s cache down to ``target`` every ``interval`` decode tokens."""

    base: ScoredPolicy
    interval: int
    target: int

    def __post_init__(self):
        if not isinstance(self.base, ScoredPolicy):
            raise ValueError(f"Recompress.base must be a score-based policy, got "
                             f"{type(self.base).__name__}")
        v.check_fields(self, interval=v.integer(1), target=v.integer())
        if self.target < max(1, self.base.recent_protected()):
            raise ValueError(f"Recompress.target={self.target} must be >= 1 and hold the "
                             f"base's {self.base.recent_protected()} protected tokens")

    @property
    def capacity(self) -> int:
        return self.target + self.interval

    def cache_heads(self, num_kv_heads, num_q_heads):
        return self.base.cache_heads(num_kv_heads, num_q_heads)

    def _restart_votes(self, state, rows_B):
        if not self.base.decode_votes:
            return state
        return dataclasses.replace(state, score=jnp.where(rows_B[:, None, None], 0.0,
                                                          state.score))

    def prefill(self, state, keys, values, pos, *, queries=None, mass=None):
        state = self.base.prefill(state, keys, values, pos, queries=queries, mass=mass)
        return self._restart_votes(state, jnp.ones(state.seen.shape, bool))

    def append(self, state, key, value, pos):
        return self.base.append(state, key, value, pos)

    def observe(self, state, slot_probs):
        state = self.base.observe(state, slot_probs)
        full = jnp.all(state.valid, axis=(1, 2))

        def recompress(s):
            return self._restart_votes(self.base.prune(s, self.target, full), full)

        return jax.lax.cond(jnp.any(full), recompress, lambda s: s, state)

    def view(self, state):
        return self.base.view(state)

    def visible(self, q_pos, k_pos):
        return self.base.visible(q_pos, k_pos)

    @property
    def causal_prefill(self) -> bool:
        return self.base.causal_prefill

    @property
    def observation_window(self):
        return self.base.observation_window


def _recompress_args(p: Recompress) -> dict:
    base = p.base
    if type(base) is not SnapKV or base.decode_capacity or p.target != base.budget:
        raise ValueError(f"{p!r} has no spec: the registry's recompress re-selects a SnapKV "
                         "without decode slots down to its own budget")
    return dict(snap_args_of(base), interval=p.interval)


register("recompress", Recompress,
         split="snapkv with no decode slots: budget prompt tokens, then every interval decode "
               "tokens re-selected down to budget (capacity budget + interval)",
         args=dict(SNAP_ARGS, interval=Arg(16, "decode tokens between re-selections", low=1)),
         make=lambda budget, ctx, interval, **a: Recompress(snap_from_args(budget, **a),
                                                            interval, budget),
         args_of=_recompress_args, least=snap_least)
