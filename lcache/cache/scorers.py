"""Streaming scorers that evict at every step: TOVA, key norm and random.

Each keeps ``budget`` tokens per head (capacity ``budget``), the ``window`` newest always
included; a prefill chunk re-selects over cache plus chunk, a decode token replaces the
lowest-priority unprotected slot once the cache is full.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from lcache.cache import validate as v
from lcache.cache.registry import Arg, default_of, register
from lcache.cache.scored import ScoredPolicy
from lcache.cache.voting import candidates, observer_probs, observers


@dataclasses.dataclass(frozen=True)
class _Budgeted(ScoredPolicy):
    """``budget`` tokens per head with the ``window`` newest protected."""

    def __post_init__(self):
        v.check_fields(self, budget=v.integer(1), window=v.integer())
        name = type(self).__name__
        if not 0 <= self.window <= self.budget:
            raise ValueError(f"{name}.window must be in [0, budget={self.budget}], "
                             f"got {self.window}")

    @property
    def capacity(self) -> int:
        return self.budget

    def recent_protected(self) -> int:
        return self.window


def register_budgeted(name: str, cls: type[_Budgeted], split: str, **extra: Arg) -> None:
    """``budget`` tokens, ``window`` newest protected, plus ``extra`` class fields."""
    register(name, cls, split=split,
             args=dict(window=Arg(default_of(cls, "window"), "newest tokens always kept", low=0),
                       **extra),
             make=lambda budget, ctx, **a: cls(budget, **a),
             args_of=lambda p: {k: getattr(p, k) for k in ("window", *extra)},
             least=lambda window, **_: (max(1, window), f"at least one token and its window "
                                                         f"of {window}"))


@dataclasses.dataclass(frozen=True)
class TOVA(_Budgeted):
    """Token Omission Via Attention (Oren et al., 2024): the current query's attention,
    averaged over all heads of the layer, so every head keeps the same tokens (kvpress
    ``TOVAPress``; its prefill keeps the last token: ``window=1``).

    At decode, ``observe`` stores the step's attention and the next ``append`` drops the lowest:
    with insert-then-attend, capacity ``budget`` equals the paper's cache of ``budget - 1``
    plus the token being decoded. Heads share one slot layout (same priorities, same
    decisions), so the head average is taken per slot.
    """

    budget: int
    window: int = 1

    def prefill(self, state, keys, values, pos, *, queries=None, mass=None):
        del mass
        if queries is None:
            raise ValueError("TOVA.prefill needs the chunk's rotated `queries`")
        q, q_pos = observers(queries, pos, 1)
        probs = observer_probs(q, q_pos, *candidates(state, keys, pos))
        score = jnp.broadcast_to(probs.mean(axis=(1, 2, 3))[:, None], probs.shape[:2]
                                 + probs.shape[-1:])
        c = state.capacity
        return self.insert(state, keys, values, pos, score[..., :c], score[..., c:])

    def observe(self, state, slot_probs):
        mean = jnp.mean(slot_probs, axis=1, keepdims=True)
        return dataclasses.replace(state, score=jnp.broadcast_to(mean, state.score.shape))


register_budgeted("tova", TOVA, "budget tokens by the current query's attention (head mean), "
                  "the window newest always kept")


def key_norm_score(keys):
    """``-||k||`` in float32 (kvpress ``KnormPress``; RoPE keeps the norm)."""
    return -jnp.linalg.norm(keys.astype(jnp.float32), axis=-1)


@dataclasses.dataclass(frozen=True)
class KeyNorm(_Budgeted):
    """Keep the keys of smallest L2 norm (Devoto et al., 2024): query-agnostic."""

    budget: int
    window: int = 0

    def prefill(self, state, keys, values, pos, *, queries=None, mass=None):
        del queries, mass
        return self.insert(state, keys, values, pos, state.score, key_norm_score(keys))

    def token_score(self, state, key, value, pos):
        return key_norm_score(key)


register_budgeted("knorm", KeyNorm, "budget tokens of smallest key norm, the window newest "
                  "always kept")


def hash_uniform(seed: int, pos, head):
    """Uniform [0, 1) float32 from (seed, position, head): a stateless counter-based hash
    (murmur3 finaliser), so a token's score never depends on when it is scored."""
    x = (pos.astype(jnp.uint32) * jnp.uint32(0x9E3779B1)) ^ (
        head.astype(jnp.uint32) * jnp.uint32(0x85EBCA77)) ^ jnp.uint32(seed * 0xC2B2AE3D % 2**32)
    for shift, mult in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
        x = (x ^ (x >> shift)) * jnp.uint32(mult)
    x = x ^ (x >> 16)
    return (x >> 8).astype(jnp.float32) / 2.0**24


@dataclasses.dataclass(frozen=True)
class Random(_Budgeted):
    """Uniformly random eviction, seeded: the baseline every scorer must beat."""

    budget: int
    window: int = 0
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        v.check_fields(self, seed=v.integer())

    def _score(self, pos_BHN):
        head = jnp.arange(pos_BHN.shape[1])[None, :, None]
        return hash_uniform(self.seed, pos_BHN, head)

    def prefill(self, state, keys, values, pos, *, queries=None, mass=None):
        del queries, mass
        return self.insert(state, keys, values, pos, state.score,
                           self._score(jnp.broadcast_to(pos[:, None], keys.shape[:3])))

    def token_score(self, state, key, value, pos):
        return self._score(jnp.broadcast_to(pos[:, None, None], key.shape[:2] + (1,)))[..., 0]


register_budgeted("random", Random, "budget tokens kept uniformly at random (seeded), the window "
                  "newest always kept", seed=Arg(default_of(Random, "seed"), "hash seed", low=0))
