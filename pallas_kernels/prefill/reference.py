"""Pure-``jnp`` causal prefill attention with SnapKV observation scores (oracle, XLA fallback).

Shapes (head-major, GQA): ``q [B, Hq, T, D]``, ``k [B, Hkv, T, D]``, ``v [B, Hkv, T, Dv]``,
``Hq = G * Hkv`` (head ``h`` reads kv head ``h // G``); query ``t`` sees keys ``<= t``.
Observation scores (SnapKV): for the last ``w`` queries, the softmax probabilities each key
receives, summed over those queries: ``scores [B, Hq, T]`` f32 (per query head; SnapKV's
pooling and group aggregation come after). This reference materialises ``T x T``; the kernels
do not.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def check_inputs(q, k, v, obs_window=0):
    """Validates shapes at trace time; returns ``(B, Hq, Hkv, T, D, Dv)``."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q/k/v must be [B, H, T, D], got {q.shape}/{k.shape}/{v.shape}")
    b, hq, t, d = q.shape
    hkv = k.shape[1]
    if k.shape != (b, hkv, t, d) or v.shape[:3] != (b, hkv, t):
        raise ValueError(f"k {k.shape} / v {v.shape} must be [B={b}, Hkv, T={t}, D={d}] / "
                         f"[B, Hkv, T, Dv]")
    if hq % hkv:
        raise ValueError(f"Hq={hq} must be a multiple of Hkv={hkv}")
    if obs_window < 0:
        raise ValueError(f"obs_window must be >= 0, got {obs_window}")
    return b, hq, hkv, t, d, v.shape[3]


def default_scale(scale, d):
    return 1.0 / math.sqrt(d) if scale is None else float(scale)


def prefill_reference(q, k, v, *, scale=None, obs_window=0):
    """Causal GQA attention in f32. Returns ``out [B, Hq, T, Dv]`` in ``q.dtype`` and, if
    ``obs_window > 0``, ``scores [B, Hq, T]`` over the last ``min(obs_window, T)`` queries."""
    b, hq, hkv, t, d, dv = check_inputs(q, k, v, obs_window)
    g = hq // hkv
    scale = default_scale(scale, d)
    qf = q.reshape(b, hkv, g, t, d).astype(jnp.float32)
    s = jnp.einsum("bhgqd,bhkd->bhgqk", qf, k.astype(jnp.float32), precision=HIGHEST) * scale
    causal = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]
    p = jax.nn.softmax(jnp.where(causal, s, -jnp.inf), axis=-1)
    out = jnp.einsum("bhgqk,bhke->bhgqe", p, v.astype(jnp.float32), precision=HIGHEST)
    out = out.reshape(b, hq, t, dv).astype(q.dtype)
    if not obs_window:
        return out
    w = min(obs_window, t)
    return out, p[..., t - w:, :].sum(axis=-2).reshape(b, hq, t)
