"""Layer-stacked caches: every layer's cache in one pytree with a leading ``[L]`` axis, run by
``lax.scan`` over the decoder blocks.

Tracing and compiling then cost one block instead of ``L``: a program of the evaluation engine
(one per RULER cell) lowers to about ``1 / L`` of the HLO. It needs one policy for every layer
(per-layer budgets give caches of different shapes, which keep the Python loop over blocks) and
blocks of one structure (the same ``nnx.graphdef``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LayerStack:
    """``caches``: one layer's cache pytree whose every leaf has a leading ``[L]`` axis."""

    caches: Any

    @classmethod
    def of(cls, caches: Sequence) -> LayerStack:
        """Stack ``L`` caches of one policy (same pytree structure and shapes)."""
        return cls(jax.tree.map(lambda *leaves: jnp.stack(leaves), *caches))

    def layers(self) -> list:
        """The ``L`` per-layer caches."""
        num = jax.tree.leaves(self.caches)[0].shape[0]
        return [jax.tree.map(lambda leaf, i=i: leaf[i], self.caches) for i in range(num)]

    def map(self, fn: Callable) -> LayerStack:
        """``fn`` applied to every layer's cache (vectorised over the layer axis)."""
        return LayerStack(jax.vmap(fn)(self.caches))


def uniform_policy(policies: Sequence):
    """The one policy of every layer, or ValueError (stacked caches need a single policy)."""
    if any(p != policies[0] for p in policies[1:]):
        raise ValueError("layer-stacked caches need the same policy in every layer; per-layer "
                         "policies keep one cache per layer (a list)")
    return policies[0]


def scan_blocks(blocks: Sequence[nnx.Module], x, stack: LayerStack,
                step: Callable) -> tuple[Any, LayerStack]:
    """``x, cache_l = step(block_l, x, cache_l)`` for the blocks in order, as one ``lax.scan``
    over their stacked weights and the stacked caches -> ``(x, LayerStack)``."""
    graphdef = nnx.graphdef(blocks[0])
    if any(nnx.graphdef(b) != graphdef for b in blocks[1:]):
        raise ValueError("layer-stacked caches need decoder blocks of one structure")
    weights = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[nnx.state(b) for b in blocks])

    def body(x, layer):
        state, cache = layer
        return step(nnx.merge(graphdef, state), x, cache)

    x, caches = jax.lax.scan(body, x, (weights, stack.caches))
    return x, LayerStack(caches)
