"""Split-K decode over KIVI codes + full-precision segments: one portable ``pl.pallas_call``.

Grid ``(B, H, S + 1)``: programs ``s < S`` stream split ``s`` of the code slots (``CB`` slots
each); program ``S`` attends the full-precision segments (sinks, residual ring). Every program
writes a partial ``(m, den, acc)``; a small ``jnp`` step merges the ``S + 1`` by log-sum-exp.

Per step of ``block_k`` slots the K and V tiles are dequantized in registers and attended as
bf16 tiles (one QK and one PV dot): codes are unpacked with shifts and an interleave
(``stack`` + ``reshape``, a register-level ``tt.join`` in Triton) into channel order, made exact
bf16 integers as ``bitcast(0x4300 | c) - 128`` (no int->float conversion instruction), and
scaled with packed bf16 FMAs by the key grids (one per channel per block of ``G`` slots,
repeated over the block's rows) and value grids (one per ``G`` channels per slot, repeated over
the group's columns). The dequantized values are the ones the reference path rounds to bf16.
8-bit codes (up to 255: not exact through the bit trick) are converted and scaled in f32.
Compiled for sm_90 (jax 0.11.2 IR, triton 3.6): ~900 instructions per 64-slot int4 step at
4 warps, 127 registers, 38 KB shared memory. (Folding the grids into the dot operands instead,
with per-group dots or row-extended operands, needed 2-3x more instructions: reductions.)

Sizes: ``G`` a power of 2 in [16, Dv], ``D`` and ``Dv`` powers of 2 with ``D / P >= 16``;
``block_k`` a multiple of ``G``. Every load is masked to rows ``< C`` (``pltr.load``), so no
slot is read out of bounds on jax 0.11 either, and the wrapper launches no padding ops.
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


def _rows(ref, start, n, limit, row0=0, col=None, other=0):
    """Masked load of local rows ``[start, start + n)`` of a ref (optionally of one column
    slice ``col``): rows whose global index ``row0 + local`` is ``>= limit`` read ``other``.
    Nothing past an array's end is read, also on jax 0.11 (no automatic bounds masks)."""
    view = ref.at[pl.ds(start, n)] if col is None else ref.at[pl.ds(start, n), col]
    ok = (row0 + start + lax.broadcasted_iota(jnp.int32, (n,), 0)) < limit
    if len(view.shape) == 2:
        ok = jnp.broadcast_to(ok[:, None], view.shape)
    return pltr.load(view, mask=ok, other=other)


def _repeat_rows(x, n):
    """``[r, c]`` -> ``[r * n, c]``, each row repeated ``n`` times."""
    r, c = x.shape
    return jnp.broadcast_to(x[:, None, :], (r, n, c)).reshape(r * n, c)


def _repeat_cols(x, n):
    """``[r, c]`` -> ``[r, c * n]``, each column repeated ``n`` times."""
    r, c = x.shape
    return jnp.broadcast_to(x[:, :, None], (r, c, n)).reshape(r, c * n)


def _dequant(codes_u8, scale, zero, spread, bits, cdt):
    """``codes * spread(scale) + spread(zero)`` -> ``cdt``, with ``scale``/``zero`` 16-bit
    grids and ``spread`` repeating them onto the tile (rows or column groups).

    bf16 with bits < 8: codes become exact bf16 integers as ``bitcast(0x4300 | c) - 128`` (no
    int->float conversion) and the FMA runs in bf16: the result is the dequantized value
    rounded to bf16, as the reference path stores it. Otherwise the FMA runs in f32.
    """
    x, off = codes_to(unpack_codes(codes_u8, bits), bits, cdt)
    if off:
        x = x - jnp.asarray(off, cdt)  # exact: 128 + c and 128 are bf16 integers
        return x * spread(scale.astype(cdt)) + spread(zero.astype(cdt))
    f32 = jnp.float32
    return (x.astype(f32) * spread(scale.astype(f32)) + spread(zero.astype(f32))).astype(cdt)


def _codes_kernel(q_ref, kc_ref, ks_ref, kz_ref, vc_ref, vs_ref, vz_ref, qv_ref, m_ref, l_ref,
                  acc_ref, s_ref, split, *, nb, bk, c, cb, nblk, g_q, group, bits, scale, cdt):
    """Programs ``s < S``: ``nb`` steps of ``bk`` slots (``bk / G`` key blocks each): the
    K and V tiles are dequantized in registers (per-block key grids repeated over their G
    rows, per-token value grids over their G channels), then attended as bf16 tiles."""
    gp, _ = q_ref.shape
    u = bk // group
    row0 = split * cb  # global index of this split's first slot
    q = _rows(q_ref, 0, gp, g_q).astype(cdt)  # padded query rows read 0
    rows_spread = functools.partial(_repeat_rows, n=group)
    cols_spread = functools.partial(_repeat_cols, n=group)

    def body(i, carry):
        m, den, acc = carry
        start = pl.multiple_of(i * bk, bk)
        kb0, kb_row0 = i * u, split * (cb // group)
        k = _dequant(_rows(kc_ref, start, bk, c, row0), _rows(ks_ref, kb0, u, nblk, kb_row0),
                     _rows(kz_ref, kb0, u, nblk, kb_row0), rows_spread, bits, cdt)  # [bk, D]
        s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * scale
        vld = _rows(qv_ref, start, bk, c, row0, other=False)
        s = jnp.where(vld[None, :], s, NEG)  # [gp, bk]
        if s_ref is not None:
            s_ref[:, pl.ds(start, bk)] = s
        m_new = jnp.maximum(m, s.max(axis=1))
        p = jnp.where(vld[None, :], jnp.exp(s - m_new[:, None]), 0.0)
        alpha = jnp.exp(m - m_new)
        v = _dequant(_rows(vc_ref, start, bk, c, row0), _rows(vs_ref, start, bk, c, row0),
                     _rows(vz_ref, start, bk, c, row0), cols_spread, bits, cdt)  # [bk, Dv]
        pv = jnp.dot(p.astype(cdt), v, preferred_element_type=jnp.float32)
        return m_new, alpha * den + p.sum(axis=1), alpha[:, None] * acc + pv

    init = (jnp.full((gp,), NEG, jnp.float32), jnp.zeros((gp,), jnp.float32),
            jnp.zeros(acc_ref.shape, jnp.float32))
    m, den, acc = lax.fori_loop(0, nb, body, init)
    m_ref[...] = m
    l_ref[...] = den
    acc_ref[...] = acc


def _segments_kernel(q_ref, segs, m_ref, l_ref, acc_ref, s_refs, *, blocks, g_q, scale, cdt):
    """Program ``S``: plain decode attention over each full-precision segment in turn."""
    gp = q_ref.shape[0]
    q = _rows(q_ref, 0, gp, g_q).astype(cdt)
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
                             g_q=kw["g_q"], scale=kw["scale"], cdt=kw["cdt"])


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
        b * h, nblocks, dgpu.num_sms(), occ=3,  # 127 registers x 128 threads, 38 KB smem
        partial_blocks=2 * gp * (dv + 2) * 4 / tile)
    nb = dgpu._cdiv(nblocks, max(1, min(splits, nblocks)))
    splits = dgpu._cdiv(nblocks, nb)
    cb = nb * bk
    c_pad = splits * cb
    nblk = -(-c // group)

    last = splits - 1
    # No padded copies of q or of the validity: rows past G / C are masked in-kernel.
    args = [q.reshape(b, h, g, d), codes.k_codes, codes.k_scale, codes.k_zero, codes.v_codes,
            codes.v_scale, codes.v_zero, codes.valid]
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
        nb=nb, bk=bk, c=c, cb=cb, nblk=nblk, g_q=g, group=group, bits=bits, scale=scale,
        cdt=cdt)
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
