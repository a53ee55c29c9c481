"""Pure-``jnp`` decode attention over a head-major cache: the test oracle and the XLA fallback.

Shapes (one layer, one decode step): ``q [B, Hq, D]`` (already rotated), ``keys [B, Hkv, C, D]``,
``values [B, Hkv, C, Dv]``, ``valid [B, Hkv, C]`` bool (False = empty/evicted slot; slots may
be in any order), ``Hq = G * Hkv`` (query head ``h`` reads kv head ``h // G``). Invalid slots
must hold finite values (zeros after ``init``): they get probability 0, and ``0 * inf`` is NaN.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def check_inputs(q, keys, values, valid, rope_pos=None, inv_freq=None, sink_logit=None):
    """Validates shapes and dtypes at trace time; returns ``(B, Hkv, G, C, D, Dv)``."""
    if q.ndim != 3:
        raise ValueError(f"q must be [B, Hq, D], got shape {q.shape}")
    if keys.ndim != 4 or values.ndim != 4:
        raise ValueError(f"keys/values must be [B, Hkv, C, D]/[B, Hkv, C, Dv], got keys "
                         f"{keys.shape}, values {values.shape}")
    b, hkv, c, d = keys.shape
    if values.shape[:3] != (b, hkv, c):
        raise ValueError(f"values {values.shape} must match keys {keys.shape} on [B, Hkv, C]")
    if q.shape[0] != b or q.shape[2] != d:
        raise ValueError(f"q {q.shape} must be [B={b}, Hq, D={d}] to match keys {keys.shape}")
    if q.shape[1] % hkv:
        raise ValueError(f"Hq={q.shape[1]} (q {q.shape}) must be a multiple of Hkv={hkv}")
    if valid.shape != (b, hkv, c) or valid.dtype != jnp.bool_:
        raise ValueError(f"valid must be bool [B, Hkv, C] = {(b, hkv, c)}, got "
                         f"{valid.dtype}{list(valid.shape)}")
    for name, x in (("q", q), ("keys", keys), ("values", values)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if (rope_pos is None) != (inv_freq is None):
        raise ValueError("rope_pos and inv_freq must be given together")
    if rope_pos is not None:
        if rope_pos.shape != (b, hkv, c) or not jnp.issubdtype(rope_pos.dtype, jnp.integer):
            raise ValueError(f"rope_pos must be int [B, Hkv, C] = {(b, hkv, c)}, got "
                             f"{rope_pos.dtype}{list(rope_pos.shape)}")
        if d % 2 or inv_freq.shape != (d // 2,):
            raise ValueError(f"inv_freq must be [D/2] = [{d // 2}] (D={d} even), got "
                             f"{inv_freq.shape}")
    if sink_logit is not None and (sink_logit.shape != (q.shape[1],) or not jnp.issubdtype(
            sink_logit.dtype, jnp.floating)):
        raise ValueError(f"sink_logit must be float [Hq] = [{q.shape[1]}], got "
                         f"{sink_logit.dtype}{list(sink_logit.shape)}")
    return b, hkv, q.shape[1] // hkv, c, d, values.shape[-1]


def default_scale(scale, d):
    return 1.0 / math.sqrt(d) if scale is None else float(scale)


def rope_rotate(x, pos, inv_freq):
    """Llama rotate-half RoPE in f32: ``x [..., D]`` rotated by ``pos [...]``; returns f32."""
    x = x.astype(jnp.float32)
    angle = pos.astype(jnp.float32)[..., None] * inv_freq.astype(jnp.float32)  # [..., D/2]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def slot_probs_from_scores(scores_BHGC, lse_BHG, valid_BHC):
    """``sum_g exp(score - lse)`` at valid slots, 0 elsewhere: ``[B, Hkv, C]`` f32."""
    p = jnp.exp(scores_BHGC - lse_BHG[..., None])
    return jnp.where(valid_BHC, p.sum(axis=2), 0.0)


def decode_attention_reference(q, keys, values, valid, *, scale=None, rope_pos=None,
                               inv_freq=None, sink_logit=None, return_slot_probs=False):
    """Softmax attention of one query per head over the valid cache slots, in f32.

    Args:
      q: ``[B, Hq, D]``, already rotated.
      keys: ``[B, Hkv, C, D]``; rotated here with ``rope_pos`` if given.
      values: ``[B, Hkv, C, Dv]``.
      valid: ``[B, Hkv, C]`` bool.
      scale: logit scale, default ``1/sqrt(D)``.
      rope_pos: optional ``[B, Hkv, C]`` int positions to rotate each key with.
      inv_freq: ``[D/2]`` f32 RoPE inverse frequencies (with ``rope_pos``).
      sink_logit: optional ``[Hq]`` per-head logit of a sink with no value (gpt-oss): adds
        ``exp(sink_logit)`` to each head's softmax denominator.
      return_slot_probs: also return the probabilities summed over each group.

    Returns:
      ``out [B, Hq, Dv]`` in ``q.dtype`` (zeros for a head with no valid slot) and, if
      ``return_slot_probs``, ``slot_probs [B, Hkv, C]`` f32 (0 at invalid slots).
    """
    b, hkv, g, c, d, dv = check_inputs(q, keys, values, valid, rope_pos, inv_freq, sink_logit)
    scale = default_scale(scale, d)
    k = keys.astype(jnp.float32) if rope_pos is None else rope_rotate(keys, rope_pos, inv_freq)
    q_BHGD = q.reshape(b, hkv, g, d).astype(jnp.float32)
    s = jnp.einsum("bhgd,bhcd->bhgc", q_BHGD, k, precision=HIGHEST) * scale
    mask = valid[:, :, None, :]
    s = jnp.where(mask, s, -jnp.inf)
    m = jnp.max(s, axis=-1)
    sink = None if sink_logit is None else sink_logit.astype(jnp.float32).reshape(hkv, g)
    if sink is not None:
        m = jnp.maximum(m, sink)
    m = jnp.where(jnp.isfinite(m), m, 0.0)  # all-invalid row: avoid inf - inf
    p = jnp.where(mask, jnp.exp(s - m[..., None]), 0.0)
    den = p.sum(axis=-1) + (0.0 if sink is None else jnp.exp(sink - m))
    l_safe = jnp.where(den > 0, den, 1.0)
    out = jnp.einsum("bhgc,bhce->bhge", p, values.astype(jnp.float32), precision=HIGHEST)
    out = (out / l_safe[..., None]).reshape(b, hkv * g, dv).astype(q.dtype)
    if not return_slot_probs:
        return out
    return out, (p / l_safe[..., None]).sum(axis=2)
