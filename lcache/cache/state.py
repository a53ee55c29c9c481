"""Cache state and the view attention reads: plain pytrees, no hidden state.

Layout is head-major (the layout decode kernels read fastest):

* ``keys``   ``[B, H, C, Dk]``  cached keys (rotated or not: see ``view.CacheView``)
* ``values`` ``[B, H, C, Dv]``
* ``pos``    ``[B, H, C]`` int32 original token positions, ``-1`` for an empty slot
* ``score``  ``[B, H, C]`` float32 policy-specific slot score (accumulated attention for H2O)
* ``seen``   ``[B]`` int32 tokens consumed so far (the stream length)

``H`` is the number of cache heads: the model's KV heads, or its query heads for policies that
select per query head. ``C`` is the capacity, fixed at ``init``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lcache.cache import validate as v

EMPTY = -1  # ``pos`` of a slot that holds no token


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVState:
    """One layer's cache. Every policy stores this; unused fields stay at their init value."""

    keys: jax.Array  # [B, H, C, Dk]
    values: jax.Array  # [B, H, C, Dv]
    pos: jax.Array  # [B, H, C] int32, EMPTY where free
    score: jax.Array  # [B, H, C] f32
    seen: jax.Array  # [B] int32

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    @property
    def valid(self) -> jax.Array:
        """``[B, H, C]`` bool: slot holds a token."""
        return self.pos >= 0

    @property
    def key_dim(self) -> int:
        return self.keys.shape[-1]

    @property
    def value_dim(self) -> int:
        return self.values.shape[-1]

    def nbytes(self) -> int:
        """Bytes held by the arrays of this state (keys, values, positions, scores)."""
        return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(self))


def empty_state(batch: int, heads: int, capacity: int, key_dim: int, value_dim: int,
                dtype) -> KVState:
    """An all-empty ``KVState`` of fixed capacity."""
    size = v.integer(1)
    v.check_args("init", batch=(batch, size), heads=(heads, size), capacity=(capacity, size),
                 key_dim=(key_dim, size), value_dim=(value_dim, size))
    return KVState(
        keys=jnp.zeros((batch, heads, capacity, key_dim), dtype),
        values=jnp.zeros((batch, heads, capacity, value_dim), dtype),
        pos=jnp.full((batch, heads, capacity), EMPTY, jnp.int32),
        score=jnp.zeros((batch, heads, capacity), jnp.float32),
        seen=jnp.zeros((batch,), jnp.int32),
    )


