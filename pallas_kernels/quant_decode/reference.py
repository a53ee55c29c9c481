"""Pure-``jnp`` decode attention over a KIVI-quantized cache plus full-precision segments.

The layout is the one of ``lcache.cache.quantized`` (``bits`` in {2, 4, 8}, ``P = 16 // bits``
codes per ``uint16`` word in bit planes: word ``j`` of a row of ``W = D / P`` words holds
channel ``j + k * W`` in bits ``[k * bits, (k + 1) * bits)``; ``G`` = group):

* ``k_codes [B, H, C, D/P]`` uint16, ``k_scale``/``k_zero [B, H, NB, D]`` (16-bit): one grid per
  channel per block of ``G`` consecutive slots, ``NB = ceil(C / G)``;
* ``v_codes [B, H, C, Dv/P]`` uint16, ``v_scale``/``v_zero [B, H, C, Dv/G]``: one grid per slot
  per ``G`` consecutive channels;
* ``valid [B, H, C]`` bool: the slots served by the codes (not sinks, not residual);
* full-precision ``Segment``s (the sinks, the residual ring): ``keys [B, H, S, D]``,
  ``values [B, H, S, Dv]``, ``valid [B, H, S]``.

Attention is the softmax over the union of the valid code slots and valid segment entries;
``bits`` and ``G`` are read off the shapes (``D`` comes from ``q``). This module is the test
oracle and the XLA fallback: dequantize in f32, concatenate, then ``decode_attention_reference``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels.decode.reference import decode_attention_reference


class QuantCodes(NamedTuple):
    """Quantized slots of one layer (shapes in the module docstring)."""

    k_codes: jax.Array
    k_scale: jax.Array
    k_zero: jax.Array
    v_codes: jax.Array
    v_scale: jax.Array
    v_zero: jax.Array
    valid: jax.Array


class Segment(NamedTuple):
    """Full-precision entries attended with the codes: ``keys [B, H, S, D]``,
    ``values [B, H, S, Dv]``, ``valid [B, H, S]`` bool."""

    keys: jax.Array
    values: jax.Array
    valid: jax.Array


class QuantDims(NamedTuple):
    b: int
    h: int
    g: int  # query heads per kv head
    c: int
    d: int
    dv: int
    bits: int
    group: int


def check_inputs(q, codes: QuantCodes, segments=(), sink_logit=None) -> QuantDims:
    """Validates shapes/dtypes at trace time and derives ``bits`` and ``group`` from them."""
    if q.ndim != 3:
        raise ValueError(f"q must be [B, Hq, D], got {q.shape}")
    b, hq, d = q.shape
    kc, vc = codes.k_codes, codes.v_codes
    if kc.ndim != 4 or vc.ndim != 4 or kc.dtype != jnp.uint16 or vc.dtype != jnp.uint16:
        raise ValueError(f"k_codes/v_codes must be uint16 [B, H, C, .], got "
                         f"{kc.dtype}{kc.shape} and {vc.dtype}{vc.shape}")
    _, h, c, kw = kc.shape
    if kc.shape[:3] != (b, h, c) or vc.shape[:3] != (b, h, c):
        raise ValueError(f"codes {kc.shape}/{vc.shape} must share [B={b}, H, C]")
    if hq % h:
        raise ValueError(f"Hq={hq} must be a multiple of the cache heads H={h}")
    if (16 * kw) % d or (16 * kw) // d not in (2, 4, 8) or d % (16 // ((16 * kw) // d)):
        raise ValueError(f"k_codes last dim {kw} does not pack D={d} into 2/4/8-bit codes")
    bits = 16 * kw // d
    dv = vc.shape[3] * 16 // bits
    ng = codes.v_scale.shape[-1]
    if ng < 1 or dv % ng:
        raise ValueError(f"v_scale {codes.v_scale.shape}: Dv={dv} is not a multiple of its "
                         "last dim")
    group = dv // ng
    nb = -(-c // group)
    want = {"k_scale": (b, h, nb, d), "k_zero": (b, h, nb, d), "v_scale": (b, h, c, ng),
            "v_zero": (b, h, c, ng)}
    for name, shape in want.items():
        x = getattr(codes, name)
        if x.shape != shape or not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{name} must be float {list(shape)} (bits={bits}, G={group}), got "
                             f"{x.dtype}{list(x.shape)}")
    if codes.valid.shape != (b, h, c) or codes.valid.dtype != jnp.bool_:
        raise ValueError(f"codes.valid must be bool [{b}, {h}, {c}], got "
                         f"{codes.valid.dtype}{list(codes.valid.shape)}")
    for i, seg in enumerate(segments):
        s = seg.keys.shape[2] if seg.keys.ndim == 4 else -1
        if (seg.keys.shape != (b, h, s, d) or seg.values.shape != (b, h, s, dv)
                or seg.valid.shape != (b, h, s) or seg.valid.dtype != jnp.bool_):
            raise ValueError(f"segment {i}: keys/values/valid must be [B, H, S, D={d}]/"
                             f"[B, H, S, Dv={dv}]/bool [B, H, S], got {seg.keys.shape}/"
                             f"{seg.values.shape}/{seg.valid.dtype}{list(seg.valid.shape)}")
    if sink_logit is not None and (sink_logit.shape != (hq,) or not jnp.issubdtype(
            sink_logit.dtype, jnp.floating)):
        raise ValueError(f"sink_logit must be float [Hq] = [{hq}], got "
                         f"{sink_logit.dtype}{list(sink_logit.shape)}")
    return QuantDims(b, h, hq // h, c, d, dv, bits, group)


def unpack(packed, bits):
    """``uint16 [..., W]`` words -> ``uint16 [..., W * 16 // bits]`` codes in channel order."""
    per = 16 // bits
    shifts = (jnp.arange(per, dtype=jnp.uint16) * bits).astype(jnp.uint16)[:, None]
    x = (packed[..., None, :] >> shifts) & jnp.uint16(2**bits - 1)
    return x.reshape(*packed.shape[:-1], packed.shape[-1] * per)


def dequantize(codes: QuantCodes, bits: int, group: int):
    """``(keys [B, H, C, D], values [B, H, C, Dv])`` in f32."""
    c = codes.k_codes.shape[2]
    kq = unpack(codes.k_codes, bits).astype(jnp.float32)
    ks = jnp.repeat(codes.k_scale.astype(jnp.float32), group, axis=2)[:, :, :c]
    kz = jnp.repeat(codes.k_zero.astype(jnp.float32), group, axis=2)[:, :, :c]
    vq = unpack(codes.v_codes, bits).astype(jnp.float32)
    vq = vq.reshape(*vq.shape[:-1], -1, group)
    v = vq * codes.v_scale.astype(jnp.float32)[..., None] + codes.v_zero.astype(
        jnp.float32)[..., None]
    return kq * ks + kz, v.reshape(*v.shape[:-2], -1)


def quant_decode_reference(q, codes: QuantCodes, segments=(), *, scale=None, sink_logit=None,
                           return_slot_probs=False):
    """Decode attention over the codes and the segments, in f32 (``sink_logit [Hq]``: an extra
    softmax term per head with no value, as in ``decode_attention_reference``).

    Returns ``out [B, Hq, Dv]`` in ``q.dtype`` (zeros for a head with nothing valid) and, if
    ``return_slot_probs``, ``(code_probs [B, H, C], [seg_probs [B, H, S_i], ...])`` f32: the
    probabilities summed over each kv head's query group, 0 at invalid entries.
    """
    dims = check_inputs(q, codes, segments)
    keys, values = dequantize(codes, dims.bits, dims.group)
    keys = jnp.concatenate([keys] + [s.keys.astype(jnp.float32) for s in segments], axis=2)
    values = jnp.concatenate([values] + [s.values.astype(jnp.float32) for s in segments], axis=2)
    valid = jnp.concatenate([codes.valid] + [s.valid for s in segments], axis=2)
    scale = 1.0 / dims.d ** 0.5 if scale is None else scale
    res = decode_attention_reference(q, keys, values, valid, scale=scale, sink_logit=sink_logit,
                                     return_slot_probs=return_slot_probs)
    if not return_slot_probs:
        return res
    out, probs = res
    return out, split_probs(probs, dims.c, segments)


def split_probs(probs_BHT, c, segments):
    """``[B, H, C + sum S_i]`` -> ``(codes [B, H, C], [segment i [B, H, S_i]])``."""
    parts, start = [], c
    for seg in segments:
        parts.append(probs_BHT[:, :, start:start + seg.keys.shape[2]])
        start += seg.keys.shape[2]
    return probs_BHT[:, :, :c], parts
