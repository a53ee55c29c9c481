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
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp

from lcache.cache import validate as v
from lcache.cache.registry import register
from lcache.cache.state import EMPTY, KVState, empty_state
from lcache.cache.view import CacheView


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PrefillMass:
    """Attention mass received during a prefill chunk, summed over queries and the query group.

    ``cache [B, H, C]`` for the slots that were in the cache, ``chunk [B, H, T]`` for the chunk's
    own tokens. float32. ``votes [B, Hq, C + T]`` (optional, for a policy with an
    ``observation_window`` ``w``): the probabilities the cache slots then the chunk tokens get
    from the chunk's ``w`` newest real queries, summed over those queries, per query head
    (``voting.observed_sum``; the model's prefill kernel computes them on the way).
    """

    cache: jax.Array
    chunk: jax.Array
    votes: jax.Array | None = None


def _checked_prefill(fn):
    @functools.wraps(fn)
    def prefill(self, state, keys, values, pos, **kw):
        where = f"{type(self).__name__}.prefill"
        v.check_state(where, state, self.state_type)
        v.check_chunk(where, state, keys, values, pos, kw.get("queries"), kw.get("mass"),
                      self.entry_sizes(state))
        self.check_stream(where, state, pos)
        return fn(self, state, keys, values, pos, **kw)
    return prefill


def _checked_append(fn):
    @functools.wraps(fn)
    def append(self, state, key, value, pos):
        where = f"{type(self).__name__}.append"
        v.check_state(where, state, self.state_type)
        v.check_token(where, state, key, value, pos)
        self.check_stream(where, state, pos[:, None])
        return fn(self, state, key, value, pos)
    return append


def _checked_observe(fn):
    @functools.wraps(fn)
    def observe(self, state, slot_probs):
        where = f"{type(self).__name__}.observe"
        v.check_state(where, state, self.state_type)
        v.check_slot_probs(where, state, slot_probs, self.entry_sizes(state))
        return fn(self, state, slot_probs)
    return observe


_CHECKED = dict(prefill=_checked_prefill, append=_checked_append, observe=_checked_observe)


@dataclasses.dataclass(frozen=True)
class Policy:
    """Base class. Subclasses are frozen dataclasses of hyper-parameters.

    Every ``prefill`` / ``append`` / ``observe`` a subclass defines validates its arguments
    first: shapes and dtypes against the state (``validate.check_chunk`` and co., Python checks
    at trace time) and, where the positions are concrete (an eager call), ``check_stream``.
    """

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        for name, wrap in _CHECKED.items():
            if name in cls.__dict__:
                setattr(cls, name, wrap(cls.__dict__[name]))

    # 'original': keys are stored rotated with their original positions.
    # 'cache': keys are stored before RoPE and rotated at attention time with in-cache positions.
    rope_mode: ClassVar[str] = "original"
    # the type ``init`` returns, checked by every method
    state_type: ClassVar[type] = KVState

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

    @_checked_append
    def append(self, state: KVState, key, value, pos) -> KVState:
        """Insert one token per row: ``key [B, H, Dk]``, ``value [B, H, Dv]``, ``pos [B]``."""
        return self.prefill(state, key[:, :, None], value[:, :, None], pos[:, None])

    @_checked_observe
    def observe(self, state: KVState, slot_probs) -> KVState:
        """Attention feedback of the current decode query: ``slot_probs [B, H, C]``."""
        del slot_probs
        return state

    def check_stream(self, where: str, state, pos_BT) -> None:
        """Checks of concrete positions ``pos [B, T]`` (skipped under ``jit``, where nothing can
        raise): every policy bounds them (``validate.MAX_POSITION``); subclasses add what their
        slot layout assumes."""
        del state
        v.check_positions(where, pos_BT)

    def entry_sizes(self, state) -> tuple[int, ...]:
        """Last-axis sizes ``prefill``'s ``mass.cache`` and ``observe``'s ``slot_probs`` may
        have: the view's flat frame ``F`` (``view.CacheView``), which is ``C`` for a policy
        whose view is its one ``KVState``."""
        return (state.pos.shape[2],)

    def view(self, state: KVState) -> CacheView:
        return CacheView.single(
            keys=state.keys, values=state.values, valid=state.valid, key_pos=state.pos,
            rope_pos=jnp.maximum(state.pos, 0),
            query_offset=jnp.zeros_like(state.seen),
            keys_rotated=self.rope_mode == "original")

    def visible(self, q_pos, k_pos):
        """Which keys a query may attend inside a prefill chunk (beyond validity). Causal here;
        windowed policies also drop keys the streaming cache would no longer hold."""
        return k_pos <= q_pos

    @property
    def causal_prefill(self) -> bool:
        """Whether ``visible`` is plain causality, so that a fresh prefill chunk may attend
        through a causal kernel (``lcache.attention.prefill``). Wrappers forward it with
        ``visible``."""
        return type(self).visible is Policy.visible

    @property
    def reads_feedback(self) -> bool:
        """Whether ``observe`` reads the decode step's ``slot_probs`` (the model asks for none,
        and no kernel computes them, when it does not). Wrappers that forward ``observe``
        count as readers."""
        return type(self).observe is not Policy.observe

    @property
    def observation_window(self) -> int | None:
        """``w`` if ``prefill`` reads the attention of the chunk's ``w`` newest queries from
        ``PrefillMass.votes`` (the model's prefill kernel computes them on the way), None if
        it reads no votes."""
        return None

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
    ``pos [B, T]``, ``score [B, H, T]`` (None: scores untouched, for policies that keep none:
    one scatter less per step).
    """
    cap = state.capacity
    slot = jnp.where((slot >= 0) & (slot < cap), slot, cap)  # `cap` is dropped below
    pos_bht = jnp.broadcast_to(pos[:, None, :], slot.shape)

    def scatter_row(dst, idx, src):  # dst [C, ...], idx [T], src [T, ...]
        return dst.at[idx].set(src.astype(dst.dtype), mode="drop")

    scatter = jax.vmap(jax.vmap(scatter_row))  # over B, H
    return KVState(
        keys=scatter(state.keys, slot, keys),
        values=scatter(state.values, slot, values),
        pos=scatter(state.pos, slot, pos_bht),
        score=state.score if score is None else scatter(state.score, slot, score),
        seen=advance_seen(state.seen, pos),
    )


OVERFLOWS = ("error", "drop")


@dataclasses.dataclass(frozen=True)
class Dense(Policy):
    """The full cache: token at position ``p`` lives in slot ``p``; nothing is evicted.

    ``max_len`` is the capacity. A position ``p >= max_len`` has no slot: with
    ``overflow='error'`` (default) an eager call raises, and ``generate`` checks that prompts plus
    new tokens fit before any work; inside ``jit`` a value cannot raise, so such a token is not
    stored (the caller checks the lengths on the host). ``overflow='drop'`` asks for the drop.
    """

    max_len: int
    overflow: str = "error"

    def __post_init__(self):
        v.check_fields(self, max_len=v.integer(1), overflow=v.one_of(OVERFLOWS))

    @property
    def capacity(self) -> int:
        return self.max_len

    def check_stream(self, where, state, pos_BT):
        super().check_stream(where, state, pos_BT)
        p = v.concrete(pos_BT)
        if self.overflow == "error" and p is not None and p.size and p.max() >= self.max_len:
            raise ValueError(f"{where}: position {int(p.max())} is past Dense(max_len="
                             f"{self.max_len}) (position p lives in slot p); use a larger "
                             "max_len, or Dense(..., overflow='drop') to drop such tokens")

    def prefill(self, state, keys, values, pos, *, queries=None, mass=None):
        del queries, mass
        slot = jnp.broadcast_to(pos[:, None, :], keys.shape[:3])
        return write_slots(state, jnp.where(slot == EMPTY, state.capacity, slot), keys, values,
                           pos)


register("dense", Dense,
         split="ignores the budget: prompt_len + max_new + num_model_sinks slots, nothing evicted",
         make=lambda budget, ctx: Dense(ctx.prompt_len + ctx.max_new + ctx.num_model_sinks),
         args_of=lambda p: {})
