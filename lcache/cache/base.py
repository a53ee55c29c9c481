"""The policy interface: frozen, hashable hyper-parameters + pure functions over ``KVState``.

A policy is a static argument of ``jit``; its methods never grow arrays (capacity is fixed at
``init``). The model calls, per layer:

* ``prefill(state, keys, values, pos, queries=..., mass=...)`` after attending a chunk of
  ``T`` tokens over ``view(state)`` plus the chunk itself (attend, then compress);
* ``append(state, key, value, pos)`` then ``view(state)`` then ``observe(state, slot_probs)`` at
  each decode step (insert, then attend).

Shapes: ``keys [B, H, T, Dk]`` with ``H = cache_heads(...)``, ``pos [B, T]`` int32 original
positions (``-1`` marks padding, never stored), ``queries [B, Hq, T, Dk]`` rotated queries of the
chunk, ``mass`` the attention mass the chunk's queries put on each cache slot and each chunk
token (``PrefillMass``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from lcache.cache.registry import register
from lcache.cache.state import EMPTY, CacheView, KVState, empty_state


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PrefillMass:
    """Attention mass received during a prefill chunk, summed over queries and the query group.

    ``cache [B, H, C]`` for the slots that were in the cache, ``chunk [B, H, T]`` for the chunk's
    own tokens. float32.
    """

    cache: jax.Array
    chunk: jax.Array


@dataclasses.dataclass(frozen=True)
class Policy:
    """Base class. Subclasses are frozen dataclasses of hyper-parameters."""

    # 'original': keys are stored rotated with their original positions.
    # 'cache': keys are stored before RoPE and rotated at attention time with in-cache positions.
    rope_mode: ClassVar[str] = "original"

    @property
    def capacity(self) -> int:
        raise NotImplementedError

    def cache_heads(self, num_kv_heads: int, num_q_heads: int) -> int:
        """Heads of the stored cache (query heads for per-query-head selection)."""
        del num_q_heads
        return num_kv_heads

    def init(self, batch: int, num_heads: int, key_dim: int, dtype=jnp.float32,
             value_dim: int | None = None) -> KVState:
        return empty_state(batch, num_heads, self.capacity, key_dim, value_dim or key_dim, dtype)

    def prefill(self, state: KVState, keys, values, pos, *, queries=None,
                mass: PrefillMass | None = None) -> KVState:
        raise NotImplementedError

    def append(self, state: KVState, key, value, pos) -> KVState:
        """Insert one token per row: ``key [B, H, Dk]``, ``value [B, H, Dv]``, ``pos [B]``."""
        return self.prefill(state, key[:, :, None], value[:, :, None], pos[:, None])

    def observe(self, state: KVState, slot_probs) -> KVState:
        """Attention feedback of the current decode query: ``slot_probs [B, H, C]``."""
        del slot_probs
        return state

    def view(self, state: KVState) -> CacheView:
        return CacheView(
            keys=state.keys, values=state.values, valid=state.valid, key_pos=state.pos,
            rope_pos=jnp.maximum(state.pos, 0),
            query_offset=jnp.zeros_like(state.seen),
            keys_rotated=self.rope_mode == "original")

    def visible(self, q_pos, k_pos):
        """Which keys a query may attend inside a prefill chunk (beyond validity). Causal here;
        windowed policies also drop keys the streaming cache would no longer hold."""
        return k_pos <= q_pos

    def nbytes(self, batch: int, num_heads: int, key_dim: int, value_dim: int | None = None,
               dtype=jnp.bfloat16) -> int:
        """Bytes of one layer's state without allocating it."""
        shapes = jax.eval_shape(lambda: self.init(batch, num_heads, key_dim, dtype, value_dim))
        return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(shapes))


def advance_seen(seen, pos):
    """``seen [B]`` after consuming tokens at ``pos [B, T]`` (padding ``-1`` ignored)."""
    return jnp.maximum(seen, jnp.max(pos, axis=-1) + 1)


def write_slots(state: KVState, slot, keys, values, pos, score=None) -> KVState:
    """Scatter a chunk into chosen slots.

    ``slot [B, H, T]`` int32 target slot per token; out-of-range slots (e.g. ``capacity`` or
    ``-1``) are dropped, which is how padding and pre-evicted tokens are skipped. The caller
    guarantees that kept slots are unique within a row. ``keys [B, H, T, Dk]``,
    ``pos [B, T]``, ``score [B, H, T]`` (default 0).
    """
    cap = state.capacity
    slot = jnp.where((slot >= 0) & (slot < cap), slot, cap)  # `cap` is dropped below
    pos_bht = jnp.broadcast_to(pos[:, None, :], slot.shape)
    if score is None:
        score = jnp.zeros(slot.shape, jnp.float32)

    def scatter_row(dst, idx, src):  # dst [C, ...], idx [T], src [T, ...]
        return dst.at[idx].set(src.astype(dst.dtype), mode="drop")

    scatter = jax.vmap(jax.vmap(scatter_row))  # over B, H
    return KVState(
        keys=scatter(state.keys, slot, keys),
        values=scatter(state.values, slot, values),
        pos=scatter(state.pos, slot, pos_bht),
        score=scatter(state.score, slot, score),
        seen=advance_seen(state.seen, pos),
    )


@dataclasses.dataclass(frozen=True)
class Dense(Policy):
    """The full cache: token at position ``p`` lives in slot ``p``; nothing is evicted.

    ``max_len`` is the capacity; callers (``generate``) check that prompts plus new tokens fit
    before any work, since inside ``jit`` a token past the capacity cannot raise.
    """

    max_len: int

    def __post_init__(self):
        if self.max_len < 1:
            raise ValueError(f"Dense.max_len must be >= 1, got {self.max_len}")

    @property
    def capacity(self) -> int:
        return self.max_len

    def prefill(self, state, keys, values, pos, *, queries=None, mass=None):
        del queries, mass
        slot = jnp.broadcast_to(pos[:, None, :], keys.shape[:3])
        return write_slots(state, jnp.where(slot == EMPTY, state.capacity, slot), keys, values,
                           pos)


register("dense", Dense,
         split="ignores the budget: prompt_len + max_new + num_model_sinks slots, nothing evicted",
         make=lambda budget, ctx: Dense(ctx.prompt_len + ctx.max_new + ctx.num_model_sinks),
         args_of=lambda p: {})
