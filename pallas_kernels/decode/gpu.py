"""Split-K GQA decode attention: a portable-subset ``pl.pallas_call`` (Triton on GPU).

Portable subset (notes §1.3): BlockSpecs, an in-kernel ``lax.fori_loop`` over KV blocks, no
scratch, no scalar prefetch, power-of-2 loads. The same body runs through Triton on GPU and
``interpret=True`` on CPU.

Design:
  * grid ``(B, Hkv, S)``: one program per (batch, kv head, split); all ``G`` query heads of the
    kv head share it, so K/V are read from HBM exactly once. The ``G`` rows are padded to
    ``Gp = max(min_block_h, next_pow2(G))`` (16 by default, the smallest MMA tile; q is tiny).
  * split ``s`` owns slots ``[s*CB, (s+1)*CB)``, ``CB = nb * block_k``, and writes partial
    ``(m, den, acc)`` in f32; a small ``jnp`` step merges the ``S`` partials by log-sum-exp.
  * ``C`` not a multiple of ``CB``: K/V are NOT padded (that would copy the whole cache); their
    last block overhangs the array and every load is masked to rows ``< C`` (``pltr.load``:
    jax 0.11's Triton lowering adds no bounds masks), reading 0 there; the bool validity and
    the ``G`` query rows are read the same way, so the wrapper launches no padding ops.
  * RoPE on keys (``rope_pos``): rotated in f32 from the two halves loaded separately (no
    in-register slicing/concat), cast back to the cache dtype for the MMA.
  * ``block_k`` default: the largest power of 2 <= 128 whose K+V tiles take <= 64 KB, so two
    pipeline stages (``num_stages=2``) fit in shared memory: 128 at D=128 bf16, 64 at f32.
  * matmuls run in the cache dtype with f32 accumulation (``p`` is cast to the value dtype,
    as in flash attention); softmax statistics are f32.
  * slot probabilities: the kernel also writes the masked logits ``[B, Hkv, Gp, C]`` f32 and the
    merge turns them into ``sum_g exp(s - lse_g)``. K is read once; the cost is an extra write
    of ``4*Gp`` bytes/slot (64 B at Gp=16, i.e. +12.5% over the 512 B/slot of K+V at D=128
    bf16) and an XLA pass reading ``4*G`` bytes/slot.
  * a per-head sink logit (gpt-oss) joins the merge as one more softmax term with no value.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import gpu_common as gc
from pallas_kernels import splits as sp
from pallas_kernels.decode.reference import check_inputs, default_scale, slot_probs_from_scores

NEG = gc.NEG


def unsupported_reason(d, dv, block_k=None, rope=False):
    """Why the Triton kernel cannot take these sizes, or None."""
    if not (gc.is_pow2(d) and d >= 16) or not (gc.is_pow2(dv) and dv >= 16):
        return f"head dims D={d}, Dv={dv} must be powers of 2 >= 16"
    if rope and d < 32:
        return f"in-kernel RoPE needs D >= 32 (got D={d})"
    if block_k is not None and not (gc.is_pow2(block_k) and block_k >= 16):
        return f"block_k={block_k} must be a power of 2 >= 16"
    return None


def default_block_k(d, dv, c, itemsize=2, stage_bytes=64 << 10):
    """Largest power of 2 <= 128 whose K+V tiles fit ``stage_bytes`` (x num_stages=2 must fit
    the 227 KB of shared memory of an H100/H200 block): 128 at D=128 bf16, 64 at D=128 f32."""
    bk = 128
    while bk > 16 and bk * (d + dv) * itemsize > stage_bytes:
        bk //= 2
    return min(bk, max(16, gc.next_pow2(c)))


def plan(heads, c, d, dv, block_k=None, num_splits=None, itemsize=2, gp=16, num_stages=2):
    """``(block_k, num_splits, blocks per split)`` for ``heads = B*Hkv`` and capacity ``C``."""
    bk = block_k or default_block_k(d, dv, c, itemsize)
    nblocks = gc.cdiv(c, bk)
    tile = bk * (d + dv) * itemsize
    splits = num_splits or sp.auto_num_splits(
        heads, nblocks, gc.num_sms(), occ=sp.occupancy(tile, num_stages),
        partial_blocks=2 * gp * (dv + 2) * 4 / tile)
    splits, nb = sp.even_splits(nblocks, splits)
    return bk, splits, nb


def _kernel(q_ref, k_ref, v_ref, valid_ref, *refs, nb, bk, c, cb, g, scale, rope, probs):
    if rope:
        pos_ref, invf_ref, *refs = refs
    m_ref, l_ref, acc_ref, *s_ref = refs
    gp, d = q_ref.shape
    kdt = k_ref.dtype
    row0 = pl.program_id(2) * cb  # global index of this split's first slot
    if rope:
        h = d // 2
        q1 = gc.load_rows(q_ref.at[:, pl.ds(0, h)], 0, g).astype(kdt)  # padded rows read 0
        q2 = gc.load_rows(q_ref.at[:, pl.ds(h, h)], 0, g).astype(kdt)
        invf = invf_ref[...]
    else:
        q = gc.load_rows(q_ref, 0, g).astype(kdt)

    def body(i, carry):
        m, den, acc = carry
        start = pl.multiple_of(i * bk, bk)
        rows = pl.ds(start, bk)
        at = row0 + start
        vld = gc.load_rows(valid_ref.at[rows], at, c, other=False)  # [bk]
        if rope:
            pos = gc.load_rows(pos_ref.at[rows], at, c)
            ang = pos.astype(jnp.float32)[:, None] * invf[None, :]  # [bk, D/2]
            cos, sin = jnp.cos(ang), jnp.sin(ang)
            k1 = gc.load_rows(k_ref.at[rows, pl.ds(0, h)], at, c).astype(jnp.float32)
            k2 = gc.load_rows(k_ref.at[rows, pl.ds(h, h)], at, c).astype(jnp.float32)
            r1 = (k1 * cos - k2 * sin).astype(kdt)
            r2 = (k2 * cos + k1 * sin).astype(kdt)
            s = (lax.dot_general(q1, r1, gc.DOT_NT, preferred_element_type=jnp.float32)
                 + lax.dot_general(q2, r2, gc.DOT_NT, preferred_element_type=jnp.float32))
        else:
            k = gc.load_rows(k_ref.at[rows, :], at, c)
            s = lax.dot_general(q, k, gc.DOT_NT, preferred_element_type=jnp.float32)
        s = jnp.where(vld[None, :], s * scale, NEG)  # [gp, bk]
        if probs:
            s_ref[0][:, rows] = s
        m_new = jnp.maximum(m, s.max(axis=1))
        p = jnp.where(vld[None, :], jnp.exp(s - m_new[:, None]), 0.0)
        alpha = jnp.exp(m - m_new)
        v = gc.load_rows(v_ref.at[rows, :], at, c)  # rows past C read 0: no 0 * NaN
        pv = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        return m_new, alpha * den + p.sum(axis=1), alpha[:, None] * acc + pv

    dv = acc_ref.shape[-1]
    init = (jnp.full((gp,), NEG, jnp.float32), jnp.zeros((gp,), jnp.float32),
            jnp.zeros((gp, dv), jnp.float32))
    m, den, acc = lax.fori_loop(0, nb, body, init)
    m_ref[...] = m
    l_ref[...] = den
    acc_ref[...] = acc


def long_programs(heads, splits, slots_per_split, sms=None):
    """A few long programs: at most 2 per SM, each of >= 2048 slots, for a batch of at most
    16 KV heads. They then stream with 8 warps over 64-slot blocks, 3 stages deep: H100,
    B = 1 at 128K (32 splits of 4096 slots): 213 us against 225 us with the default 4 warps,
    128-slot blocks, 2 stages; at 32K (1024 slots per split) the default was as fast, and
    with many programs (B = 32) 8 warps lost (docs/bench/bench_kernels_h100_explore.csv)."""
    sms = sms or gc.num_sms()
    return heads <= 16 and heads * splits <= 2 * sms and slots_per_split >= 2048


def decode_attention_gpu(q, keys, values, valid, *, scale=None, rope_pos=None, inv_freq=None,
                         sink_logit=None, return_slot_probs=False, block_k=None,
                         num_splits=None, min_block_h=16, num_warps=None, num_stages=None,
                         interpret=False):
    """Split-K decode attention; same contract as ``decode_attention_reference``.

    Shapes: ``q [B, Hq, D]``, ``keys [B, Hkv, C, D]``, ``values [B, Hkv, C, Dv]``,
    ``valid [B, Hkv, C]``, ``rope_pos [B, Hkv, C]``, ``inv_freq [D/2]``, ``sink_logit [Hq]``
    (merged with the split partials, see ``gpu_common.merge_splits``). Returns
    ``out [B, Hq, Dv]`` (and ``slot_probs [B, Hkv, C]`` f32). ``num_splits=None`` picks the
    split count from ``B*Hkv``, the SM count and ``C`` (``auto_num_splits``).
    """
    b, hkv, g, c, d, dv = check_inputs(q, keys, values, valid, rope_pos, inv_freq, sink_logit)
    rope = rope_pos is not None
    reason = unsupported_reason(d, dv, block_k, rope)
    if reason:
        raise ValueError(f"decode_attention_gpu: {reason}")
    scale = default_scale(scale, d)
    gp = max(min_block_h, gc.next_pow2(g))
    isz = max(keys.dtype.itemsize, values.dtype.itemsize)
    if rope and block_k is None:  # RoPE's f32 sin/cos tiles spill registers at 128 rows
        block_k = min(64, default_block_k(d, dv, c, isz))
    bk, splits, nb = plan(b * hkv, c, d, dv, block_k, num_splits, isz, gp, num_stages or 2)
    if (block_k, num_warps, num_stages) == (None, None, None) and long_programs(
            b * hkv, splits, nb * bk) and bk == 128:
        bk, nb, num_warps, num_stages = 64, 2 * nb, 8, 3  # same slots per split
    cb = nb * bk
    c_pad = splits * cb

    # No padded copies: query rows past G and slots past C are masked in-kernel.
    gc.check_offsets("decode_attention_gpu", keys=keys, values=values, valid=valid)
    args = [q.reshape(b, hkv, g, d), keys, values, valid]
    in_specs = [
        pl.BlockSpec((None, None, gp, d), lambda i, j, s: (i, j, 0, 0)),
        pl.BlockSpec((None, None, cb, d), lambda i, j, s: (i, j, s, 0)),
        pl.BlockSpec((None, None, cb, dv), lambda i, j, s: (i, j, s, 0)),
        pl.BlockSpec((None, None, cb), lambda i, j, s: (i, j, s)),
    ]
    if rope:
        args += [rope_pos.astype(jnp.int32), inv_freq.astype(jnp.float32)]
        in_specs += [pl.BlockSpec((None, None, cb), lambda i, j, s: (i, j, s)),
                     pl.BlockSpec((d // 2,), lambda i, j, s: (0,))]
    f32 = jnp.float32
    out_shape = [jax.ShapeDtypeStruct((b, hkv, splits, gp), f32),
                 jax.ShapeDtypeStruct((b, hkv, splits, gp), f32),
                 jax.ShapeDtypeStruct((b, hkv, splits, gp, dv), f32)]
    out_specs = [pl.BlockSpec((None, None, None, gp), lambda i, j, s: (i, j, s, 0)),
                 pl.BlockSpec((None, None, None, gp), lambda i, j, s: (i, j, s, 0)),
                 pl.BlockSpec((None, None, None, gp, dv), lambda i, j, s: (i, j, s, 0, 0))]
    if return_slot_probs:
        out_shape.append(jax.ShapeDtypeStruct((b, hkv, gp, c_pad), f32))
        out_specs.append(pl.BlockSpec((None, None, gp, cb), lambda i, j, s: (i, j, 0, s)))
    kernel = functools.partial(_kernel, nb=nb, bk=bk, c=c, cb=cb, g=g, scale=scale, rope=rope,
                               probs=return_slot_probs)
    outs = pl.pallas_call(
        kernel,
        grid=(b, hkv, splits),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=gc.compiler_params(num_warps or 4, num_stages or 2, interpret),
        interpret=interpret,
        name="lcache_decode_splitk",
    )(*args)
    sink = None if sink_logit is None else sink_logit.astype(f32).reshape(hkv, g)
    out, lse = gc.merge_splits(outs[0][..., :g], outs[1][..., :g], outs[2][..., :g, :], sink)
    out = out.reshape(b, hkv * g, dv).astype(q.dtype)
    if not return_slot_probs:
        return out
    return out, slot_probs_from_scores(outs[3][:, :, :g, :c], lse, valid)
