"""Split-K decode over KIVI codes + full-precision segments: one portable ``pl.pallas_call``.

Grid ``(B, H, S + 1)``: programs ``s < S`` stream split ``s`` of the code slots (``CB`` slots
each); program ``S`` attends the full-precision segments (sinks, residual ring). Every program
writes a partial ``(m, den, acc)``; a small ``jnp`` step merges the ``S + 1`` by log-sum-exp.

Dequantization never materialises a scaled K or V tile. Per block of ``G`` slots (one key grid):
  * keys: ``s = (q * k_scale) @ codes^T + q . k_zero``: the per-channel scale folds into the
    query (``Gp x D`` multiplies per ``G`` slots) and the zero into one dot per row;
  * values, per group of ``G`` channels: ``acc_g += (p * v_scale_g) @ codes_g + p . v_zero_g``:
    the per-token scale folds into the probabilities.
Codes are unpacked with shifts and an interleave (``stack`` + ``reshape``, a register-level
``tt.join`` in Triton) into channel order, and turned into bf16 as ``bitcast(0x4300 | c) =
128 + c`` (exact for c < 128) with ``128 * rowsum`` subtracted after the dot: no int->float
conversion instruction. 8-bit codes use a plain conversion.

Sizes: ``G`` a power of 2 >= 16 (the MMA tiles are ``[Gp, G]``), ``D`` and ``Dv`` powers of 2
with ``D / P >= 16``; ``block_k`` (slots per loop step) a multiple of ``G``. Loads past ``C``
(last split) are masked (``pltr.load``), so no slot is read out of bounds on jax 0.11 either.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltr

from pallas_kernels.decode import gpu as dgpu
from pallas_kernels.decode.reference import default_scale
from pallas_kernels.quant_decode.reference import QuantCodes, check_inputs

NEG = dgpu.NEG
_NT = (((1,), (1,)), ((), ()))


def unsupported_reason(d, dv, bits, group, block_k=None):
    """Why the Triton kernel cannot take these sizes, or None."""
    per = 8 // bits
    if not (dgpu._is_pow2(d) and dgpu._is_pow2(dv)) or d // per < 16 or dv < 16:
        return f"head dims D={d}, Dv={dv} must be powers of 2 with D*bits/8 >= 16"
    if not dgpu._is_pow2(group) or group < 16 or group > dv:
        return f"group G={group} must be a power of 2 in [16, Dv={dv}]"
    if group // per < 1:
        return f"group G={group} too small for {bits}-bit codes"
    if block_k is not None and (not dgpu._is_pow2(block_k) or block_k % group):
        return f"block_k={block_k} must be a power of 2 and a multiple of G={group}"
    return None


def _interleave(a, b):
    """``[R, W]`` x2 -> ``[R, 2W]`` with ``out[:, 2j + t] = (a, b)[t][:, j]``."""
    r, w = a.shape
    return jnp.stack([a, b], axis=-1).reshape(r, 2 * w)


def unpack_codes(x_u8, bits):
    """``uint8 [R, W]`` -> ``uint16 [R, W * 8 // bits]`` codes in channel order."""
    x = x_u8.astype(jnp.uint16)
    if bits <= 4:
        x = _interleave(x & 15, x >> 4)
    if bits == 2:
        x = _interleave(x & 3, x >> 2)
    return x


def codes_to(x_u16, bits, dtype):
    """Codes as ``dtype`` plus a constant offset: ``(value, offset)``, ``value = code + offset``."""
    if dtype == jnp.bfloat16 and bits < 8:
        return lax.bitcast_convert_type(x_u16 | jnp.uint16(0x4300), jnp.bfloat16), 128.0
    return x_u16.astype(dtype), 0.0


def _rows(ref, start, n, limit, row0, col=None):
    """Masked load of local rows ``[start, start + n)`` (``n=None``: the single row ``start``,
    squeezed) of a ref, optionally of one column or column slice ``col``; rows whose global
    index (``row0 + local``) is ``>= limit`` read as 0."""
    rows = start if n is None else pl.ds(start, n)
    if isinstance(col, int):
        col = jnp.int32(col)  # a traced index: interpret mode's masked load needs a shape
    view = ref.at[rows] if col is None else ref.at[rows, col]
    if n is None:
        ok = jnp.full(view.shape, row0 + start < limit)
    else:
        ok = (row0 + start + lax.broadcasted_iota(jnp.int32, (n,), 0)) < limit
        if len(view.shape) == 2:
            ok = jnp.broadcast_to(ok[:, None], view.shape)
    return pltr.load(view, mask=ok, other=0)


def _codes_kernel(q_ref, kc_ref, ks_ref, kz_ref, vc_ref, vs_ref, vz_ref, qv_ref, m_ref, l_ref,
                  acc_ref, s_ref, split, *, nb, bk, c, cb, nblk, group, bits, scale, cdt):
    """Programs ``s < S``: ``nb`` steps of ``bk`` slots, ``bk / G`` key blocks per step."""
    gp, d = q_ref.shape
    dv = acc_ref.shape[-1]
    per, ng = 8 // bits, dv // group
    row0 = split * cb  # global index of this split's first slot
    q = q_ref[...].astype(jnp.float32)

    def block(carry, start):  # one block of G slots at local row ``start``
        m, den, accs = carry
        kb = start // group
        ks = _rows(ks_ref, kb, None, nblk, split * (cb // group)).astype(jnp.float32)
        kz = _rows(kz_ref, kb, None, nblk, split * (cb // group)).astype(jnp.float32)
        qs = (q * ks[None, :]).astype(cdt)
        kcode, off = codes_to(unpack_codes(_rows(kc_ref, start, group, c, row0), bits), bits,
                              cdt)
        s = lax.dot_general(qs, kcode, _NT, preferred_element_type=jnp.float32)
        zt = (q * kz[None, :]).sum(axis=1)
        if off:
            zt = zt - off * qs.astype(jnp.float32).sum(axis=1)
        s = (s + zt[:, None]) * scale
        vld = qv_ref[pl.ds(start, group)] != 0
        s = jnp.where(vld[None, :], s, NEG)  # [gp, G]
        if s_ref is not None:
            s_ref[:, pl.ds(start, group)] = s
        m_new = jnp.maximum(m, s.max(axis=1))
        p = jnp.where(vld[None, :], jnp.exp(s - m_new[:, None]), 0.0)
        alpha = jnp.exp(m - m_new)
        new_accs = []
        for gi in range(ng):
            cols = pl.ds(gi * (group // per), group // per)
            vcode, off = codes_to(unpack_codes(_rows(vc_ref, start, group, c, row0, cols), bits),
                                  bits, cdt)
            vs = jnp.where(vld, _rows(vs_ref, start, group, c, row0, gi).astype(jnp.float32), 0)
            vz = jnp.where(vld, _rows(vz_ref, start, group, c, row0, gi).astype(jnp.float32), 0)
            ps = (p * vs[None, :]).astype(cdt)
            pv = jnp.dot(ps, vcode, preferred_element_type=jnp.float32)  # [gp, G]
            zt = (p * vz[None, :]).sum(axis=1)
            if off:
                zt = zt - off * ps.astype(jnp.float32).sum(axis=1)
            new_accs.append(alpha[:, None] * accs[gi] + pv + zt[:, None])
        return m_new, alpha * den + p.sum(axis=1), tuple(new_accs)

    def body(i, carry):
        start = pl.multiple_of(i * bk, bk)
        for t in range(bk // group):
            carry = block(carry, start + t * group)
        return carry

    init = (jnp.full((gp,), NEG, jnp.float32), jnp.zeros((gp,), jnp.float32),
            tuple(jnp.zeros((gp, group), jnp.float32) for _ in range(ng)))
    m, den, accs = lax.fori_loop(0, nb, body, init)
    m_ref[...] = m
    l_ref[...] = den
    for gi in range(ng):
        acc_ref[:, pl.ds(gi * group, group)] = accs[gi]
    del d


def _segments_kernel(q_ref, segs, m_ref, l_ref, acc_ref, s_refs, *, blocks, scale, cdt):
    """Program ``S``: plain decode attention over each full-precision segment in turn."""
    gp = q_ref.shape[0]
    q = q_ref[...].astype(cdt)
    carry = (jnp.full((gp,), NEG, jnp.float32), jnp.zeros((gp,), jnp.float32),
             jnp.zeros(acc_ref.shape, jnp.float32))
    for (k_ref, v_ref, ok_ref), s_ref, bs in zip(segs, s_refs, blocks, strict=True):

        def body(i, carry, k_ref=k_ref, v_ref=v_ref, ok_ref=ok_ref, s_ref=s_ref, bs=bs):
            m, den, acc = carry
            rows = pl.ds(pl.multiple_of(i * bs, bs), bs)
            vld = ok_ref[rows] != 0
            k = k_ref[rows, :].astype(cdt)
            s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * scale
            s = jnp.where(vld[None, :], s, NEG)
            if s_ref is not None:
                s_ref[:, rows] = s
            m_new = jnp.maximum(m, s.max(axis=1))
            p = jnp.where(vld[None, :], jnp.exp(s - m_new[:, None]), 0.0)
            alpha = jnp.exp(m - m_new)
            v = v_ref[rows, :].astype(cdt)
            pv = jnp.dot(p.astype(cdt), v, preferred_element_type=jnp.float32)
            return m_new, alpha * den + p.sum(axis=1), alpha[:, None] * acc + pv

        carry = lax.fori_loop(0, k_ref.shape[0] // bs, body, carry)
    m_ref[...], l_ref[...], acc_ref[...] = carry


def _kernel(q_ref, kc_ref, ks_ref, kz_ref, vc_ref, vs_ref, vz_ref, qv_ref, *refs, nseg, probs,
            splits, blocks, **kw):
    segs = [refs[3 * i:3 * i + 3] for i in range(nseg)]
    m_ref, l_ref, acc_ref, *s_refs = refs[3 * nseg:]
    if not probs:
        s_refs = [None] * (nseg + 1)
    split = pl.program_id(2)  # read here: interpret mode cannot lower it inside a branch

    @pl.when(split < splits)
    def _codes():
        _codes_kernel(q_ref, kc_ref, ks_ref, kz_ref, vc_ref, vs_ref, vz_ref, qv_ref, m_ref,
                      l_ref, acc_ref, s_refs[0], split, **kw)

    if nseg:
        @pl.when(split == splits)
        def _segments():
            _segments_kernel(q_ref, segs, m_ref, l_ref, acc_ref, s_refs[1:], blocks=blocks,
                             scale=kw["scale"], cdt=kw["cdt"])


def _pad_axis(x, axis, size, value=0):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad, constant_values=value) if size != x.shape[axis] else x


def quant_decode_gpu(q, codes: QuantCodes, segments=(), *, scale=None, return_slot_probs=False,
                     block_k=None, num_splits=None, min_block_h=16, num_warps=4, num_stages=2,
                     interpret=False):
    """Same contract as ``quant_decode_reference``; see the module docstring for the design.

    Shapes: ``q [B, Hq, D]``; ``codes`` and ``segments`` as in ``reference.py``.
    ``block_k``: code slots per loop step (default ``max(G, 64)``); ``num_splits``: split-K
    factor over the code slots (default from the cost model of ``decode.gpu``).
    """
    dims = check_inputs(q, codes, segments)
    b, h, g, c, d, dv, bits, group = dims
    reason = unsupported_reason(d, dv, bits, group, block_k)
    if reason:
        raise ValueError(f"quant_decode_gpu: {reason}")
    scale = default_scale(scale, d)
    cdt = jnp.bfloat16 if q.dtype == jnp.bfloat16 else jnp.float32
    gp = max(min_block_h, dgpu._next_pow2(g))
    per = 8 // bits
    bk = block_k or max(group, 64)
    nblocks = dgpu._cdiv(c, bk)
    slot_bytes = (d + dv) // per + 2 * 2 * (dv // group) + 4 * d // group + 1
    tile = bk * slot_bytes
    splits = num_splits or dgpu.auto_num_splits(
        b * h, nblocks, dgpu.num_sms(), occ=2,  # register-bound: ~255 regs x 128 threads
        partial_blocks=2 * gp * (dv + 2) * 4 / tile)
    nb = dgpu._cdiv(nblocks, max(1, min(splits, nblocks)))
    splits = dgpu._cdiv(nblocks, nb)
    cb = nb * bk
    c_pad = splits * cb
    nblk = -(-c // group)

    last = splits - 1
    q4 = _pad_axis(q.reshape(b, h, g, d), 2, gp)
    valid8 = _pad_axis(codes.valid.astype(jnp.int8), 2, c_pad)
    args = [q4, codes.k_codes, codes.k_scale, codes.k_zero, codes.v_codes, codes.v_scale,
            codes.v_zero, valid8]
    cmap = lambda i, j, s: (i, j, jnp.minimum(s, last), 0)  # noqa: E731
    in_specs = [
        pl.BlockSpec((None, None, gp, d), lambda i, j, s: (i, j, 0, 0)),
        pl.BlockSpec((None, None, cb, d // per), cmap),
        pl.BlockSpec((None, None, cb // group, d), cmap),
        pl.BlockSpec((None, None, cb // group, d), cmap),
        pl.BlockSpec((None, None, cb, dv // per), cmap),
        pl.BlockSpec((None, None, cb, dv // group), cmap),
        pl.BlockSpec((None, None, cb, dv // group), cmap),
        pl.BlockSpec((None, None, cb), lambda i, j, s: (i, j, jnp.minimum(s, last))),
    ]
    blocks, seg_lens = [], []
    for seg in segments:
        n = seg.keys.shape[2]
        bs = min(64, max(16, dgpu._next_pow2(n)))
        sp = dgpu._cdiv(n, bs) * bs
        blocks.append(bs)
        seg_lens.append(sp)
        args += [_pad_axis(seg.keys, 2, sp), _pad_axis(seg.values, 2, sp),
                 _pad_axis(seg.valid.astype(jnp.int8), 2, sp)]
        in_specs += [pl.BlockSpec((None, None, sp, d), lambda i, j, s: (i, j, 0, 0)),
                     pl.BlockSpec((None, None, sp, dv), lambda i, j, s: (i, j, 0, 0)),
                     pl.BlockSpec((None, None, sp), lambda i, j, s: (i, j, 0))]
    nprog = splits + (1 if segments else 0)
    f32 = jnp.float32
    out_shape = [jax.ShapeDtypeStruct((b, h, nprog, gp), f32),
                 jax.ShapeDtypeStruct((b, h, nprog, gp), f32),
                 jax.ShapeDtypeStruct((b, h, nprog, gp, dv), f32)]
    out_specs = [pl.BlockSpec((None, None, None, gp), lambda i, j, s: (i, j, s, 0)),
                 pl.BlockSpec((None, None, None, gp), lambda i, j, s: (i, j, s, 0)),
                 pl.BlockSpec((None, None, None, gp, dv), lambda i, j, s: (i, j, s, 0, 0))]
    if return_slot_probs:
        out_shape.append(jax.ShapeDtypeStruct((b, h, gp, c_pad), f32))
        out_specs.append(pl.BlockSpec((None, None, gp, cb),
                                      lambda i, j, s: (i, j, 0, jnp.minimum(s, last))))
        for sp in seg_lens:
            out_shape.append(jax.ShapeDtypeStruct((b, h, gp, sp), f32))
            out_specs.append(pl.BlockSpec((None, None, gp, sp), lambda i, j, s: (i, j, 0, 0)))
    on_gpu = jax.default_backend() == "gpu" and not interpret
    kernel = functools.partial(
        _kernel, nseg=len(segments), probs=return_slot_probs, splits=splits, blocks=blocks,
        nb=nb, bk=bk, c=c, cb=cb, nblk=nblk, group=group, bits=bits, scale=scale, cdt=cdt)
    outs = pl.pallas_call(
        kernel, grid=(b, h, nprog), in_specs=in_specs, out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=(pltr.CompilerParams(num_warps=num_warps, num_stages=num_stages)
                         if on_gpu else None),
        interpret=interpret, name="lcache_quant_decode",
    )(*args)
    out, lse = dgpu.merge_splits(outs[0][..., :g], outs[1][..., :g], outs[2][..., :g, :])
    out = out.reshape(b, h * g, dv).astype(q.dtype)
    if not return_slot_probs:
        return out
    code_probs = dgpu.slot_probs_from_scores(outs[3][:, :, :g, :c], lse, codes.valid)
    seg_probs = [dgpu.slot_probs_from_scores(s[:, :, :g, :seg.keys.shape[2]], lse, seg.valid)
                 for s, seg in zip(outs[4:], segments, strict=True)]
    return out, (code_probs, seg_probs)
