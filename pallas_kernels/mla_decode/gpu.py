"""Split-K MLA absorbed decode: a portable-subset ``pl.pallas_call`` (Triton on GPU).

Grid ``(Hq / block_h, B, S)``: one program per (query-head block, batch row, split). A program
loads its ``[block_h, dc + dr]`` queries once, streams its split's latent tiles
``c [block_k, dc]`` and ``k_r [block_k, dr]``, and uses ``c`` twice, as the key
(``q_latent @ c^T``) and as the value (``p @ c``). The head-block axis is the fastest-varying
one, so the ``Hq / block_h`` programs reading the same tile run together and all but one read
it from L2: HBM sees the latent once for all heads. Partials ``(m, den, acc [block_h, dc])``
are merged over the ``S`` splits by log-sum-exp in ``jnp``.

Cost model: per cached token ``2 * Hq * (2 dc + dr)`` FLOPs for ``2 (dc + dr)`` bytes, i.e.
about 240 FLOP/byte at Hq=128, dc=512, dr=64: above an H200's bf16 ridge (~206), so with many
heads the kernel is MMA-bound, not bandwidth-bound; at Hq=16 it is bandwidth-bound.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import gpu_common as gc
from pallas_kernels import splits as sp
from pallas_kernels.decode.reference import slot_probs_from_scores
from pallas_kernels.mla_decode.reference import check_inputs

NEG = gc.NEG


def unsupported_reason(dc, dr, block_h=None, block_k=None):
    """Why the Triton kernel cannot take these sizes, or None."""
    if not (gc.is_pow2(dc) and dc >= 16 and gc.is_pow2(dr) and dr >= 16):
        return f"latent dims dc={dc}, dr={dr} must be powers of 2 >= 16"
    for name, v in (("block_h", block_h), ("block_k", block_k)):
        if v is not None and not (gc.is_pow2(v) and v >= 16):
            return f"{name}={v} must be a power of 2 >= 16"
    return None


def _kernel(ql_ref, qr_ref, c_ref, kr_ref, valid_ref, m_ref, l_ref, acc_ref, *s_ref, nb, bk, c,
            cb, hq, scale):
    bh, dc = ql_ref.shape
    cdt = c_ref.dtype
    row0 = pl.program_id(2) * cb  # global index of this split's first slot
    h0 = pl.program_id(0) * bh
    ql = gc.load_rows(ql_ref, h0, hq).astype(cdt)  # heads past Hq read 0
    qr = gc.load_rows(qr_ref, h0, hq).astype(cdt)

    def body(i, carry):
        m, den, acc = carry
        start = pl.multiple_of(i * bk, bk)
        rows = pl.ds(start, bk)
        at = row0 + start
        vld = gc.load_rows(valid_ref.at[rows], at, c, other=False)
        lat = gc.load_rows(c_ref.at[rows, :], at, c)
        kr = gc.load_rows(kr_ref.at[rows, :], at, c).astype(cdt)
        s = (lax.dot_general(ql, lat, gc.DOT_NT, preferred_element_type=jnp.float32)
             + lax.dot_general(qr, kr, gc.DOT_NT, preferred_element_type=jnp.float32))
        s = jnp.where(vld[None, :], s * scale, NEG)  # [bh, bk]
        if s_ref:
            s_ref[0][:, rows] = s
        m_new = jnp.maximum(m, s.max(axis=1))
        p = jnp.where(vld[None, :], jnp.exp(s - m_new[:, None]), 0.0)
        alpha = jnp.exp(m - m_new)
        pv = jnp.dot(p.astype(cdt), lat, preferred_element_type=jnp.float32)
        return m_new, alpha * den + p.sum(axis=1), alpha[:, None] * acc + pv

    init = (jnp.full((bh,), NEG, jnp.float32), jnp.zeros((bh,), jnp.float32),
            jnp.zeros((bh, dc), jnp.float32))
    m, den, acc = lax.fori_loop(0, nb, body, init)
    m_ref[...] = m
    l_ref[...] = den
    acc_ref[...] = acc


def default_blocks(hq, dc, dr, itemsize=2):
    """``(block_h, block_k, num_warps, programs per SM)``. Compiled for sm_90 (triton 3.6,
    dc=512, dr=64, 8 warps): 16 heads x 64 slots take 128 registers/thread (2 programs per SM),
    32 x 32 take 173 (1 per SM), 64 x 32 spill. More heads per program read the latent from
    L2 fewer times; MLA with many heads is MMA-bound, so both are swept by the bench."""
    del dr, itemsize
    if hq <= 16 or dc > 512:
        return 16, 64, 8, 2
    return 32, 32, 8, 1


def auto_splits(b, nhb, nblocks, occ, sms=None, max_splits=256, min_blocks=4):
    """One wave: ``B * (Hq / block_h) * S ~= SMs * occ`` programs, >= ``min_blocks`` blocks
    each. Partials cost ``block_h * dc * 8`` bytes per program (written, then merged), so MLA
    never splits beyond a single wave."""
    sms = sms or gc.num_sms()
    want = gc.cdiv(sms * occ, b * nhb)
    return max(1, min(want, max_splits, nblocks // min_blocks))


def mla_decode_gpu(q_latent, q_rope, latent, k_rope, valid, *, scale, return_slot_probs=False,
                   block_h=None, block_k=None, num_splits=None, num_warps=None, num_stages=2,
                   interpret=False):
    """Same contract as ``mla_decode_reference``.

    Shapes: ``q_latent [B, Hq, dc]``, ``q_rope [B, Hq, dr]``, ``latent [B, 1, C, dc]``,
    ``k_rope [B, 1, C, dr]``, ``valid [B, 1, C]``. Returns ``out [B, Hq, dc]`` (and
    ``slot_probs [B, 1, C]``).
    """
    b, hq, c, dc, dr = check_inputs(q_latent, q_rope, latent, k_rope, valid)
    reason = unsupported_reason(dc, dr, block_h, block_k)
    if reason:
        raise ValueError(f"mla_decode_gpu: {reason}")
    dbh, dbk, dwarps, occ = default_blocks(hq, dc, dr, latent.dtype.itemsize)
    if block_h is not None and block_k is None:
        dbk = 64 if block_h <= 16 else 32
    bh, bk = block_h or dbh, block_k or dbk
    num_warps = num_warps or dwarps
    nhb = gc.cdiv(hq, bh)
    hp = nhb * bh
    nblocks = gc.cdiv(c, bk)
    splits = num_splits or auto_splits(b, nhb, nblocks, occ if bh == dbh else 1)
    splits, nb = sp.even_splits(nblocks, splits)
    cb = nb * bk
    c_pad = splits * cb

    # No padded copies: heads past Hq and slots past C are masked in-kernel.
    gc.check_offsets("mla_decode_gpu", latent=latent, k_rope=k_rope, valid=valid)
    args = [q_latent, q_rope, latent[:, 0], k_rope[:, 0], valid[:, 0]]
    in_specs = [pl.BlockSpec((None, bh, dc), lambda h, i, s: (i, h, 0)),
                pl.BlockSpec((None, bh, dr), lambda h, i, s: (i, h, 0)),
                pl.BlockSpec((None, cb, dc), lambda h, i, s: (i, s, 0)),
                pl.BlockSpec((None, cb, dr), lambda h, i, s: (i, s, 0)),
                pl.BlockSpec((None, cb), lambda h, i, s: (i, s))]
    f32 = jnp.float32
    out_shape = [jax.ShapeDtypeStruct((b, splits, hp), f32),
                 jax.ShapeDtypeStruct((b, splits, hp), f32),
                 jax.ShapeDtypeStruct((b, splits, hp, dc), f32)]
    out_specs = [pl.BlockSpec((None, None, bh), lambda h, i, s: (i, s, h)),
                 pl.BlockSpec((None, None, bh), lambda h, i, s: (i, s, h)),
                 pl.BlockSpec((None, None, bh, dc), lambda h, i, s: (i, s, h, 0))]
    if return_slot_probs:
        out_shape.append(jax.ShapeDtypeStruct((b, hp, c_pad), f32))
        out_specs.append(pl.BlockSpec((None, bh, cb), lambda h, i, s: (i, h, s)))
    kernel = functools.partial(_kernel, nb=nb, bk=bk, c=c, cb=cb, hq=hq, scale=float(scale))
    outs = pl.pallas_call(
        kernel, grid=(nhb, b, splits), in_specs=in_specs, out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=gc.compiler_params(num_warps, num_stages, interpret),
        interpret=interpret, name="lcache_mla_decode",
    )(*args)
    m, den, acc = outs[0][..., :hq], outs[1][..., :hq], outs[2][..., :hq, :]
    out, lse = gc.merge_splits(m, den, acc)  # [B, Hq, dc], [B, Hq]
    out = out.astype(q_latent.dtype)
    if not return_slot_probs:
        return out
    s = outs[3][:, None, :hq, :c]  # [B, 1, Hq, C]
    return out, slot_probs_from_scores(s, lse[:, None], valid)
