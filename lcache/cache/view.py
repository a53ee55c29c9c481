"""The segmented cache view: the one contract between a cache policy and attention.

A view is a tuple of ``Segment``s, each a block of cache entries with its own keys, values,
positions and validity: a policy's slots, full-precision sinks, a residual ring, KIVI codes,
the heads of a head group at their own capacity, or a pool of entries shared by the heads of a
layer (AdaKV's ragged per-head budgets). Attention merges the segments by log-sum-exp and never
asks what storage it reads (``lcache.attention.segmented``).

Frames. ``H`` is the view's number of cache heads. A segment's own head axis ``S`` maps onto
them in one of three ways:

* ``heads=None`` and ``S == H``: every head (a plain cache);
* ``heads=(h_0, ..., h_{S-1})``: a head group, segment head ``j`` is cache head ``h_j``;
* ``heads=None``, ``S == 1`` and ``owner [B, 1, C]`` int32: a pool; entry ``c`` belongs to
  cache head ``owner[..., c]`` (``-1``: nobody).

Per-entry feedback (attention mass at prefill, ``slot_probs`` at decode) comes back in the
*flat* frame: ``[B, H, F]`` with ``F = sum_s C_s``, segment ``s`` at ``[off_s, off_s + C_s)``,
all ``H`` heads (0 where a head does not see an entry). A single plain segment's flat frame is
its own ``[B, H, C]``: every policy that keeps one ``KVState`` is unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Segment:
    """One block of cache entries (shapes above; ``S`` segment heads, ``C`` entries).

    ``codes`` (optional): the KIVI ``QuantCodes`` the keys and values were dequantized from; a
    kernel that reads codes never touches ``keys``/``values`` (dead code under ``jit``).
    ``bias`` (optional): added to each entry's logit; an entry standing for ``n`` tokens
    (RazorAttention's compensation token) has ``log n``.
    """

    keys: jax.Array  # [B, S, C, Dk]
    values: jax.Array  # [B, S, C, Dv]
    valid: jax.Array  # [B, S, C] bool
    key_pos: jax.Array  # [B, S, C] int32 original positions (causal masks, windows)
    rope_pos: jax.Array  # [B, S, C] int32 positions keys are rotated with (keys_rotated=False)
    owner: jax.Array | None = None  # [B, 1, C] int32 cache head of each entry of a pool
    codes: Any = None  # pallas_kernels.quant_decode.QuantCodes, or None
    bias: jax.Array | None = None  # [B, S, C] f32 added to logits (log multiplicity)
    heads: tuple[int, ...] | None = dataclasses.field(default=None, metadata=dict(static=True))
    keys_rotated: bool = dataclasses.field(default=True, metadata=dict(static=True))

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    @property
    def plain(self) -> bool:
        """Every head, no pool, no codes: a kernel reads it as one head-major cache."""
        return (self.heads is None and self.owner is None and self.codes is None
                and self.bias is None)

    def head_index(self, num_heads: int):
        """``(index [H] int32, covered [H] bool)``: the segment head each cache head reads."""
        if self.heads is not None:
            index = [-1] * num_heads
            for j, h in enumerate(self.heads):
                index[h] = j
            index = jnp.asarray(index, jnp.int32)
            return jnp.maximum(index, 0), index >= 0
        if self.keys.shape[1] == num_heads:
            return jnp.arange(num_heads, dtype=jnp.int32), jnp.ones((num_heads,), bool)
        return jnp.zeros((num_heads,), jnp.int32), jnp.ones((num_heads,), bool)

    def expand(self, num_heads: int) -> Segment:
        """The same entries as a plain segment over all ``H`` heads (``[B, H, C, .]``): head
        groups gathered, pools broadcast; entries a head does not own are invalid."""
        if self.heads is None and self.owner is None and self.keys.shape[1] == num_heads:
            return dataclasses.replace(self, codes=None)
        index, covered = self.head_index(num_heads)
        keys, values, key_pos, rope_pos = (jnp.take(x, index, axis=1) for x in (
            self.keys, self.values, self.key_pos, self.rope_pos))
        valid = jnp.take(self.valid, index, axis=1) & covered[None, :, None]
        if self.owner is not None:
            valid &= self.owner == jnp.arange(num_heads, dtype=jnp.int32)[None, :, None]
        bias = None if self.bias is None else jnp.take(self.bias, index, axis=1)
        return Segment(keys, values, valid, key_pos, rope_pos, bias=bias,
                       keys_rotated=self.keys_rotated)

    def gather_heads(self, x_BHC, num_heads: int):
        """Flat-frame ``[B, H, C]`` feedback -> the segment's own frame ``[B, S, C]`` (a pool
        sums its owners' rows: each entry is seen by one head)."""
        if self.heads is not None:
            return jnp.take(x_BHC, jnp.asarray(self.heads, jnp.int32), axis=1)
        if self.keys.shape[1] == num_heads:
            return x_BHC
        return x_BHC.sum(axis=1, keepdims=True)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class CacheView:
    """What attention reads from a cache: ``segments`` over ``num_heads`` cache heads.

    A query at original position ``p`` is rotated with ``p - query_offset`` (StreamingLLM
    renumbers inside the cache); keys of a segment with ``keys_rotated=False`` are rotated with
    its ``rope_pos`` at attention time.
    """

    segments: tuple[Segment, ...]
    query_offset: jax.Array  # [B] int32
    num_heads: int = dataclasses.field(metadata=dict(static=True))

    @classmethod
    def single(cls, keys, values, valid, key_pos, rope_pos, query_offset,
               keys_rotated=True) -> CacheView:
        """A one-segment view of a head-major cache ``keys [B, H, C, Dk]``."""
        return cls((Segment(keys, values, valid, key_pos, rope_pos,
                            keys_rotated=keys_rotated),), query_offset, keys.shape[1])

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(s.capacity for s in self.segments)

    @property
    def size(self) -> int:
        """``F``: entries of the flat frame."""
        return sum(self.sizes)

    @property
    def keys_rotated(self) -> bool:
        rotated = {s.keys_rotated for s in self.segments}
        if len(rotated) != 1:
            raise ValueError("the segments of this view disagree on keys_rotated")
        return rotated.pop()

    def flat(self) -> Segment:
        """All segments as one plain segment ``[B, H, F, .]`` in the flat frame (a copy unless
        the view is one plain segment): prefill attention and the concatenating fallbacks."""
        if len(self.segments) == 1:
            return self.segments[0].expand(self.num_heads)
        parts = [s.expand(self.num_heads) for s in self.segments]
        cat = [jnp.concatenate([getattr(p, f) for p in parts], axis=2)
               for f in ("keys", "values", "valid", "key_pos", "rope_pos")]
        bias = None if all(p.bias is None for p in parts) else jnp.concatenate(
            [jnp.zeros(p.valid.shape, jnp.float32) if p.bias is None else p.bias
             for p in parts], axis=2)
        return Segment(*cat, bias=bias, keys_rotated=self.keys_rotated)

    def split(self, x_BHF) -> tuple:
        """Flat-frame ``[B, H, F]`` -> one ``[B, H, C_s]`` per segment."""
        bounds = [0]
        for c in self.sizes:
            bounds.append(bounds[-1] + c)
        return tuple(x_BHF[..., a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True))

    def restrict(self, keep: Callable) -> CacheView:
        """Each segment's ``valid &= keep(key_pos)`` (a model's sliding window, a test's mask)."""
        return dataclasses.replace(self, segments=tuple(
            dataclasses.replace(s, valid=s.valid & keep(s.key_pos)) for s in self.segments))

    # the one plain segment of a single-segment view, as fields (MLA, tests)
    def _only(self) -> Segment:
        if len(self.segments) != 1 or not self.segments[0].plain:
            raise ValueError(f"a view of {len(self.segments)} segments has no single keys "
                             "array; use view.flat() or view.segments")
        return self.segments[0]

    keys = property(lambda self: self._only().keys)
    values = property(lambda self: self._only().values)
    valid = property(lambda self: self._only().valid)
    key_pos = property(lambda self: self._only().key_pos)
    rope_pos = property(lambda self: self._only().rope_pos)
