"""A prefill chunk of GQA attention through the Pallas prefill kernels (``pallas_kernels.prefill``).

The kernels take no masks: they attend a *fresh causal chunk*, i.e. an empty cache and, in
every row, real tokens that form a prefix of the chunk at consecutive positions (right
padding). Under a kernel ``impl`` (``pallas_kernels.dispatch``: 'pallas', or 'auto' on
GPU/TPU) the model's prefill runs them when ``uses_kernel`` holds for the model and policy
(static: a softmax-like variant, no model sliding window, a policy with plain causal
``visible``) and ``fresh_chunk`` holds for the chunk (at run time, ``lax.cond``); any other
chunk (a second chunk, one after the model's sink tokens, left padding) attends through the
explicit masks of the ``jnp`` path, whose program is compiled alongside.

``kernel_chunk`` returns what the ``jnp`` path does: the chunk's output (zeros for padding
queries) and the ``PrefillMass`` (all-zero on the empty cache; every real query's
probabilities summed per key for H2O-style policies; the observation-window ``votes`` for a
policy with an ``observation_window``, SnapKV), from one flash pass and the scores kernel. A
per-head sink logit (variants 'sink_logit', 'off_by_one') is merged into each query's
log-sum-exp, which scales the output and the mass; the votes stay plain softmax over the keys,
as SnapKV computes them (``voting.observer_probs``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lcache.attention import decode
from lcache.cache import Policy, PrefillMass
from pallas_kernels.prefill import observation_scores, prefill_flash


def uses_kernel(impl: str, variant: str, sliding_window: int, policy: Policy) -> bool:
    """Whether fresh prefill chunks of this model and policy attend through the kernels
    (static). Raises for 'pallas' with a variant no kernel computes, as decode does."""
    return (decode.uses_kernel(impl, variant) and not sliding_window
            and policy.causal_prefill)


def fresh_chunk(cache_valid_BHC, pos_BT):
    """Scalar bool: no valid cache entry, and the real tokens (``pos >= 0``) of each row are a
    prefix of the chunk at consecutive positions."""
    real = pos_BT >= 0
    step = jnp.arange(pos_BT.shape[1], dtype=pos_BT.dtype)
    consecutive = jnp.where(real, pos_BT - pos_BT[:, :1] == step, True)
    return (~jnp.any(cache_valid_BHC) & jnp.all(real[:, 1:] <= real[:, :-1])
            & jnp.all(consecutive))


def kernel_chunk(q_BHqTD, k_BHTD, v_BHTD, pos_BT, *, cache_heads: int, capacity: int,
                 sink_Hq=None, window: int | None = None, impl: str = "pallas"):
    """Attention of a fresh causal chunk (see ``fresh_chunk``) and its ``PrefillMass``.

    ``q [B, Hq, T, D]``, ``k [B, Hkv, T, D]`` rotated, ``v [B, Hkv, T, Dv]`` (the model's own
    heads), ``pos [B, T]``; ``cache_heads`` ``H`` (a multiple of ``Hkv`` dividing ``Hq``) and
    ``capacity`` ``C`` of the cache the mass is for; ``sink [Hq]`` f32 or None; ``window``:
    the policy's ``observation_window``. Returns ``out [B, Hq, T, Dv]`` and ``PrefillMass``
    (``cache [B, H, C]`` zeros, ``chunk [B, H, T]``, ``votes [B, Hq, C + T]`` or None).
    """
    b, hq, t, _ = q_BHqTD.shape
    out, lse = prefill_flash(q_BHqTD, k_BHTD, v_BHTD, impl=impl)
    total = lse
    if sink_Hq is not None:
        total = jnp.logaddexp(lse, sink_Hq[None, :, None])
        out = (out * jnp.exp(lse - total)[..., None]).astype(out.dtype)
    real = pos_BT >= 0
    out = jnp.where(real[:, None, :, None], out, 0)
    idx = jnp.where(real, jnp.arange(t, dtype=jnp.int32), -1)
    chunk = observation_scores(q_BHqTD, idx, total, k_BHTD, impl=impl)  # every real query
    chunk = chunk.reshape(b, cache_heads, hq // cache_heads, t).sum(axis=2)
    votes = None
    if window:
        newest, at = jax.lax.top_k(pos_BT, min(window, t))  # the observers (voting.observers)
        obs_idx = jnp.where(newest >= 0, at, -1).astype(jnp.int32)
        q_obs = jnp.take_along_axis(q_BHqTD, at[:, None, :, None], axis=2)
        lse_obs = jnp.take_along_axis(lse, at[:, None, :], axis=2)
        votes = jnp.concatenate([jnp.zeros((b, hq, capacity), jnp.float32),
                                 observation_scores(q_obs, obs_idx, lse_obs, k_BHTD, impl=impl)],
                                axis=2)
    return out, PrefillMass(jnp.zeros((b, cache_heads, capacity), jnp.float32), chunk, votes)
