"""Decode over KIVI codes + full-precision segments on TPU: ``pl.pallas_call`` + ``pltpu``.

Grid ``(B, H, C / block_k)``, the block axis "arbitrary": the online softmax accumulates in VMEM
scratch (``m``, ``den`` lane-replicated ``[Gp, 128]``, ``acc [Gp, Dv]``), as in
``decode/tpu.py``. The last step also attends the segments (whole blocks in VMEM) and writes.

Dequantization stays on the MXU, which decode leaves idle: the ``P`` bit planes of a tile of
``uint16`` code words ``[bk, W]`` (plane ``e`` = channels ``[eW, (e+1)W)``, ``quant_ops``) are
placed into channel order by one-hot matmuls (``plane_e @ E_e``, ``E_e[j, eW+j] = 1``; exact
for small integers), per-block key grids are repeated onto slots by a one-hot
``[bk, bk/G]`` matmul and per-token value grids spread over channels by a one-hot
``[Dv/G, Dv]`` matmul; keys and values are then dequantized in f32 and attended as in the
bf16 kernel. Sizes: ``D``, ``Dv`` multiples of 128, ``block_k`` a multiple of 128 and of ``G``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.decode.reference import default_scale, slot_probs_from_scores
from pallas_kernels.quant_decode.reference import QuantCodes, check_inputs

NEG = -1e30
LANES = 128
_NT = (((1,), (1,)), ((), ()))


def unsupported_reason(d, dv, group, block_k=None):
    """Why the TPU kernel cannot take these sizes, or None."""
    if d % LANES or dv % LANES:
        return f"head dims D={d}, Dv={dv} must be multiples of {LANES} on TPU"
    if block_k is not None and (block_k % LANES or block_k % group):
        return f"block_k={block_k} must be a multiple of {LANES} and of G={group}"
    return None


def _onehot(rows, cols, fn, dtype=jnp.float32):
    """``[rows, cols]`` with ones where ``fn(row_iota, col_iota)``."""
    r = lax.broadcasted_iota(jnp.int32, (rows, cols), 0)
    c = lax.broadcasted_iota(jnp.int32, (rows, cols), 1)
    return jnp.where(fn(r, c), 1.0, 0.0).astype(dtype)


def _mm(a, b):
    return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _codes(x_u16, bits):
    """``uint16 [R, W]`` words -> f32 ``[R, W * P]`` codes in channel order (one-hot matmuls)."""
    per, w = 16 // bits, x_u16.shape[1]
    x = x_u16.astype(jnp.int32)
    out = None
    for e in range(per):
        plane = ((x >> (e * bits)) & (2**bits - 1)).astype(jnp.bfloat16)
        spread = _onehot(w, w * per, lambda r, c, e=e: c == e * w + r, jnp.bfloat16)
        part = _mm(plane, spread)
        out = part if out is None else out + part
    return out


def _attend(q, k, v, vld, s_ref, scale, m_scr, l_scr, acc_scr):
    """Online-softmax update of the scratch with keys ``k [n, D]``, values ``v [n, Dv]``."""
    s = lax.dot_general(q, k.astype(q.dtype), _NT, preferred_element_type=jnp.float32) * scale
    s = jnp.where(vld, s, NEG)
    if s_ref is not None:
        s_ref[...] = s
    n, dv = s.shape[1], acc_scr.shape[1]
    m_prev = m_scr[...]
    m_next = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
    rep = -(-n // LANES)
    p = jnp.where(vld, jnp.exp(s - jnp.tile(m_next, (1, rep))[:, :n]), 0.0)
    alpha = jnp.exp(m_prev - m_next)
    l_scr[...] = alpha * l_scr[...] + p.sum(axis=1, keepdims=True)
    m_scr[...] = m_next
    pv = _mm(p.astype(v.dtype), v)
    acc_scr[...] = jnp.tile(alpha, (1, dv // LANES)) * acc_scr[...] + pv


def _kernel(q_ref, kc_ref, ks_ref, kz_ref, vc_ref, vs_ref, vz_ref, qv_ref, *refs, nseg, probs,
            bk, c, nblocks, group, bits, scale):
    segs = [refs[3 * i:3 * i + 3] for i in range(nseg)]
    refs = refs[3 * nseg:]
    o_ref, *refs = refs
    if probs:
        mo_ref, lo_ref, cs_ref, *refs = refs
        seg_s = refs[:nseg]
        refs = refs[nseg:]
    else:
        cs_ref, seg_s = None, [None] * nseg
    m_scr, l_scr, acc_scr = refs
    j = pl.program_id(2)
    dv = acc_scr.shape[1]

    @pl.when(j == 0)
    def _init():
        m_scr[...] = jnp.full(m_scr.shape, NEG, jnp.float32)
        l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
        acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

    q = q_ref[...].astype(jnp.float32)
    rows = j * bk + lax.broadcasted_iota(jnp.int32, (bk, 1), 0)
    in_c = rows < c
    # Repeat each block's key grid onto its G slots; rows past NB (last step) hold garbage,
    # zeroed first since the one-hot matmul would spread 0 * NaN.
    rep = _onehot(bk, bk // group, lambda r, cc: lax.div(r, group) == cc, ks_ref.dtype)
    nbk = bk // group
    blk_ok = j * nbk + lax.broadcasted_iota(jnp.int32, (nbk, 1), 0) < -(-c // group)
    ks = _mm(rep, jnp.where(blk_ok, ks_ref[...], 0))
    kz = _mm(rep, jnp.where(blk_ok, kz_ref[...], 0))
    keys = jnp.where(in_c, _codes(kc_ref[...], bits) * ks + kz, 0.0)
    spread = _onehot(dv // group, dv, lambda r, cc: lax.div(cc, group) == r, vs_ref.dtype)
    vs = jnp.where(in_c, vs_ref[...], 0)
    vz = jnp.where(in_c, vz_ref[...], 0)
    vals = _codes(vc_ref[...], bits) * _mm(vs, spread) + _mm(vz, spread)
    vals = jnp.where(in_c, vals, 0.0)
    _attend(q, keys, vals, qv_ref[...] != 0, cs_ref, scale, m_scr, l_scr, acc_scr)

    @pl.when(j == nblocks - 1)
    def _finish():
        for (k_ref, v_ref, ok_ref), s_ref in zip(segs, seg_s, strict=True):
            _attend(q, k_ref[...].astype(jnp.float32), v_ref[...].astype(jnp.float32),
                    ok_ref[...] != 0, s_ref, scale, m_scr, l_scr, acc_scr)
        den = l_scr[...]
        inv = jnp.where(den > 0, 1.0 / jnp.where(den > 0, den, 1.0), 0.0)
        o_ref[...] = (acc_scr[...] * jnp.tile(inv, (1, dv // LANES))).astype(o_ref.dtype)
        if probs:
            mo_ref[...] = m_scr[...]
            lo_ref[...] = den


def quant_decode_tpu(q, codes: QuantCodes, segments=(), *, scale=None, return_slot_probs=False,
                     block_k=None, interpret=False):
    """Same contract as ``quant_decode_reference``; ``interpret`` may be ``True`` or a
    ``pltpu.InterpretParams``."""
    b, h, g, c, d, dv, bits, group = check_inputs(q, codes, segments)
    reason = unsupported_reason(d, dv, group, block_k)
    if reason:
        raise ValueError(f"quant_decode_tpu: {reason}")
    scale = default_scale(scale, d)
    per = 16 // bits
    bk = block_k or max(256, group)
    nblocks = -(-c // bk)
    c_pad = nblocks * bk
    gp = -(-g // 8) * 8

    q4 = jnp.pad(q.reshape(b, h, g, d), ((0, 0), (0, 0), (0, gp - g), (0, 0)))
    valid = jnp.pad(codes.valid.astype(jnp.int32), ((0, 0), (0, 0), (0, c_pad - c)))[:, :, None]
    args = [q4, codes.k_codes, codes.k_scale, codes.k_zero, codes.v_codes, codes.v_scale,
            codes.v_zero, valid]
    blk = lambda w: pl.BlockSpec((None, None, bk, w), lambda i, hh, j: (i, hh, j, 0))  # noqa: E731
    in_specs = [pl.BlockSpec((None, None, gp, d), lambda i, hh, j: (i, hh, 0, 0)),
                blk(d // per),
                pl.BlockSpec((None, None, bk // group, d), lambda i, hh, j: (i, hh, j, 0)),
                pl.BlockSpec((None, None, bk // group, d), lambda i, hh, j: (i, hh, j, 0)),
                blk(dv // per), blk(dv // group), blk(dv // group),
                pl.BlockSpec((None, None, 1, bk), lambda i, hh, j: (i, hh, 0, j))]
    lens = []
    for seg in segments:
        n = seg.keys.shape[2]
        sp = -(-n // 8) * 8
        lens.append(sp)
        pad = ((0, 0), (0, 0), (0, sp - n))
        args += [jnp.pad(seg.keys, pad + ((0, 0),)), jnp.pad(seg.values, pad + ((0, 0),)),
                 jnp.pad(seg.valid.astype(jnp.int32), pad)[:, :, None]]
        in_specs += [pl.BlockSpec((None, None, sp, d), lambda i, hh, j: (i, hh, 0, 0)),
                     pl.BlockSpec((None, None, sp, dv), lambda i, hh, j: (i, hh, 0, 0)),
                     pl.BlockSpec((None, None, 1, sp), lambda i, hh, j: (i, hh, 0, 0))]
    f32 = jnp.float32
    out_shape = [jax.ShapeDtypeStruct((b, h, gp, dv), q.dtype)]
    out_specs = [pl.BlockSpec((None, None, gp, dv), lambda i, hh, j: (i, hh, 0, 0))]
    if return_slot_probs:
        out_shape += [jax.ShapeDtypeStruct((b, h, gp, LANES), f32)] * 2
        out_specs += [pl.BlockSpec((None, None, gp, LANES), lambda i, hh, j: (i, hh, 0, 0))] * 2
        out_shape.append(jax.ShapeDtypeStruct((b, h, gp, c_pad), f32))
        out_specs.append(pl.BlockSpec((None, None, gp, bk), lambda i, hh, j: (i, hh, 0, j)))
        for sp in lens:
            out_shape.append(jax.ShapeDtypeStruct((b, h, gp, sp), f32))
            out_specs.append(pl.BlockSpec((None, None, gp, sp), lambda i, hh, j: (i, hh, 0, 0)))
    kernel = functools.partial(_kernel, nseg=len(segments), probs=return_slot_probs, bk=bk, c=c,
                               nblocks=nblocks, group=group, bits=bits, scale=scale)
    outs = pl.pallas_call(
        kernel, grid=(b, h, nblocks), in_specs=in_specs, out_specs=out_specs,
        out_shape=out_shape,
        scratch_shapes=[pltpu.VMEM((gp, LANES), f32), pltpu.VMEM((gp, LANES), f32),
                        pltpu.VMEM((gp, dv), f32)],
        compiler_params=(None if interpret else pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary"))),
        interpret=interpret, name="lcache_quant_decode_tpu",
    )(*args)
    out = outs[0][:, :, :g].reshape(b, h * g, dv)
    if not return_slot_probs:
        return out
    m, den = outs[1][:, :, :g, 0], outs[2][:, :, :g, 0]
    lse = m + jnp.log(den)
    code_probs = slot_probs_from_scores(outs[3][:, :, :g, :c], lse, codes.valid)
    seg_probs = [slot_probs_from_scores(s[:, :, :g, :seg.keys.shape[2]], lse, seg.valid)
                 for s, seg in zip(outs[4:], segments, strict=True)]
    return out, (code_probs, seg_probs)
