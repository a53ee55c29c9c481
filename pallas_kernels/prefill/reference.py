"""Pure-``jnp`` causal prefill attention with SnapKV observation scores (oracle, XLA fallback).

Shapes (head-major, GQA): ``q [B, Hq, T, D]``, ``k [B, Hkv, T, D]``, ``v [B, Hkv, T, Dv]``,
``Hq = G * Hkv`` (head ``h`` reads kv head ``h // G``); query ``t`` sees keys ``<= t``.
Observation scores (SnapKV): for the last ``w`` queries, the softmax probabilities each key
receives, summed over those queries: ``scores [B, Hq, T]`` f32 (per query head; SnapKV's
pooling and group aggregation come after). ``scores_reference`` takes any observers (chunk
indices and their log-sum-exp): the last real queries of right-padded rows, or every query
(H2O's attention mass). This reference materialises ``T x T``; the kernels do not.
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


def _causal_probs(q, k, scale):
    """``(p [B, Hkv, G, T, T], lse [B, Hkv, G, T])`` f32: causal softmax of each query."""
    b, hq, hkv, t, d, _ = check_inputs(q, k, k)
    qf = q.reshape(b, hkv, hq // hkv, t, d).astype(jnp.float32)
    s = jnp.einsum("bhgqd,bhkd->bhgqk", qf, k.astype(jnp.float32), precision=HIGHEST)
    causal = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]
    s = jnp.where(causal, s * default_scale(scale, d), -jnp.inf)
    return jax.nn.softmax(s, axis=-1), jax.nn.logsumexp(s, axis=-1)


def prefill_reference(q, k, v, *, scale=None, obs_window=0, return_lse=False):
    """Causal GQA attention in f32. Returns ``out [B, Hq, T, Dv]`` in ``q.dtype``, with
    ``return_lse`` each query's log-sum-exp ``lse [B, Hq, T]`` f32 (natural log, scaled
    logits) and, if ``obs_window > 0``, ``scores [B, Hq, T]`` over the last
    ``min(obs_window, T)`` queries."""
    b, hq, _, t, _, dv = check_inputs(q, k, v, obs_window)
    p, lse = _causal_probs(q, k, scale)
    out = jnp.einsum("bhgqk,bhke->bhgqe", p, v.astype(jnp.float32), precision=HIGHEST)
    res = (out.reshape(b, hq, t, dv).astype(q.dtype),)
    if return_lse:
        res += (lse.reshape(b, hq, t),)
    if obs_window:
        w = min(obs_window, t)
        res += (p[..., t - w:, :].sum(axis=-2).reshape(b, hq, t),)
    return res if len(res) > 1 else res[0]


def last_observers(b, t, w):
    """``obs_idx [B, w]``: the last ``w`` of ``T`` chunk indices in every row."""
    return jnp.broadcast_to(jnp.arange(t - w, t, dtype=jnp.int32), (b, w))


def check_observers(q_obs, obs_idx, lse_obs, k):
    """Validates observation-score inputs at trace time; returns ``(B, Hq, Hkv, W, T, D)``."""
    if q_obs.ndim != 4 or k.ndim != 4 or (k.shape[0], k.shape[3]) != (q_obs.shape[0],
                                                                    q_obs.shape[3]):
        raise ValueError(f"q_obs/k must be [B, Hq, W, D]/[B, Hkv, T, D], got "
                         f"{q_obs.shape}/{k.shape}")
    b, hq, w, d = q_obs.shape
    hkv, t = k.shape[1], k.shape[2]
    if hq % hkv:
        raise ValueError(f"Hq={hq} must be a multiple of Hkv={hkv}")
    if obs_idx.shape != (b, w) or not jnp.issubdtype(obs_idx.dtype, jnp.integer):
        raise ValueError(f"obs_idx must be int [B={b}, W={w}], got "
                         f"{obs_idx.dtype}{list(obs_idx.shape)}")
    if lse_obs.shape != (b, hq, w):
        raise ValueError(f"lse_obs must be [B={b}, Hq={hq}, W={w}], got {list(lse_obs.shape)}")
    return b, hq, hkv, w, t, d


def scores_reference(q_obs, obs_idx, lse_obs, k, *, scale=None):
    """Observation scores of any set of observer queries, given their log-sum-exp.

    ``q_obs [B, Hq, W, D]`` queries at chunk indices ``obs_idx [B, W]`` (``-1``: no observer),
    ``lse_obs [B, Hq, W]`` their log-sum-exp (``prefill_reference(return_lse=True)``; a larger
    one, e.g. with a sink logit merged, scales the probabilities down), ``k [B, Hkv, T, D]``.
    Returns ``[B, Hq, T]`` f32: ``sum_w exp(scale q_w . k_t - lse_w)`` over ``t <= obs_idx[w]``.
    """
    b, hq, hkv, w, t, d = check_observers(q_obs, obs_idx, lse_obs, k)
    qf = q_obs.reshape(b, hkv, hq // hkv, w, d).astype(jnp.float32)
    s = jnp.einsum("bhgwd,bhkd->bhgwk", qf, k.astype(jnp.float32), precision=HIGHEST)
    lse = lse_obs.reshape(b, hkv, hq // hkv, w)[..., None]
    seen = jnp.arange(t)[None, None, :] <= obs_idx[:, :, None]  # [B, W, T]
    p = jnp.where(seen[:, None, None], jnp.exp(s * default_scale(scale, d) - lse), 0.0)
    return p.sum(axis=-2).reshape(b, hq, t)
