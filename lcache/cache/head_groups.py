"""Head groups: the cache heads of a layer split into groups, each with its own policy and
capacity (DuoAttention's retrieval and streaming heads, RazorAttention's protected heads).

Each group's state holds only its heads at its own capacity: memory scales with what each
head keeps (``nbytes`` counts the real arrays). Its view is its policy's segments with
``heads`` set to the group's cache heads, so attention merges them like any segmented view.

Feedback (``mass.cache``, ``slot_probs``) comes in the view's flat frame ``[B, H, F]``,
``F`` the sum of the groups' view sizes in group order; each group reads its rows and its
``[off, off + F_g)`` range, which is its own policy's flat frame.

Every group must store keys rotated with their original positions (``rope_mode='original'``):
one rotated query serves all heads. A prefill chunk attends causally over everything it has
(the groups' policies decide what stays, as kvpress applies its masks after the prefill).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lcache.cache import validate as v
from lcache.cache.base import Policy, PrefillMass
from lcache.cache.view import CacheView


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class HeadGroupState:
    """One state per group (its policy's state over its heads)."""

    groups: tuple

    @property
    def seen(self) -> jax.Array:
        return self.groups[0].seen

    def dims(self) -> tuple[int, int, int, int | None, int | None]:
        """``(B, H, C, Dk, Dv)`` for validation: all heads, the largest group capacity."""
        parts = [v.state_dims("head groups", g) for g in self.groups]
        return (parts[0][0], sum(p[1] for p in parts), max(p[2] for p in parts), parts[0][3],
                parts[0][4])


def _check_groups(groups) -> int:
    """The number of heads ``groups`` partition; raises on anything else."""
    if not isinstance(groups, tuple) or not groups:
        raise ValueError(f"HeadGroups.groups must be a non-empty tuple of (heads, policy), got "
                         f"{groups!r:.200}")
    heads = []
    for item in groups:
        if (not isinstance(item, tuple) or len(item) != 2 or not isinstance(item[1], Policy)
                or not isinstance(item[0], tuple) or not item[0]
                or not all(isinstance(h, int) and h >= 0 for h in item[0])):
            raise ValueError(f"each head group is (heads: tuple of ints >= 0, policy), got "
                             f"{item!r:.200}")
        if item[1].rope_mode != "original":
            raise ValueError(f"{type(item[1]).__name__} renumbers positions inside its cache "
                             "(rope_mode='cache'); head groups share one rotated query, so "
                             "every group must store keys at their original positions")
        heads.extend(item[0])
    if sorted(heads) != list(range(len(heads))):
        raise ValueError(f"head groups must partition the heads 0..{len(heads) - 1} (each "
                         f"exactly once), got {sorted(heads)}")
    return len(heads)


@dataclasses.dataclass(frozen=True)
class HeadGroups(Policy):
    """``groups``: ``((heads, policy), ...)``, the ``heads`` (cache head indices) of each
    group partition ``0..H-1``."""

    groups: tuple

    state_type = HeadGroupState

    def __post_init__(self):
        _check_groups(self.groups)

    @property
    def num_heads(self) -> int:
        return sum(len(h) for h, _ in self.groups)

    @property
    def capacity(self) -> int:
        """The largest group's capacity (the longest reach of any head)."""
        return max(p.capacity for _, p in self.groups)

    @property
    def storage(self) -> Policy:
        """The first group's policy (its storage: ``registry`` names it)."""
        return self.groups[0][1]

    def map_groups(self, fn) -> HeadGroups:
        """The same head groups with each policy ``p`` replaced by ``fn(p)``."""
        return HeadGroups(tuple((h, fn(p)) for h, p in self.groups))

    def cache_heads(self, num_kv_heads: int, num_q_heads: int) -> int:
        del num_q_heads
        if num_kv_heads != self.num_heads:
            raise ValueError(f"head groups cover {self.num_heads} heads, the model has "
                             f"{num_kv_heads} KV heads (a head pattern of another model?)")
        return num_kv_heads

    def init(self, batch, num_heads, key_dim, dtype=jnp.float32, value_dim=None):
        self.cache_heads(num_heads, num_heads)
        return HeadGroupState(tuple(p.init(batch, len(h), key_dim, dtype, value_dim)
                                    for h, p in self.groups))

    def _sizes(self, state) -> list[int]:
        return [p.entry_sizes(s)[-1] for (_, p), s in zip(self.groups, state.groups,
                                                           strict=True)]

    def entry_sizes(self, state) -> tuple[int, ...]:
        return (sum(self._sizes(state)),)

    def _split(self, state, x_BHF):
        """Flat-frame feedback -> each group's own flat frame ``[B, H_g, F_g]``."""
        out, start = [], 0
        for (heads, _), f in zip(self.groups, self._sizes(state), strict=True):
            out.append(jnp.take(x_BHF[..., start:start + f], jnp.asarray(heads), axis=1))
            start += f
        return out

    @staticmethod
    def _rows(x_BH, heads):
        return jnp.take(x_BH, jnp.asarray(heads), axis=1)

    def prefill(self, state, keys, values, pos, *, queries=None, mass=None):
        n = self.num_heads
        q_groups = None if queries is None else queries.reshape(
            queries.shape[0], n, -1, *queries.shape[2:])
        cache = [None] * len(self.groups) if mass is None else self._split(state, mass.cache)
        new = []
        for (heads, p), s, m in zip(self.groups, state.groups, cache, strict=True):
            q = None if q_groups is None else self._rows(q_groups, heads).reshape(
                queries.shape[0], -1, *queries.shape[2:])
            gm = None if mass is None else PrefillMass(m, self._rows(mass.chunk, heads))
            new.append(p.prefill(s, self._rows(keys, heads), self._rows(values, heads), pos,
                                 queries=q, mass=gm))
        return HeadGroupState(tuple(new))

    def append(self, state, key, value, pos):
        return HeadGroupState(tuple(
            p.append(s, self._rows(key, h), self._rows(value, h), pos)
            for (h, p), s in zip(self.groups, state.groups, strict=True)))

    def observe(self, state, slot_probs):
        return HeadGroupState(tuple(
            p.observe(s, x) for (_, p), s, x in zip(self.groups, state.groups,
                                                    self._split(state, slot_probs), strict=True)))

    def check_stream(self, where, state, pos_BT):
        for (_, p), s in zip(self.groups, state.groups, strict=True):
            p.check_stream(where, s, pos_BT)

    def view(self, state) -> CacheView:
        segments = []
        for (heads, p), s in zip(self.groups, state.groups, strict=True):
            sub = p.view(s)
            for seg in sub.segments:
                owner = None if seg.owner is None else jnp.where(
                    seg.owner >= 0, jnp.take(jnp.asarray(heads), jnp.maximum(seg.owner, 0)), -1)
                mapped = heads if seg.heads is None and seg.owner is None else (
                    None if seg.heads is None else tuple(heads[j] for j in seg.heads))
                segments.append(dataclasses.replace(seg, heads=mapped, owner=owner))
        return CacheView(tuple(segments), jnp.zeros_like(state.seen), self.num_heads)
