"""Sink tokens that quantized storage keeps in full precision (PFN and KVSink, algorithms.md §7).

A sink set holds the ``N`` best-scored tokens seen so far, per batch row (shared by the heads):
``pos [B, N]`` int32 (``-1`` empty), ``score [B, N]`` f32, and their full-precision
``keys [B, H, N, Dk]`` / ``values [B, H, N, Dv]``. Scores (larger = more sink-like) come from:

* :func:`first_n_score` — Preserve-First-N: positions ``0..N-1`` (ties impossible);
* :func:`outlier_score` — KVSink's prediction: the magnitude of a token's hidden state in the
  stable outlier channels of an early layer (the caller picks the layer and channels);
* :func:`mass_score` — a per-layer stand-in when no hidden state reaches the cache: the
  attention a token receives per query that can see it (the sink definition itself).

:class:`WithSinkScore` hands a score computed outside the model to ``prefill``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lcache.cache.base import Policy


def first_n_score(pos_BT, n: int):
    """``[B, T]`` f32: ``-pos`` for positions ``0 <= pos < n``, ``-inf`` otherwise."""
    return jnp.where((pos_BT >= 0) & (pos_BT < n), -pos_BT.astype(jnp.float32), -jnp.inf)


def outlier_score(hidden_BTD, channels=None):
    """``[B, T]`` f32: ``max |h|`` over ``channels`` (all when None) of a residual stream.

    KVSink reads fixed, model-specific outlier channels after an early block (e.g. channels
    1415 and 2533 after block 3 of LLaMA2-7B); the max over all channels finds the same tokens
    whenever those channels dominate, which is what makes them massive activations.
    """
    h = hidden_BTD if channels is None else hidden_BTD[..., jnp.asarray(channels)]
    return jnp.max(jnp.abs(h.astype(jnp.float32)), axis=-1)


def mass_score(mass_chunk_BHT, pos_BT):
    """``[B, T]`` f32: attention mass a chunk token received (summed over heads) divided by the
    number of chunk queries at or after it, so early tokens are not favoured by count alone."""
    valid = pos_BT >= 0
    seen_by = (pos_BT[:, None, :] <= pos_BT[:, :, None]) & valid[:, :, None]  # [B, Tq, Tk]
    count = jnp.maximum(seen_by.sum(axis=1), 1).astype(jnp.float32)
    return jnp.where(valid, mass_chunk_BHT.sum(axis=1) / count, -jnp.inf)


def merge(pos_BN, score_BN, keys_BHND, values_BHND, new_pos_BT, new_score_BT, new_keys_BHTD,
          new_values_BHTD):
    """The ``N`` best of (current sinks ∪ a chunk); current sinks win ties. Returns
    ``(pos, score, keys, values)`` of the new set; ``-inf`` scores leave the entry empty."""
    n = pos_BN.shape[1]
    score = jnp.concatenate([score_BN, jnp.where(new_pos_BT >= 0, new_score_BT, -jnp.inf)], 1)
    top_score, idx_BN = jax.lax.top_k(score, n)
    pos = jnp.take_along_axis(jnp.concatenate([pos_BN, new_pos_BT], 1), idx_BN, axis=1)
    pos = jnp.where(top_score > -jnp.inf, pos, -1)
    idx = idx_BN[:, None, :, None]

    def pick(old, new):
        both = jnp.concatenate([old, new.astype(old.dtype)], axis=2)
        return jnp.take_along_axis(both, idx, axis=2)

    return pos, top_score, pick(keys_BHND, new_keys_BHTD), pick(values_BHND, new_values_BHTD)


def is_sink(pos_BHC, sink_pos_BN):
    """``(mask [B, H, C], index [B, H, C])``: slot holds a sink token, and which entry."""
    match = (pos_BHC[..., None] == sink_pos_BN[:, None, None, :]) & (pos_BHC[..., None] >= 0)
    return match.any(-1), jnp.argmax(match, axis=-1)


@dataclasses.dataclass(frozen=True, eq=False)
class WithSinkScore(Policy):
    """``policy`` whose ``prefill`` receives ``sink_score [B, T]`` for one chunk: the bridge for
    a model whose attention does not hand a score over (e.g. KVSink's hidden-state outlier score
    from a first pass over the prompt). It holds an array, so build it inside ``jit`` around one
    ``prefill`` call; it hashes by identity and is never a static argument."""

    policy: Policy
    sink_score: jax.Array

    @property
    def rope_mode(self) -> str:
        return self.policy.rope_mode

    @property
    def state_type(self) -> type:
        return self.policy.state_type

    @property
    def capacity(self) -> int:
        return self.policy.capacity

    def cache_heads(self, num_kv_heads: int, num_q_heads: int) -> int:
        return self.policy.cache_heads(num_kv_heads, num_q_heads)

    def init(self, *args, **kw):
        return self.policy.init(*args, **kw)

    def entry_sizes(self, state) -> tuple[int, ...]:
        return self.policy.entry_sizes(state)

    def view(self, state):
        return self.policy.view(state)

    def visible(self, q_pos, k_pos):
        return self.policy.visible(q_pos, k_pos)

    @property
    def causal_prefill(self) -> bool:
        return self.policy.causal_prefill

    def prefill(self, state, keys, values, pos, **kw):
        return self.policy.prefill(state, keys, values, pos, sink_score=self.sink_score, **kw)

    def append(self, state, key, value, pos):
        return self.policy.append(state, key, value, pos)

    def observe(self, state, slot_probs):
        return self.policy.observe(state, slot_probs)
