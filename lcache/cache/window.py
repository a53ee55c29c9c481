"""Sliding window and StreamingLLM: ``num_sinks`` pinned tokens plus a ring of ``window`` recent.

Slot layout (no scores, no search): the token at original position ``p < S`` lives in sink slot
``p``; a later token lives in ring slot ``S + (p - S) mod W``. Positions of a row are assumed
consecutive from 0 (``-1`` marks padding), so the sinks are the stream's first ``S`` tokens and
the ring always holds the last ``W`` positions. Capacity is ``S + W``; at decode the current token
is one of the ``W`` (insert-then-attend), so a query at ``p`` sees the sinks and ``(p - W, p]``.
A chunk longer than the window only stores its last ``W`` tokens (no two writes hit one slot),
and ``visible`` gives its queries exactly what token-by-token streaming would keep.

Positions (``positions``):

* ``'cache'`` (StreamingLLM's pos-shift, the paper's default): keys are stored before RoPE and
  rotated with their rank in the cache: sink ``j`` -> ``j``, ring token ``q`` ->
  ``S + q - oldest`` with ``oldest = max(S, seen - W)`` the oldest ring position. A query at
  ``p`` is rotated with ``p - query_offset``, ``query_offset = oldest - S``, so ring distances
  stay ``p - q`` and only the sinks move closer. A prefill chunk is rotated with the offset of
  the cache it attends (attend-then-insert), so chunked prefill matches streaming exactly without
  sinks and up to the sinks' rotation with them.
* ``'original'``: keys rotated once at their original positions (kvpress's StreamingLLMPress).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from lcache.cache import validate as v
from lcache.cache.base import Policy, write_slots
from lcache.cache.registry import Arg, default_of, register
from lcache.cache.state import EMPTY
from lcache.cache.view import CacheView

POSITIONS = ("cache", "original")


@dataclasses.dataclass(frozen=True)
class _SinkRing(Policy):
    """Shared ring logic; subclasses provide ``num_sinks``, ``window`` and ``positions``."""

    def _check(self):
        v.check_fields(self, window=v.integer(1), num_sinks=v.integer(0),
                       positions=v.one_of(POSITIONS))

    def check_stream(self, where, state, pos_BT):
        """A row's stream must start at position 0, or its sinks ``[0, S)`` never fill."""
        super().check_stream(where, state, pos_BT)
        p, seen = v.concrete(pos_BT), v.concrete(state.seen)
        if not self.num_sinks or p is None or seen is None:
            return
        for row in np.flatnonzero((seen == 0) & (p >= 0).any(axis=-1)):
            first = int(p[row][p[row] >= 0].min())
            if first:
                raise ValueError(f"{where}: row {row} starts its stream at position {first}; "
                                 f"the {self.num_sinks} sinks are positions 0..{self.num_sinks - 1}"
                                 ", so they would never fill. Positions count from the stream's "
                                 "first token (or use num_sinks=0)")

    @property
    def capacity(self) -> int:
        return self.num_sinks + self.window

    @property
    def rope_mode(self) -> str:
        return self.positions

    def slots(self, pos_BT):
        """``[B, T]`` slot of each token, ``-1`` for padding and tokens the chunk itself pushes
        out of the ring (older than its last ``window`` positions)."""
        s, w = self.num_sinks, self.window
        newest = jnp.max(pos_BT, axis=-1, keepdims=True)
        ring = s + jnp.mod(pos_BT - s, w)
        slot = jnp.where(pos_BT < s, pos_BT, ring)
        dropped = (pos_BT < 0) | ((pos_BT >= s) & (pos_BT <= newest - w))
        return jnp.where(dropped, EMPTY, slot)

    def prefill(self, state, keys, values, pos, *, queries=None, mass=None):
        del queries, mass
        slot = jnp.broadcast_to(self.slots(pos)[:, None], keys.shape[:3])
        return write_slots(state, slot, keys, values, pos)

    def query_offset(self, seen_B):
        """``[B]`` offset of the in-cache ranks (``'cache'`` positions)."""
        return jnp.maximum(seen_B - self.window - self.num_sinks, 0)

    def view(self, state) -> CacheView:
        if self.positions == "original":
            return super().view(state)
        offset = self.query_offset(state.seen)
        rank = jnp.where(state.pos < self.num_sinks, state.pos, state.pos - offset[:, None, None])
        return CacheView.single(keys=state.keys, values=state.values, valid=state.valid,
                                key_pos=state.pos, rope_pos=jnp.maximum(rank, 0),
                                query_offset=offset, keys_rotated=False)

    def visible(self, q_pos, k_pos):
        return (k_pos <= q_pos) & ((k_pos < self.num_sinks) | (k_pos > q_pos - self.window))


@dataclasses.dataclass(frozen=True)
class SlidingWindow(_SinkRing):
    """The last ``window`` tokens and nothing else: the baseline that collapses once the first
    tokens (the attention sinks) leave the window. ``positions='cache'`` by default, like the
    window baseline of the StreamingLLM paper (same pos-shift code)."""

    window: int
    positions: str = "cache"

    def __post_init__(self):
        self._check()

    @property
    def num_sinks(self) -> int:
        return 0


POSITIONS_ARG = Arg(default_of(SlidingWindow, "positions"), "key positions: 'cache' rotates with "
                    "in-cache ranks (pos-shift), 'original' keeps them", choices=POSITIONS)
register("window", SlidingWindow, split="the budget newest tokens",
         args=dict(positions=POSITIONS_ARG),
         make=lambda budget, ctx, positions: SlidingWindow(budget, positions),
         args_of=lambda p: dict(positions=p.positions),
         least=lambda **_: (1, "a window of at least one token"))


@dataclasses.dataclass(frozen=True)
class StreamingLLM(_SinkRing):
    """Attention sinks (Xiao et al., 2024): ``num_sinks`` first tokens plus ``window`` recent.

    Reference: mit-han-lab/streaming-llm ``StartRecentKVCache`` (keep ``[0, S)`` and the last
    ``W``) with ``pos_shift`` positions (``positions='cache'``).
    """

    window: int
    num_sinks: int = 4
    positions: str = "cache"

    def __post_init__(self):
        self._check()

    @classmethod
    def from_budget(cls, budget: int, num_sinks: int = 4, positions: str = "cache"):
        """``budget`` cached tokens in all (kvpress/KVCache-Factory convention): the window gets
        ``budget - num_sinks``.

        ``budget == num_sinks`` is refused: kvpress then keeps the sinks only (its decode tokens
        live outside the budget), but here the token being decoded needs a ring slot (insert,
        then attend), so the window must hold at least one token.
        """
        if budget <= num_sinks:
            raise ValueError(f"StreamingLLM budget={budget} must exceed num_sinks={num_sinks}: "
                             "the ring needs at least one slot for the token being decoded "
                             f"(use budget={num_sinks + 1} for the sinks plus that token)")
        return cls(window=budget - num_sinks, num_sinks=num_sinks, positions=positions)


register("streaming_llm", StreamingLLM,
         split="sinks first tokens + a ring of the budget - sinks newest",
         args=dict(sinks=Arg(default_of(StreamingLLM, "num_sinks"), "first tokens pinned", low=0),
                   positions=POSITIONS_ARG),
         make=lambda budget, ctx, sinks, positions: StreamingLLM(budget - sinks, sinks, positions),
         args_of=lambda p: dict(sinks=p.num_sinks, positions=p.positions),
         least=lambda sinks, **_: (sinks + 1, f"{sinks} sinks + a window of at least one token"))
