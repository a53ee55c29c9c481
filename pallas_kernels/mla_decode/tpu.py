"""MLA absorbed decode on TPU: ``pl.pallas_call`` + ``pltpu`` (Mosaic).

Grid ``(B, Hq / block_h, C / block_k)``, the block axis "arbitrary": the online softmax of
``block_h`` heads accumulates in VMEM scratch (``m``, ``den`` lane-replicated, ``acc
[block_h, dc]``); each latent tile ``c [block_k, dc]`` is the key (with ``k_r``) and the value.
Sizes: ``dc`` a multiple of 128, ``dr`` a multiple of 128 or the whole ``dr`` (64 for DeepSeek),
``block_k`` a multiple of 128.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.decode.reference import slot_probs_from_scores
from pallas_kernels.mla_decode.reference import check_inputs

NEG = -1e30
LANES = 128
_NT = (((1,), (1,)), ((), ()))


def unsupported_reason(dc, dr, block_k=None):
    """Why the TPU kernel cannot take these sizes, or None."""
    if dc % LANES:
        return f"latent dim dc={dc} must be a multiple of {LANES} on TPU"
    if block_k is not None and block_k % LANES:
        return f"block_k={block_k} must be a multiple of {LANES} on TPU"
    return None


def _kernel(ql_ref, qr_ref, c_ref, kr_ref, valid_ref, o_ref, *refs, c, bk, nblocks, scale,
            probs):
    if probs:
        mo_ref, lo_ref, s_ref, m_scr, l_scr, acc_scr = refs
    else:
        m_scr, l_scr, acc_scr = refs
    j = pl.program_id(2)
    dc = acc_scr.shape[1]

    @pl.when(j == 0)
    def _init():
        m_scr[...] = jnp.full(m_scr.shape, NEG, jnp.float32)
        l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
        acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

    lat = c_ref[...]
    rows = j * bk + lax.broadcasted_iota(jnp.int32, (bk, 1), 0)
    lat = jnp.where(rows < c, lat, jnp.zeros_like(lat))  # tail rows hold garbage
    ql = ql_ref[...].astype(lat.dtype)
    qr = qr_ref[...].astype(kr_ref.dtype)
    s = (lax.dot_general(ql, lat, _NT, preferred_element_type=jnp.float32)
         + lax.dot_general(qr, kr_ref[...], _NT, preferred_element_type=jnp.float32)) * scale
    vld = valid_ref[...] != 0  # [1, bk]
    s = jnp.where(vld, s, NEG)
    if probs:
        s_ref[...] = s
    m_prev = m_scr[...]
    m_next = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
    p = jnp.where(vld, jnp.exp(s - jnp.tile(m_next, (1, bk // LANES))), 0.0)
    alpha = jnp.exp(m_prev - m_next)
    l_scr[...] = alpha * l_scr[...] + p.sum(axis=1, keepdims=True)
    m_scr[...] = m_next
    pv = jnp.dot(p.astype(lat.dtype), lat, preferred_element_type=jnp.float32)
    acc_scr[...] = jnp.tile(alpha, (1, dc // LANES)) * acc_scr[...] + pv

    @pl.when(j == nblocks - 1)
    def _finish():
        den = l_scr[...]
        inv = jnp.where(den > 0, 1.0 / jnp.where(den > 0, den, 1.0), 0.0)
        o_ref[...] = (acc_scr[...] * jnp.tile(inv, (1, dc // LANES))).astype(o_ref.dtype)
        if probs:
            mo_ref[...] = m_scr[...]
            lo_ref[...] = den


def mla_decode_tpu(q_latent, q_rope, latent, k_rope, valid, *, scale, return_slot_probs=False,
                   block_h=None, block_k=None, interpret=False):
    """Same contract as ``mla_decode_reference``; ``interpret``: ``True`` or
    ``pltpu.InterpretParams``."""
    b, hq, c, dc, dr = check_inputs(q_latent, q_rope, latent, k_rope, valid)
    reason = unsupported_reason(dc, dr, block_k)
    if reason:
        raise ValueError(f"mla_decode_tpu: {reason}")
    bh = block_h or min(128, -(-hq // 16) * 16)
    nhb = -(-hq // bh)
    hp = nhb * bh
    bk = block_k or (512 if c >= 4096 else 256 if c >= 256 else LANES)
    nblocks = -(-c // bk)
    c_pad = nblocks * bk
    pad_h = ((0, 0), (0, hp - hq), (0, 0))
    args = [jnp.pad(q_latent, pad_h), jnp.pad(q_rope, pad_h), latent[:, 0], k_rope[:, 0],
            jnp.pad(valid[:, 0].astype(jnp.int32), ((0, 0), (0, c_pad - c)))[:, None]]
    in_specs = [pl.BlockSpec((None, bh, dc), lambda i, h, j: (i, h, 0)),
                pl.BlockSpec((None, bh, dr), lambda i, h, j: (i, h, 0)),
                pl.BlockSpec((None, bk, dc), lambda i, h, j: (i, j, 0)),
                pl.BlockSpec((None, bk, dr), lambda i, h, j: (i, j, 0)),
                pl.BlockSpec((None, 1, bk), lambda i, h, j: (i, 0, j))]
    f32 = jnp.float32
    out_shape = [jax.ShapeDtypeStruct((b, hp, dc), q_latent.dtype)]
    out_specs = [pl.BlockSpec((None, bh, dc), lambda i, h, j: (i, h, 0))]
    if return_slot_probs:
        out_shape += [jax.ShapeDtypeStruct((b, hp, LANES), f32)] * 2
        out_specs += [pl.BlockSpec((None, bh, LANES), lambda i, h, j: (i, h, 0))] * 2
        out_shape.append(jax.ShapeDtypeStruct((b, hp, c_pad), f32))
        out_specs.append(pl.BlockSpec((None, bh, bk), lambda i, h, j: (i, h, j)))
    kernel = functools.partial(_kernel, c=c, bk=bk, nblocks=nblocks, scale=float(scale),
                               probs=return_slot_probs)
    outs = pl.pallas_call(
        kernel, grid=(b, nhb, nblocks), in_specs=in_specs, out_specs=out_specs,
        out_shape=out_shape,
        scratch_shapes=[pltpu.VMEM((bh, LANES), f32), pltpu.VMEM((bh, LANES), f32),
                        pltpu.VMEM((bh, dc), f32)],
        compiler_params=(None if interpret else pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary"))),
        interpret=interpret, name="lcache_mla_decode_tpu",
    )(*args)
    out = outs[0][:, :hq]
    if not return_slot_probs:
        return out
    lse = outs[1][:, :hq, 0] + jnp.log(outs[2][:, :hq, 0])  # [B, Hq]
    s = outs[3][:, None, :hq, :c]
    return out, slot_probs_from_scores(s, lse[:, None], valid)
