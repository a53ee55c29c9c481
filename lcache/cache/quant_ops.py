"""KIVI quantization primitives: asymmetric min-max codes, packed into bytes (algorithms.md §8).

A group of numbers ``x`` shares ``zero`` (its minimum) and ``scale = (max - min) / L`` with
``L = 2**bits - 1``; ``q = clip(round((x - zero) / scale), 0, L)`` and ``x ≈ q * scale + zero``.
``scale`` and ``zero`` are stored in 16 bits (bf16 or f16) and rounded *outwards* (``zero``
down, ``scale`` up) so the stored grid still covers ``[min, max]``: every ``x`` of the group
dequantizes within ``scale / 2`` of itself (plus f32 rounding), whatever the 16-bit rounding.

Codes are packed into ``uint16`` words in bit planes along the last axis: with ``P = 16 / bits``
codes per word and ``W = D / P`` words per row, word ``j`` holds channel ``j + k * W`` in bits
``[k * bits, (k + 1) * bits)``, ``k < P``. This is the decode kernels' layout: a shift and a mask
give plane ``k`` as a contiguous block of channels, so no code is moved between lanes, and no
operand has 1-byte elements (whose offsets jax's Triton lowering computes in 32 bits up to
4 GiB; ``pallas_kernels/gpu_common.py``).
"""

from __future__ import annotations

import jax.numpy as jnp

BITS = (2, 4, 8)


def levels(bits: int) -> int:
    """``L = 2**bits - 1``, the largest code."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    return 2**bits - 1


def pack(codes, bits: int):
    """``codes [..., D]`` integers in ``[0, 2**bits)`` -> ``uint16 [..., D * bits // 16]``
    (bit planes, see the module docstring)."""
    levels(bits)
    per_word = 16 // bits
    d = codes.shape[-1]
    if d % per_word:
        raise ValueError(f"last axis {d} is not a multiple of {per_word} ({bits}-bit codes in "
                         "16-bit words)")
    planes = codes.astype(jnp.uint16).reshape(*codes.shape[:-1], per_word, d // per_word)
    shifts = (jnp.arange(per_word, dtype=jnp.uint16) * bits).astype(jnp.uint16)[:, None]
    # The shifted planes occupy disjoint bits, so their sum is their bitwise or.
    return jnp.sum(planes << shifts, axis=-2, dtype=jnp.uint16)


def unpack(packed, bits: int):
    """Inverse of :func:`pack`: ``uint16 [..., W]`` -> ``uint8 [..., W * 16 // bits]``."""
    per_word = 16 // bits
    shifts = (jnp.arange(per_word, dtype=jnp.uint16) * bits).astype(jnp.uint16)[:, None]
    codes = (packed[..., None, :] >> shifts) & jnp.uint16(levels(bits))
    return codes.astype(jnp.uint8).reshape(*packed.shape[:-1], packed.shape[-1] * per_word)


def minmax_params(lo, hi, bits: int, dtype):
    """Stored ``(scale, zero)`` in ``dtype`` for groups with range ``[lo, hi]`` (f32 arrays).

    ``zero <= lo`` and ``zero + L * scale >= hi`` hold for the stored (rounded) values.
    """
    lo, hi = jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)
    zero = lo.astype(dtype)
    zero = jnp.where(zero.astype(jnp.float32) > lo,
                     jnp.nextafter(zero, jnp.asarray(-jnp.inf, dtype)), zero)
    exact = (hi - zero.astype(jnp.float32)) / levels(bits)
    scale = exact.astype(dtype)
    scale = jnp.where(scale.astype(jnp.float32) < exact,
                      jnp.nextafter(scale, jnp.asarray(jnp.inf, dtype)), scale)
    return scale, zero


def quantize(x, scale, zero, bits: int):
    """``x`` (f32) on the grid ``(scale, zero)`` (broadcast to ``x``) -> uint8 codes."""
    s, z = scale.astype(jnp.float32), zero.astype(jnp.float32)
    q = jnp.round((x.astype(jnp.float32) - z) / jnp.where(s > 0, s, 1.0))
    return jnp.clip(jnp.where(s > 0, q, 0.0), 0, levels(bits)).astype(jnp.uint8)


def dequantize(codes, scale, zero):
    """``codes * scale + zero`` in f32 (``scale``/``zero`` broadcast to ``codes``)."""
    return codes.astype(jnp.float32) * scale.astype(jnp.float32) + zero.astype(jnp.float32)


# -- values: per token, groups of G along the head dim --------------------------------------
def quantize_per_token(x_NTD, bits: int, group: int, dtype):
    """``x [..., D]`` -> ``(packed [..., D*bits/16], scale [..., D/G], zero [..., D/G])``."""
    g = x_NTD.reshape(*x_NTD.shape[:-1], -1, group).astype(jnp.float32)
    scale, zero = minmax_params(g.min(-1), g.max(-1), bits, dtype)
    codes = quantize(g, scale[..., None], zero[..., None], bits)
    return pack(codes.reshape(x_NTD.shape), bits), scale, zero


def dequantize_per_token(packed, scale, zero, bits: int, group: int):
    """Inverse of :func:`quantize_per_token` -> f32 ``[..., D]``."""
    codes = unpack(packed, bits)
    g = codes.reshape(*codes.shape[:-1], -1, group)
    return dequantize(g, scale[..., None], zero[..., None]).reshape(codes.shape)


# -- keys: per channel, groups of G consecutive slots ----------------------------------------
def slot_blocks(x_BHCD, group: int, fill):
    """``[B, H, C, ...]`` -> ``[B, H, NB, G, ...]``, ``NB = ceil(C / G)``, padded with ``fill``."""
    c = x_BHCD.shape[2]
    nb = -(-c // group)
    pad = [(0, 0)] * x_BHCD.ndim
    pad[2] = (0, nb * group - c)
    x = jnp.pad(x_BHCD, pad, constant_values=fill)
    return x.reshape(*x.shape[:2], nb, group, *x.shape[3:])


def per_slot(block_param_BHND, group: int, capacity: int):
    """Block parameters ``[B, H, NB, D]`` repeated onto slots -> ``[B, H, C, D]``."""
    return jnp.repeat(block_param_BHND, group, axis=2)[:, :, :capacity]


def block_range(x_BHCD, member_BHC, group: int):
    """Per-channel ``(lo, hi)`` over the members of each block of G slots: ``[B, H, NB, D]``
    f32 (``+inf``/``-inf`` for blocks without members) and ``any [B, H, NB]``."""
    m = slot_blocks(member_BHC, group, False)[..., None]
    xb = slot_blocks(x_BHCD.astype(jnp.float32), group, 0.0)
    lo = jnp.where(m, xb, jnp.inf).min(axis=3)
    hi = jnp.where(m, xb, -jnp.inf).max(axis=3)
    return lo, hi, m[..., 0].any(axis=3)
