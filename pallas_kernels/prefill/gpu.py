"""Causal GQA flash attention + SnapKV observation scores: two portable ``pl.pallas_call``s.

1. Flash forward, grid ``(T / block_q, B, Hq)``, q blocks in reverse order (the longest causal
   rows start first). A program keeps its ``[block_q, D]`` queries, loops over the key blocks
   left of the diagonal without masks, then over the diagonal blocks with the causal mask
   (online softmax in base 2), and writes ``out`` and the row log-sum-exp ``lse``.
2. Scores (``observation_scores_gpu``), grid ``(T / 128, B, Hkv)``: a program takes one key
   block and loops over the observer queries of each head of the kv head's group in blocks of
   up to 64 rows (any observers: chunk indices ``obs_idx``, ``-1`` = none, and their ``lse``),
   and writes ``sum_q exp(q.k * scale - lse_q)`` over pairs with ``k_idx <= obs_idx``:
   ``[G, 128]``. It re-reads K once (``2 * D`` bytes per key and kv head) and does
   ``2 * W * D`` FLOPs per key and query head: ``W / T`` of the forward pass for ``W``
   observers (SnapKV's window), about the forward pass for every query (H2O's mass).
   No ``T x T`` array exists.

``T`` not a multiple of the blocks: q/k/v are padded (a copy only in that case); padded keys
sit right of every real query, so the causal mask already hides them.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import gpu_common as gc
from pallas_kernels.prefill.reference import (
    check_inputs,
    check_observers,
    default_scale,
    last_observers,
)

NEG = -1e30
LOG2E = math.log2(math.e)
LN2 = math.log(2.0)


def unsupported_reason(d, dv, block_q=None, block_k=None):
    """Why the Triton kernels cannot take these sizes, or None."""
    if not (gc.is_pow2(d) and d >= 16 and gc.is_pow2(dv) and dv >= 16):
        return f"head dims D={d}, Dv={dv} must be powers of 2 >= 16"
    for name, x in (("block_q", block_q), ("block_k", block_k)):
        if x is not None and not (gc.is_pow2(x) and x >= 16):
            return f"{name}={x} must be a power of 2 >= 16"
    return None


def _flash_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, *, bq, bk, nq, scale):
    qi = nq - 1 - pl.program_id(0)
    q = q_ref[...]
    dt = q.dtype
    qk_scale = scale * LOG2E
    q_pos = qi * bq + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)

    def step(j, carry, masked):
        m, den, acc = carry
        rows = pl.ds(pl.multiple_of(j * bk, bk), bk)
        s = lax.dot_general(q, k_ref[rows, :].astype(dt), gc.DOT_NT,
                            preferred_element_type=jnp.float32) * qk_scale
        if masked:
            k_pos = j * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
            s = jnp.where(q_pos >= k_pos, s, NEG)
        m_new = jnp.maximum(m, s.max(axis=1))
        p = jnp.exp2(s - m_new[:, None])
        alpha = jnp.exp2(m - m_new)
        pv = jnp.dot(p.astype(dt), v_ref[rows, :].astype(dt), preferred_element_type=jnp.float32)
        return m_new, alpha * den + p.sum(axis=1), alpha[:, None] * acc + pv

    carry = (jnp.full((bq,), NEG, jnp.float32), jnp.zeros((bq,), jnp.float32),
             jnp.zeros(o_ref.shape, jnp.float32))
    n_full = lax.div(qi * bq, bk)  # key blocks entirely left of this query block
    n_end = lax.div((qi + 1) * bq + bk - 1, bk)
    carry = lax.fori_loop(0, n_full, functools.partial(step, masked=False), carry)
    m, den, acc = lax.fori_loop(n_full, n_end, functools.partial(step, masked=True), carry)
    o_ref[...] = (acc / den[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log2(den)  # base 2


def _scores_kernel(idx_ref, q_ref, lse_ref, k_ref, s_ref, *, sk, bw, scale):
    kb = pl.program_id(0)
    g, wp, _ = q_ref.shape
    k = k_ref[...]
    k_pos = kb * sk + lax.broadcasted_iota(jnp.int32, (bw, sk), 1)

    def step(j, acc):
        rows = pl.ds(pl.multiple_of(j * bw, bw), bw)
        seen = idx_ref[rows][:, None] >= k_pos  # idx -1 (no observer) sees nothing
        new = []
        for gi in range(g):
            q = q_ref[gi, rows, :].astype(k.dtype)  # [bw, D]
            s = lax.dot_general(q, k, gc.DOT_NT, preferred_element_type=jnp.float32) * scale
            p = jnp.where(seen, jnp.exp(s - lse_ref[gi, rows][:, None]), 0.0)
            new.append(acc[gi] + p.sum(axis=0))
        return tuple(new)

    acc = lax.fori_loop(0, wp // bw, step, (jnp.zeros((sk,), jnp.float32),) * g)
    for gi in range(g):
        s_ref[gi, :] = acc[gi]


def _pad_t(x, t_pad):
    t = x.shape[2]
    return x if t == t_pad else jnp.pad(x, ((0, 0), (0, 0), (0, t_pad - t), (0, 0)))


def default_blocks(d):
    """``(block_q, block_k, num_warps, num_stages)`` for the forward pass."""
    return (128, 64, 8, 3) if d <= 128 else (64, 32, 8, 2)


def prefill_flash_gpu(q, k, v, *, scale=None, block_q=None, block_k=None, num_warps=None,
                      num_stages=None, interpret=False):
    """Same contract as ``prefill_reference(..., return_lse=True)``. Shapes:
    ``q [B, Hq, T, D]``, ``k [B, Hkv, T, D]``, ``v [B, Hkv, T, Dv]``; returns
    ``out [B, Hq, T, Dv]`` and ``lse [B, Hq, T]`` f32 (natural log)."""
    b, hq, hkv, t, d, dv = check_inputs(q, k, v)
    reason = unsupported_reason(d, dv, block_q, block_k)
    if reason:
        raise ValueError(f"prefill_flash_gpu: {reason}")
    g = hq // hkv
    scale = default_scale(scale, d)
    dbq, dbk, dwarps, dstages = default_blocks(d)
    bq = min(block_q or dbq, max(16, gc.next_pow2(t)))
    bk = min(block_k or dbk, bq)
    t_pad = gc.cdiv(t, bq) * bq
    nq = t_pad // bq
    qp, kp, vp = _pad_t(q, t_pad), _pad_t(k, t_pad), _pad_t(v, t_pad)
    gc.check_offsets("prefill_flash_gpu", q=qp, k=kp, v=vp)
    out, lse2 = pl.pallas_call(
        functools.partial(_flash_kernel, bq=bq, bk=bk, nq=nq, scale=scale),
        grid=(nq, b, hq),
        in_specs=[pl.BlockSpec((None, None, bq, d), lambda i, bb, h: (bb, h, nq - 1 - i, 0)),
                  pl.BlockSpec((None, None, t_pad, d), lambda i, bb, h: (bb, h // g, 0, 0)),
                  pl.BlockSpec((None, None, t_pad, dv), lambda i, bb, h: (bb, h // g, 0, 0))],
        out_specs=[pl.BlockSpec((None, None, bq, dv), lambda i, bb, h: (bb, h, nq - 1 - i, 0)),
                   pl.BlockSpec((None, None, bq), lambda i, bb, h: (bb, h, nq - 1 - i))],
        out_shape=[jax.ShapeDtypeStruct((b, hq, t_pad, dv), q.dtype),
                   jax.ShapeDtypeStruct((b, hq, t_pad), jnp.float32)],
        compiler_params=gc.compiler_params(num_warps or dwarps, num_stages or dstages,
                                           interpret),
        interpret=interpret, name="lcache_prefill_flash",
    )(qp, kp, vp)
    return out[:, :, :t], lse2[:, :, :t] * LN2


def _observer_block(w):
    """Observer rows per step of the scores kernel: a power of 2 in ``[16, 64]``."""
    return min(64, max(16, gc.next_pow2(w)))


def observation_scores_gpu(q_obs, obs_idx, lse_obs, k, *, scale=None, interpret=False):
    """Same contract as ``scores_reference``: ``q_obs [B, Hq, W, D]``, ``obs_idx [B, W]``,
    ``lse_obs [B, Hq, W]``, ``k [B, Hkv, T, D]`` -> ``[B, Hq, T]`` f32. Grid
    ``(T / 128, B, Hkv)``; each program loops over the observers in blocks of up to 64."""
    b, hq, hkv, w, t, d = check_observers(q_obs, obs_idx, lse_obs, k)
    reason = unsupported_reason(d, d)
    if reason:
        raise ValueError(f"observation_scores_gpu: {reason}")
    g = hq // hkv
    bw = _observer_block(w)
    wp = gc.cdiv(w, bw) * bw
    sk = min(128, max(16, gc.next_pow2(t)))
    t_pad = gc.cdiv(t, sk) * sk
    pad_w = lambda x, fill=0: jnp.pad(x, ((0, 0),) * (x.ndim - 1) + ((0, wp - w),),  # noqa: E731
                                      constant_values=fill)
    idx = pad_w(obs_idx.astype(jnp.int32), -1)
    q_obs = jnp.pad(q_obs, ((0, 0), (0, 0), (0, wp - w), (0, 0))).reshape(b, hkv, g, wp, d)
    lse = pad_w(lse_obs.astype(jnp.float32)).reshape(b, hkv, g, wp)
    kp = _pad_t(k, t_pad)
    gc.check_offsets("observation_scores_gpu", q_obs=q_obs, k=kp)
    scores = pl.pallas_call(
        functools.partial(_scores_kernel, sk=sk, bw=bw, scale=default_scale(scale, d)),
        grid=(t_pad // sk, b, hkv),
        in_specs=[pl.BlockSpec((None, wp), lambda i, bb, h: (bb, 0)),
                  pl.BlockSpec((None, None, g, wp, d), lambda i, bb, h: (bb, h, 0, 0, 0)),
                  pl.BlockSpec((None, None, g, wp), lambda i, bb, h: (bb, h, 0, 0)),
                  pl.BlockSpec((None, None, sk, d), lambda i, bb, h: (bb, h, i, 0))],
        out_specs=pl.BlockSpec((None, None, g, sk), lambda i, bb, h: (bb, h, 0, i)),
        out_shape=jax.ShapeDtypeStruct((b, hkv, g, t_pad), jnp.float32),
        compiler_params=gc.compiler_params(4, 2, interpret), interpret=interpret,
        name="lcache_prefill_obs_scores",
    )(idx, q_obs, lse, kp)
    return scores.reshape(b, hq, t_pad)[:, :, :t]


def prefill_attention_gpu(q, k, v, *, scale=None, obs_window=0, block_q=None, block_k=None,
                          num_warps=None, num_stages=None, interpret=False):
    """Same contract as ``prefill_reference``: ``prefill_flash_gpu``, then (``obs_window > 0``)
    ``observation_scores_gpu`` of the last ``min(obs_window, T)`` queries."""
    check_inputs(q, k, v, obs_window)
    out, lse = prefill_flash_gpu(q, k, v, scale=scale, block_q=block_q, block_k=block_k,
                                 num_warps=num_warps, num_stages=num_stages, interpret=interpret)
    if not obs_window:
        return out
    t = q.shape[2]
    w = min(obs_window, t)
    return out, observation_scores_gpu(q[:, :, t - w:], last_observers(q.shape[0], t, w),
                                       lse[:, :, t - w:], k, scale=scale, interpret=interpret)
