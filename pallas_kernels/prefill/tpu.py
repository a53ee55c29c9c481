"""Causal GQA flash attention + SnapKV observation scores on TPU (``pltpu``, Mosaic).

1. Flash forward, grid ``(B, Hq, T / block_q, T / block_k)``, the key axis "arbitrary": online
   softmax in VMEM scratch; key blocks right of the diagonal are skipped (``pl.when``) and
   their index map is clamped to the last needed block, so no DMA is issued for them.
2. Scores, grid ``(B, Hkv, T / block_k, W / bw)``, the observer axis "arbitrary": each block
   of observer queries (chunk indices ``obs_idx``, ``-1`` = none) of each head of the group
   against one key block, ``exp(s - lse)`` summed over the rows into the resident output.
Sizes: ``D``, ``Dv`` multiples of 128; blocks multiples of 128. ``T`` is padded to the blocks.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.prefill.reference import (
    check_inputs,
    check_observers,
    default_scale,
    last_observers,
)

NEG = -1e30
LANES = 128
_NT = (((1,), (1,)), ((), ()))


def unsupported_reason(d, dv, block_q=None, block_k=None):
    """Why the TPU kernels cannot take these sizes, or None."""
    if d % LANES or dv % LANES:
        return f"head dims D={d}, Dv={dv} must be multiples of {LANES} on TPU"
    for name, x in (("block_q", block_q), ("block_k", block_k)):
        if x is not None and x % LANES:
            return f"{name}={x} must be a multiple of {LANES} on TPU"
    return None


def _flash_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, m_scr, l_scr, acc_scr, *, bq, bk, nk,
                  scale):
    qi, j = pl.program_id(2), pl.program_id(3)
    dv = acc_scr.shape[1]

    @pl.when(j == 0)
    def _init():
        m_scr[...] = jnp.full(m_scr.shape, NEG, jnp.float32)
        l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
        acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

    @pl.when(j * bk < (qi + 1) * bq)
    def _step():
        q = q_ref[...]
        s = lax.dot_general(q, k_ref[...].astype(q.dtype), _NT,
                            preferred_element_type=jnp.float32) * scale
        q_pos = qi * bq + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
        k_pos = j * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
        s = jnp.where(q_pos >= k_pos, s, NEG)
        m_prev = m_scr[...]
        m_next = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
        p = jnp.exp(s - jnp.tile(m_next, (1, bk // LANES)))
        alpha = jnp.exp(m_prev - m_next)
        l_scr[...] = alpha * l_scr[...] + p.sum(axis=1, keepdims=True)
        m_scr[...] = m_next
        pv = jnp.dot(p.astype(v_ref.dtype), v_ref[...], preferred_element_type=jnp.float32)
        acc_scr[...] = jnp.tile(alpha, (1, dv // LANES)) * acc_scr[...] + pv

    @pl.when(j == nk - 1)
    def _finish():
        den = l_scr[...]
        o_ref[...] = (acc_scr[...] / jnp.tile(den, (1, dv // LANES))).astype(o_ref.dtype)
        lse_ref[...] = m_scr[...] + jnp.log(den)


def _scores_kernel(idx_ref, q_ref, lse_ref, k_ref, s_ref, *, scale):
    kb, j = pl.program_id(2), pl.program_id(3)
    g, bw, _ = q_ref.shape
    sk = k_ref.shape[0]

    @pl.when(j == 0)
    def _init():
        s_ref[...] = jnp.zeros(s_ref.shape, jnp.float32)

    k = k_ref[...]
    k_pos = kb * sk + lax.broadcasted_iota(jnp.int32, (bw, sk), 1)
    seen = idx_ref[...] >= k_pos  # [bw, 1] vs [bw, sk]; idx -1 (no observer) sees nothing
    for gi in range(g):
        q = q_ref[gi].astype(k.dtype)
        s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * scale
        p = jnp.where(seen, jnp.exp(s - lse_ref[gi]), 0.0)
        s_ref[pl.ds(gi, 1), :] += p.sum(axis=0, keepdims=True)


def _blocks(t, block_q=None, block_k=None):
    bq = block_q or (256 if t >= 256 else LANES)
    return bq, block_k or bq


def prefill_flash_tpu(q, k, v, *, scale=None, block_q=None, block_k=None, interpret=False):
    """Same contract as ``prefill_reference(..., return_lse=True)``; ``interpret``: ``True``
    or ``pltpu.InterpretParams``. Returns ``out [B, Hq, T, Dv]``, ``lse [B, Hq, T]`` f32."""
    b, hq, hkv, t, d, dv = check_inputs(q, k, v)
    reason = unsupported_reason(d, dv, block_q, block_k)
    if reason:
        raise ValueError(f"prefill_flash_tpu: {reason}")
    g = hq // hkv
    scale = default_scale(scale, d)
    bq, bk = _blocks(t, block_q, block_k)
    step = max(bq, bk)
    t_pad = -(-t // step) * step
    nq, nk = t_pad // bq, t_pad // bk
    pad = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, t_pad - t), (0, 0)))  # noqa: E731
    last = lambda i: lax.div((i + 1) * bq - 1, bk)  # noqa: E731  last key block of q block i
    kv_map = lambda bb, h, i, j: (bb, lax.div(h, g), jnp.minimum(j, last(i)), 0)  # noqa: E731
    f32 = jnp.float32
    out, lse = pl.pallas_call(
        functools.partial(_flash_kernel, bq=bq, bk=bk, nk=nk, scale=scale),
        grid=(b, hq, nq, nk),
        in_specs=[pl.BlockSpec((None, None, bq, d), lambda bb, h, i, j: (bb, h, i, 0)),
                  pl.BlockSpec((None, None, bk, d), kv_map),
                  pl.BlockSpec((None, None, bk, dv), kv_map)],
        out_specs=[pl.BlockSpec((None, None, bq, dv), lambda bb, h, i, j: (bb, h, i, 0)),
                   pl.BlockSpec((None, None, bq, LANES), lambda bb, h, i, j: (bb, h, i, 0))],
        out_shape=[jax.ShapeDtypeStruct((b, hq, t_pad, dv), q.dtype),
                   jax.ShapeDtypeStruct((b, hq, t_pad, LANES), f32)],
        scratch_shapes=[pltpu.VMEM((bq, LANES), f32), pltpu.VMEM((bq, LANES), f32),
                        pltpu.VMEM((bq, dv), f32)],
        compiler_params=(None if interpret else pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))),
        interpret=interpret, name="lcache_prefill_flash_tpu",
    )(pad(q), pad(k), pad(v))
    return out[:, :, :t], lse[:, :, :t, 0]


def observation_scores_tpu(q_obs, obs_idx, lse_obs, k, *, scale=None, block_k=None,
                           interpret=False):
    """Same contract as ``scores_reference``. Grid ``(B, Hkv, T / block_k, W / bw)``, the
    observer axis "arbitrary" (accumulated into the resident output block)."""
    b, hq, hkv, w, t, d = check_observers(q_obs, obs_idx, lse_obs, k)
    reason = unsupported_reason(d, d, block_k=block_k)
    if reason:
        raise ValueError(f"observation_scores_tpu: {reason}")
    g = hq // hkv
    sk = _blocks(t, None, block_k)[1]
    t_pad = -(-t // sk) * sk
    bw = min(256, -(-w // 8) * 8)
    wp = -(-w // bw) * bw
    pad_w = lambda x, fill=0: jnp.pad(x, ((0, 0),) * (x.ndim - 1) + ((0, wp - w),),  # noqa: E731
                                      constant_values=fill)
    idx = pad_w(obs_idx.astype(jnp.int32), -1)[..., None]
    q_obs = jnp.pad(q_obs, ((0, 0), (0, 0), (0, wp - w), (0, 0))).reshape(b, hkv, g, wp, d)
    lse = pad_w(lse_obs.astype(jnp.float32)).reshape(b, hkv, g, wp, 1)
    kp = jnp.pad(k, ((0, 0), (0, 0), (0, t_pad - t), (0, 0)))
    scores = pl.pallas_call(
        functools.partial(_scores_kernel, scale=default_scale(scale, d)),
        grid=(b, hkv, t_pad // sk, wp // bw),
        in_specs=[pl.BlockSpec((None, bw, 1), lambda bb, h, i, j: (bb, j, 0)),
                  pl.BlockSpec((None, None, g, bw, d), lambda bb, h, i, j: (bb, h, 0, j, 0)),
                  pl.BlockSpec((None, None, g, bw, 1), lambda bb, h, i, j: (bb, h, 0, j, 0)),
                  pl.BlockSpec((None, None, sk, d), lambda bb, h, i, j: (bb, h, i, 0))],
        out_specs=pl.BlockSpec((None, None, g, sk), lambda bb, h, i, j: (bb, h, 0, i)),
        out_shape=jax.ShapeDtypeStruct((b, hkv, g, t_pad), jnp.float32),
        compiler_params=(None if interpret else pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))),
        interpret=interpret, name="lcache_prefill_obs_scores_tpu",
    )(idx, q_obs, lse, kp)
    return scores.reshape(b, hq, t_pad)[:, :, :t]


def prefill_attention_tpu(q, k, v, *, scale=None, obs_window=0, block_q=None, block_k=None,
                          interpret=False):
    """Same contract as ``prefill_reference``: ``prefill_flash_tpu``, then (``obs_window > 0``)
    ``observation_scores_tpu`` of the last ``min(obs_window, T)`` queries."""
    check_inputs(q, k, v, obs_window)
    out, lse = prefill_flash_tpu(q, k, v, scale=scale, block_q=block_q, block_k=block_k,
                                 interpret=interpret)
    if not obs_window:
        return out
    b, _, t, _ = q.shape
    w = min(obs_window, t)
    return out, observation_scores_tpu(q[:, :, t - w:], last_observers(b, t, w),
                                       lse[:, :, t - w:], k, scale=scale,
                                       block_k=_blocks(t, block_q, block_k)[1],
                                       interpret=interpret)
