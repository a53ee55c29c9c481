"""Split-K decode over KIVI codes + full-precision segments: one portable ``pl.pallas_call``.

Grid ``(B, H, S + 1)``: programs ``s < S`` stream split ``s`` of the code slots (``CB`` slots
each); program ``S`` attends the full-precision segments (sinks, residual ring). Every program
writes a partial ``(m, den, acc)``; a small ``jnp`` step merges the ``S + 1`` by log-sum-exp.

Layout (``lcache.cache.quant_ops``): codes are ``uint16`` words in bit planes, word ``j`` of a
row holding channel ``j + k * W`` in bits ``[k * bits, (k + 1) * bits)`` (``W = D * bits / 16``
words per row). Plane ``k`` is thus one shift and one mask away, already a contiguous block of
``W`` channels: nothing is interleaved, reshaped or moved between lanes.

A step covers ``block_k`` slots as ``block_k / G`` sub-blocks of ``G`` slots (one key grid
each). Per sub-block, every plane of the key words is dequantized in registers against that
block's per-channel grid (a row vector broadcast down the tile) and meets the matching ``W``
query channels in one dot: ``s = sum_k q_k . K_k^T``. Values go by chunks of ``min(G, W)``
channels of one plane, which share one per-token grid (a column vector broadcast across the
tile): ``acc_chunk += p . V_chunk``. Loads read exactly those row and column ranges, so the
dequantized tiles feed the dots without any slicing in registers.

Dequantization (``dequant``): 'asm' (GPU, bits < 8, bf16): per pair of words, inline PTX
``shr``, ``lop3`` (code | 0x4300: the bf16 number 128 + code, exact), ``sub.bf16x2`` (minus
128, exact) and ``fma.bf16x2`` with the grids: 4 instructions per 2 numbers, one rounding to
bf16 as the reference's dequantized values. 'jnp': the same with ``jnp`` ops (shift, mask,
or, bitcast; f32 for 8-bit codes, which the bit trick cannot hold), which Triton compiles
per element; it is also the interpret-mode path.

Sizes: ``G`` a power of 2 >= 16, ``D``/``Dv`` powers of 2 with ``W >= 16`` words per row (int8:
D >= 32, int4: D >= 64, int2: D >= 128); ``block_k`` a multiple of ``G``. Every load is masked
to rows ``< C``, and every operand has 2-byte or wider elements (``gpu_common.check_offsets``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltr

from pallas_kernels import gpu_common as gc
from pallas_kernels import splits as sp
from pallas_kernels.decode.reference import default_scale, slot_probs_from_scores
from pallas_kernels.quant_decode.reference import QuantCodes, check_inputs

DEQUANT = ("asm", "jnp")
NEG = gc.NEG


def unsupported_reason(d, dv, bits, group, block_k=None, dequant="asm"):
    """Why the Triton kernel cannot take these sizes, or None."""
    per = 16 // bits
    if not (gc.is_pow2(d) and gc.is_pow2(dv)) or d // per < 16 or dv // per < 16:
        return (f"head dims D={d}, Dv={dv} must be powers of 2 with >= 16 words of "
                f"{bits}-bit codes per row (D >= {16 * per})")
    if not gc.is_pow2(group) or group < 16:
        return f"group G={group} must be a power of 2 >= 16"
    if block_k is not None and (not gc.is_pow2(block_k) or block_k % group):
        return f"block_k={block_k} must be a power of 2 and a multiple of G={group}"
    if dequant not in DEQUANT:
        return f"dequant={dequant!r} must be one of {DEQUANT}"
    return None


def plane(words_u16, k, bits):
    """Codes of bit plane ``k`` of ``uint16`` words, as ``uint16``."""
    x = words_u16 >> jnp.uint16(k * bits) if k else words_u16
    return x & jnp.uint16(2**bits - 1) if (k + 1) * bits < 16 else x


def _asm(k, bits):
    """PTX for 2 words (one 32-bit register): plane ``k`` -> 2 bf16 ``code * s + z``."""
    mask = (2**bits - 1) * 0x10001
    shift = f"shr.b32 t, $1, {k * bits};" if k else "mov.b32 t, $1;"
    return ("{ .reg .b32 t, c; " + shift +
            f" lop3.b32 t, t, {mask:#010x}, 0x43004300, 0xEA;"  # (t & mask) | 0x43004300
            " mov.b32 c, 0x43004300; sub.rn.bf16x2 t, t, c;"  # (128 + code) - 128, exact
            " fma.rn.bf16x2 $0, t, $2, $3; }")


def dequant(words_u16, k, bits, scale, zero, cdt, how):
    """Plane ``k`` of ``words [R, W]`` times ``scale`` plus ``zero`` (both broadcastable to
    ``[R, W]``), in ``cdt`` (module docstring: 'asm' or 'jnp')."""
    shape = words_u16.shape
    scale, zero = jnp.broadcast_to(scale, shape), jnp.broadcast_to(zero, shape)
    if how == "asm" and bits < 8 and cdt == jnp.bfloat16:
        bf = jnp.bfloat16
        return pltr.elementwise_inline_asm(
            _asm(k, bits), args=[words_u16, scale.astype(bf), zero.astype(bf)],
            constraints="=r,r,r,r", pack=2,
            result_shape_dtypes=[jax.ShapeDtypeStruct(shape, bf)])[0]
    x = plane(words_u16, k, bits)
    if cdt == jnp.bfloat16 and bits < 8:
        x = lax.bitcast_convert_type(x | jnp.uint16(0x4300), cdt) - jnp.asarray(128, cdt)
        return x * scale.astype(cdt) + zero.astype(cdt)
    f32 = jnp.float32
    return (x.astype(f32) * scale.astype(f32) + zero.astype(f32)).astype(cdt)


def _codes_kernel(q_ref, kc_ref, ks_ref, kz_ref, vc_ref, vs_ref, vz_ref, qv_ref, m_ref, l_ref,
                  acc_ref, s_ref, split, *, nb, bk, c, cb, nblk, g_q, group, bits, scale, cdt,
                  how):
    """Programs ``s < S``: ``nb`` steps of ``bk`` slots, ``bk / G`` key blocks each."""
    gp = q_ref.shape[0]
    wk, wv = kc_ref.shape[1], vc_ref.shape[1]
    per = 16 // bits
    cw = min(group, wv)  # value channels per chunk: one plane, one grid
    chunks = [(k, j) for k in range(per) for j in range(wv // cw)]
    row0 = split * cb  # global index of this split's first slot
    blk0 = split * (cb // group)  # ... and of its first key block
    qk = [gc.load_rows(q_ref.at[:, pl.ds(k * wk, wk)], 0, g_q).astype(cdt) for k in range(per)]

    def body(i, carry):
        m, den, acc = carry
        start = pl.multiple_of(i * bk, bk)
        subs = []
        for u in range(bk // group):  # key blocks of this step
            r = start + u * group
            rows = pl.ds(r, group)
            words = gc.load_rows(kc_ref.at[rows], row0 + r, c)  # [G, Wk]
            blk = i * (bk // group) + u
            s = None
            for k in range(per):
                cols = pl.ds(k * wk, wk)
                ks = gc.load_rows(ks_ref.at[pl.ds(blk, 1), cols], blk0 + blk, nblk)  # [1, Wk]
                kz = gc.load_rows(kz_ref.at[pl.ds(blk, 1), cols], blk0 + blk, nblk)
                kdq = dequant(words, k, bits, ks, kz, cdt, how)
                part = lax.dot_general(qk[k], kdq, gc.DOT_NT, preferred_element_type=jnp.float32)
                s = part if s is None else s + part
            vld = gc.load_rows(qv_ref.at[rows], row0 + r, c, other=False)
            s = jnp.where(vld[None, :], s * scale, NEG)  # [gp, G]
            if s_ref is not None:
                s_ref[:, rows] = s
            subs.append((r, vld, s))
        m_new = m
        for _, _, s in subs:
            m_new = jnp.maximum(m_new, s.max(axis=1))
        alpha = jnp.exp(m - m_new)
        den = alpha * den
        acc = [alpha[:, None] * a for a in acc]
        for r, vld, s in subs:
            rows = pl.ds(r, group)
            p = jnp.where(vld[None, :], jnp.exp(s - m_new[:, None]), 0.0)
            den = den + p.sum(axis=1)
            pc = p.astype(cdt)
            for n, (k, j) in enumerate(chunks):
                words = gc.load_rows(vc_ref.at[rows, pl.ds(j * cw, cw)], row0 + r, c)  # [G, cw]
                gamma = (k * wv + j * cw) // group
                vs = gc.load_rows(vs_ref.at[rows, pl.ds(gamma, 1)], row0 + r, c)  # [G, 1]
                vz = gc.load_rows(vz_ref.at[rows, pl.ds(gamma, 1)], row0 + r, c)
                vdq = dequant(words, k, bits, vs, vz, cdt, how)
                acc[n] = acc[n] + jnp.dot(pc, vdq, preferred_element_type=jnp.float32)
        return m_new, den, acc

    init = (jnp.full((gp,), NEG, jnp.float32), jnp.zeros((gp,), jnp.float32),
            [jnp.zeros((gp, cw), jnp.float32) for _ in chunks])
    m, den, acc = lax.fori_loop(0, nb, body, init)
    m_ref[...] = m
    l_ref[...] = den
    for (k, j), a in zip(chunks, acc, strict=True):
        acc_ref[:, pl.ds(k * wv + j * cw, cw)] = a


def _segments_kernel(q_ref, segs, m_ref, l_ref, acc_ref, s_refs, *, blocks, g_q, scale, cdt):
    """Program ``S``: plain decode attention over each full-precision segment in turn."""
    gp = q_ref.shape[0]
    q = gc.load_rows(q_ref, 0, g_q).astype(cdt)
    carry = (jnp.full((gp,), NEG, jnp.float32), jnp.zeros((gp,), jnp.float32),
             jnp.zeros(acc_ref.shape, jnp.float32))
    for (k_ref, v_ref, ok_ref), s_ref, bs in zip(segs, s_refs, blocks, strict=True):

        def body(i, carry, k_ref=k_ref, v_ref=v_ref, ok_ref=ok_ref, s_ref=s_ref, bs=bs):
            m, den, acc = carry
            rows = pl.ds(pl.multiple_of(i * bs, bs), bs)
            vld = ok_ref[rows] != 0
            k = k_ref[rows, :].astype(cdt)
            s = lax.dot_general(q, k, gc.DOT_NT, preferred_element_type=jnp.float32) * scale
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


def default_block_k(group):
    """Code slots per loop step: 64 (two key blocks at G = 32), at least one key block."""
    return max(group, 64)


def quant_decode_gpu(q, codes: QuantCodes, segments=(), *, scale=None, sink_logit=None,
                     return_slot_probs=False, block_k=None, num_splits=None, dequant="asm",
                     min_block_h=16, num_warps=4, num_stages=2, interpret=False):
    """Same contract as ``quant_decode_reference``; see the module docstring for the design.

    Shapes: ``q [B, Hq, D]``; ``codes`` and ``segments`` as in ``reference.py``; ``sink_logit
    [Hq]`` joins the merge of the partials (``gpu_common.merge_splits``).
    ``block_k``: code slots per loop step; ``num_splits``: split-K factor over the code slots
    (default from ``splits.auto_num_splits``); ``dequant``: 'asm' or 'jnp' ('asm' becomes
    'jnp' in interpret mode, where no PTX runs).
    """
    b, h, g, c, d, dv, bits, group = check_inputs(q, codes, segments, sink_logit)
    reason = unsupported_reason(d, dv, bits, group, block_k, dequant)
    if reason:
        raise ValueError(f"quant_decode_gpu: {reason}")
    gc.check_offsets("quant_decode_gpu", **codes._asdict())
    scale = default_scale(scale, d)
    cdt = jnp.bfloat16 if q.dtype == jnp.bfloat16 else jnp.float32
    gp = max(min_block_h, gc.next_pow2(g))
    per = 16 // bits
    bk = block_k or default_block_k(group)
    nblocks = gc.cdiv(c, bk)
    slot_bytes = 2 * (d + dv) // per + 2 * 2 * (dv // group) + 4 * d // group + 1
    tile = bk * slot_bytes
    splits = num_splits or sp.auto_num_splits(
        b * h, nblocks, gc.num_sms(), occ=sp.occupancy(tile, num_stages),
        partial_blocks=2 * gp * (dv + 2) * 4 / tile)
    splits, nb = sp.even_splits(nblocks, splits)
    cb = nb * bk
    c_pad = splits * cb
    nblk = gc.cdiv(c, group)

    last = splits - 1
    # No padded copies of q or of the codes: rows past G / C are masked in-kernel.
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
        bs = min(64, max(16, gc.next_pow2(n)))
        sl = gc.cdiv(n, bs) * bs
        blocks.append(bs)
        seg_lens.append(sl)
        args += [_pad_axis(seg.keys, 2, sl), _pad_axis(seg.values, 2, sl),
                 _pad_axis(seg.valid.astype(jnp.int8), 2, sl)]
        in_specs += [pl.BlockSpec((None, None, sl, d), lambda i, j, s: (i, j, 0, 0)),
                     pl.BlockSpec((None, None, sl, dv), lambda i, j, s: (i, j, 0, 0)),
                     pl.BlockSpec((None, None, sl), lambda i, j, s: (i, j, 0))]
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
        for sl in seg_lens:
            out_shape.append(jax.ShapeDtypeStruct((b, h, gp, sl), f32))
            out_specs.append(pl.BlockSpec((None, None, gp, sl), lambda i, j, s: (i, j, 0, 0)))
    how = "jnp" if interpret or jax.default_backend() != "gpu" else dequant
    kernel = functools.partial(
        _kernel, nseg=len(segments), probs=return_slot_probs, splits=splits, blocks=blocks,
        nb=nb, bk=bk, c=c, cb=cb, nblk=nblk, g_q=g, group=group, bits=bits, scale=scale,
        cdt=cdt, how=how)
    outs = pl.pallas_call(
        kernel, grid=(b, h, nprog), in_specs=in_specs, out_specs=out_specs,
        out_shape=out_shape, compiler_params=gc.compiler_params(num_warps, num_stages, interpret),
        interpret=interpret, name="lcache_quant_decode",
    )(*args)
    sink = None if sink_logit is None else sink_logit.astype(f32).reshape(h, g)
    out, lse = gc.merge_splits(outs[0][..., :g], outs[1][..., :g], outs[2][..., :g, :], sink)
    out = out.reshape(b, h * g, dv).astype(q.dtype)
    if not return_slot_probs:
        return out
    code_probs = slot_probs_from_scores(outs[3][:, :, :g, :c], lse, codes.valid)
    seg_probs = [slot_probs_from_scores(s[:, :, :g, :seg.keys.shape[2]], lse, seg.valid)
                 for s, seg in zip(outs[4:], segments, strict=True)]
    return out, (code_probs, seg_probs)
