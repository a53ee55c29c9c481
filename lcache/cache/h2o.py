"""H2O heavy hitters (Zhang et al., 2023) and its value-aware variant.

Per cache head, each slot's score is the attention it has received, summed over every query so
far (prefill rows via ``PrefillMass``, each decode step via ``observe``) and over the query group.
The ``recent`` newest positions are protected; the rest compete on score.

Variant: the real-drop H2O of FMInference/H2O ``utils_real_drop`` (``H2OKVCache_LayerWise``:
accumulate, then keep ``topk(score[:-recent], heavy)`` plus the last ``recent``), at original
RoPE positions (keys stored rotated; the reference also shifts positions, we do not). Not
KVCache-Factory's one-shot prefill "H2O". Our decode inserts before attending, so the new token
enters with score 0 and the lowest-score unprotected slot is evicted on the scores up to the
previous step: ``H2O(heavy=h, recent=r)`` attends exactly the token set of the reference with
``hh_size=h``, ``recent_size=r - 1`` (the reference attends over ``h + r`` tokens before
dropping one).

``normalize=True`` ranks by the mean instead of the sum, dividing by the number of queries that
could see the token (``seen - pos``): kvpress's ``ObservedAttentionPress`` is
``H2O(heavy=n_kept, recent=0, normalize=True)`` on a single prompt.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from lcache.cache import validate as v
from lcache.cache.registry import Arg, default_of, register, round_half_up
from lcache.cache.scored import ScoredPolicy, accumulate


@dataclasses.dataclass(frozen=True)
class H2O(ScoredPolicy):
    """``heavy`` top-score tokens plus ``recent`` newest ones; capacity ``heavy + recent``."""

    heavy: int
    recent: int
    normalize: bool = False

    def __post_init__(self):
        v.check_fields(self, heavy=v.integer(), recent=v.integer(), normalize=v.boolean())
        name = type(self).__name__
        if self.heavy < 0 or self.recent < 0:
            raise ValueError(f"{name} needs heavy >= 0 and recent >= 0, got heavy={self.heavy}, "
                             f"recent={self.recent}")
        if self.heavy + self.recent < 1:
            raise ValueError(f"{name} capacity heavy + recent must be >= 1, got 0")

    @property
    def capacity(self) -> int:
        return self.heavy + self.recent

    def recent_protected(self) -> int:
        return self.recent

    def rank(self, score, pos, values, seen):
        if not self.normalize:
            return score
        return score / jnp.maximum(seen[:, None, None] - pos, 1).astype(jnp.float32)

    def prefill(self, state, keys, values, pos, *, queries=None, mass=None):
        del queries
        if mass is None:
            raise ValueError(f"{type(self).__name__}.prefill needs the chunk's attention `mass`")
        return self.insert(state, keys, values, pos, state.score + mass.cache, mass.chunk)

    def observe(self, state, slot_probs):
        return accumulate(state, slot_probs)


def register_heavy_recent(name: str, cls: type[H2O], split: str) -> None:
    """``recent`` (a fraction of the budget, rounded half up) newest tokens + heavy hitters."""

    def make(budget, ctx, recent, normalize):
        newest = round_half_up(recent * budget)
        return cls(heavy=budget - newest, recent=newest, normalize=normalize)

    register(name, cls, split=split, make=make,
             args=dict(recent=Arg(0.5, "fraction of the budget for the newest tokens", low=0.0,
                                  high=1.0),
                       normalize=Arg(default_of(cls, "normalize"), "rank by mean attention")),
             args_of=lambda p: dict(recent=p.recent / p.capacity, normalize=p.normalize),
             least=lambda **_: (1, "at least one token"))


register_heavy_recent("h2o", H2O, "recent * budget newest tokens (rounded half up) + the rest "
                      "heavy hitters by accumulated attention")


@dataclasses.dataclass(frozen=True)
class ValueAware(H2O):
    """H2O ranked by accumulated attention x ``||v||``: a void sink (much attention, near-zero
    value, Guo et al. 2024) ranks low, a semantic heavy hitter keeps its place."""

    def rank(self, score, pos, values, seen):
        return super().rank(score, pos, values, seen) * jnp.linalg.norm(
            values.astype(jnp.float32), axis=-1)


register_heavy_recent("value", ValueAware, "as h2o, heavy hitters ranked by accumulated "
                      "attention x ||v||")
