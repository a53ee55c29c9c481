"""Sizing the decode room of prefill-only scorers (``SnapKV(decode_capacity=None)``) once the
number of generated tokens is known.

A prefill-only scorer selects on the prompt; the reference implementations then keep every
decode token. Capacity is a static shape here, so ``decode_capacity=None`` means "room for the
whole generation" and whoever knows its length (``generate``: ``max_new_tokens``) resolves it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from lcache.cache.base import Policy


def reserve_decode_room(policy: Policy | Sequence[Policy], new_tokens: int
                        ) -> Policy | tuple[Policy, ...]:
    """``policy`` (or per-layer policies) with every ``decode_capacity=None`` set to
    ``new_tokens``, looking inside wrappers (``quantized``, ``Recompress``...) too; policies
    without an unsized decode room come back unchanged."""
    if not isinstance(policy, Policy):
        sized = tuple(reserve_decode_room(p, new_tokens) for p in policy)
        return policy if all(a is b for a, b in zip(sized, policy, strict=True)) else sized
    changes = {f.name: reserve_decode_room(getattr(policy, f.name), new_tokens)
               for f in dataclasses.fields(policy) if isinstance(getattr(policy, f.name), Policy)}
    if getattr(policy, "decode_capacity", 0) is None:
        changes["decode_capacity"] = new_tokens
    if all(changes.get(k) is getattr(policy, k) for k in changes):
        return policy
    return dataclasses.replace(policy, **changes)
