"""GQA decode attention for TPU: ``pl.pallas_call`` + ``pltpu`` (Mosaic).

Grid ``(B, Hkv, C / block_k)``: the kv-block axis is "arbitrary" (sequential) and accumulates
the online softmax in VMEM scratch (max ``m`` and denominator ``den`` lane-replicated
``[Gp, 128]``, ``acc [Gp, Dv]``: the layout of jax's TPU flash attention); (B, Hkv) are
"parallel" (megacore). No split-K: a TPU core walks its grid sequentially, so splitting only
adds a merge.

Block rules: ``block_k % 128 == 0`` (it is the lane dim of the mask and logits blocks),
``D % 128 == 0`` and ``Dv % 128 == 0`` (lane-tiled statistics), ``G`` padded to a multiple of
8 (16 for 16-bit dtypes) sublanes. ``C`` not a multiple of ``block_k``: K/V are not padded;
the mask is padded with False in the wrapper and V rows past ``C`` are zeroed in-kernel.
RoPE rotates keys in f32 as ``k*cos + roll(k, D/2)*sign*sin`` (one lane roll, no lane slices).
Slot probabilities: the kernel also writes the masked logits and ``(m, den)``; a small ``jnp``
step turns them into ``sum_g exp(s - lse_g)`` (extra write ``4*Gp`` bytes/slot, K read once).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.decode.reference import check_inputs, default_scale, slot_probs_from_scores

NEG = -1e30
LANES = 128
_DOT_NT = (((1,), (1,)), ((), ()))


def unsupported_reason(d, dv, block_k=None):
    """Why the TPU kernel cannot take these sizes, or None."""
    if d % LANES or dv % LANES:
        return f"head dims D={d}, Dv={dv} must be multiples of {LANES} on TPU"
    if block_k is not None and (block_k <= 0 or block_k % LANES):
        return f"block_k={block_k} must be a positive multiple of {LANES} on TPU"
    return None


def _kernel(q_ref, k_ref, v_ref, valid_ref, *refs, bk, c, nblocks, scale, rope, probs):
    if rope:
        pos_ref, freq_ref, sign_ref, *refs = refs
    o_ref, *refs = refs
    if probs:
        mo_ref, lo_ref, s_ref, *refs = refs
    m_scr, l_scr, acc_scr = refs
    j = pl.program_id(2)
    dv = v_ref.shape[-1]

    @pl.when(j == 0)
    def _init():
        m_scr[...] = jnp.full(m_scr.shape, NEG, jnp.float32)
        l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
        acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

    k = k_ref[...]  # [bk, D]
    if rope:
        ang = pos_ref[...].astype(jnp.float32) * freq_ref[...]  # [bk, 1] * [1, D]
        kf = k.astype(jnp.float32)
        rolled = pltpu.roll(kf, kf.shape[1] // 2, 1)  # [x2, x1]
        rot = kf * jnp.cos(ang) + rolled * (jnp.sin(ang) * sign_ref[...])
        k = rot.astype(k_ref.dtype)
    q = q_ref[...].astype(k.dtype)  # [Gp, D]
    s = lax.dot_general(q, k, _DOT_NT, preferred_element_type=jnp.float32) * scale
    vld = valid_ref[...] != 0  # [1, bk]
    s = jnp.where(vld, s, NEG)  # [Gp, bk]
    if probs:
        s_ref[...] = s
    m_prev = m_scr[...]  # [Gp, 128], lanes equal
    m_next = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
    p = jnp.where(vld, jnp.exp(s - jnp.tile(m_next, (1, bk // LANES))), 0.0)
    alpha = jnp.exp(m_prev - m_next)
    l_scr[...] = alpha * l_scr[...] + p.sum(axis=1, keepdims=True)
    m_scr[...] = m_next
    v = v_ref[...]
    if c % bk:
        row = j * bk + lax.broadcasted_iota(jnp.int32, v.shape, 0)
        v = jnp.where(row < c, v, jnp.zeros_like(v))
    pv = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    acc_scr[...] = jnp.tile(alpha, (1, dv // LANES)) * acc_scr[...] + pv

    @pl.when(j == nblocks - 1)
    def _finish():
        den = l_scr[...]
        inv = jnp.where(den > 0, 1.0 / jnp.where(den > 0, den, 1.0), 0.0)
        o_ref[...] = (acc_scr[...] * jnp.tile(inv, (1, dv // LANES))).astype(o_ref.dtype)
        if probs:
            mo_ref[...] = m_scr[...]
            lo_ref[...] = den


def decode_attention_tpu(q, keys, values, valid, *, scale=None, rope_pos=None, inv_freq=None,
                         return_slot_probs=False, block_k=None, interpret=False):
    """Decode attention on TPU; same contract as ``decode_attention_reference``.

    Shapes: ``q [B, Hq, D]``, ``keys [B, Hkv, C, D]``, ``values [B, Hkv, C, Dv]``,
    ``valid [B, Hkv, C]``, ``rope_pos [B, Hkv, C]``, ``inv_freq [D/2]``. Returns
    ``out [B, Hq, Dv]`` (and ``slot_probs [B, Hkv, C]`` f32). ``interpret`` may be ``True``
    or a ``pltpu.InterpretParams``.
    """
    b, hkv, g, c, d, dv = check_inputs(q, keys, values, valid, rope_pos, inv_freq)
    reason = unsupported_reason(d, dv, block_k)
    if reason:
        raise ValueError(f"decode_attention_tpu: {reason}")
    rope = rope_pos is not None
    scale = default_scale(scale, d)
    bk = block_k or (512 if c >= 4096 else 256 if c >= 256 else LANES)
    nblocks = -(-c // bk)
    c_pad = nblocks * bk
    sub = 16 if min(q.dtype.itemsize, keys.dtype.itemsize) == 2 else 8
    gp = -(-g // sub) * sub

    q4 = jnp.pad(q.reshape(b, hkv, g, d), ((0, 0), (0, 0), (0, gp - g), (0, 0)))
    valid_i = jnp.pad(valid.astype(jnp.int32), ((0, 0), (0, 0), (0, c_pad - c)))[:, :, None]
    args = [q4, keys, values, valid_i]
    in_specs = [
        pl.BlockSpec((None, None, gp, d), lambda i, h, j: (i, h, 0, 0)),
        pl.BlockSpec((None, None, bk, d), lambda i, h, j: (i, h, j, 0)),
        pl.BlockSpec((None, None, bk, dv), lambda i, h, j: (i, h, j, 0)),
        pl.BlockSpec((None, None, 1, bk), lambda i, h, j: (i, h, 0, j)),
    ]
    if rope:
        invf = inv_freq.astype(jnp.float32)
        half = jnp.ones((d // 2,), jnp.float32)
        args += [rope_pos.astype(jnp.int32)[..., None],
                 jnp.concatenate([invf, invf])[None], jnp.concatenate([-half, half])[None]]
        in_specs += [pl.BlockSpec((None, None, bk, 1), lambda i, h, j: (i, h, j, 0)),
                     pl.BlockSpec((1, d), lambda i, h, j: (0, 0)),
                     pl.BlockSpec((1, d), lambda i, h, j: (0, 0))]
    f32 = jnp.float32
    out_shape = [jax.ShapeDtypeStruct((b, hkv, gp, dv), q.dtype)]
    out_specs = [pl.BlockSpec((None, None, gp, dv), lambda i, h, j: (i, h, 0, 0))]
    if return_slot_probs:
        out_shape += [jax.ShapeDtypeStruct((b, hkv, gp, LANES), f32)] * 2
        out_shape += [jax.ShapeDtypeStruct((b, hkv, gp, c_pad), f32)]
        out_specs += [pl.BlockSpec((None, None, gp, LANES), lambda i, h, j: (i, h, 0, 0))] * 2
        out_specs += [pl.BlockSpec((None, None, gp, bk), lambda i, h, j: (i, h, 0, j))]
    kernel = functools.partial(_kernel, bk=bk, c=c, nblocks=nblocks, scale=scale, rope=rope,
                               probs=return_slot_probs)
    outs = pl.pallas_call(
        kernel,
        grid=(b, hkv, nblocks),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        scratch_shapes=[pltpu.VMEM((gp, LANES), f32), pltpu.VMEM((gp, LANES), f32),
                        pltpu.VMEM((gp, dv), f32)],
        compiler_params=(None if interpret else pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary"))),
        interpret=interpret,
        name="lcache_decode_tpu",
    )(*args)
    out = outs[0][:, :, :g].reshape(b, hkv * g, dv)
    if not return_slot_probs:
        return out
    m, den, s = outs[1][:, :, :g, 0], outs[2][:, :, :g, 0], outs[3][:, :, :g, :c]
    return out, slot_probs_from_scores(s, m + jnp.log(den), valid)
