"""Rotary position embeddings (Llama ``rotate_half`` convention) and their scaling variants.

``inv_freq [D/2]`` float32 holds every variant: 'none', 'linear' (position interpolation),
'ntk' (NTK-aware base change) and 'llama3' (Llama-3.1 wavelength-dependent scaling).
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np

ROPE_SCALINGS = ("none", "linear", "ntk", "llama3")


def inv_frequencies(head_dim: int, theta: float = 10000.0, scaling: str = "none",
                    factor: float = 1.0, low_freq_factor: float = 1.0,
                    high_freq_factor: float = 4.0, original_max_pos: int = 8192) -> np.ndarray:
    """``[head_dim // 2]`` float32 inverse frequencies (radians per position)."""
    if scaling not in ROPE_SCALINGS:
        raise ValueError(f"unknown rope scaling {scaling!r}; expected one of {ROPE_SCALINGS}")
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
    if scaling == "ntk":
        theta = theta * factor ** (head_dim / (head_dim - 2))
    inv = 1.0 / theta**exponents
    if scaling == "linear":
        inv = inv / factor
    elif scaling == "llama3":
        low_wavelen = original_max_pos / low_freq_factor
        high_wavelen = original_max_pos / high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (original_max_pos / wavelen - low_freq_factor) / (
            high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def apply_rope(x, pos, inv_freq):
    """Rotate ``x [..., T, D]`` by positions ``pos [..., T]`` (broadcastable); f32 math."""
    angle = pos.astype(jnp.float32)[..., None] * inv_freq  # [..., T, D/2]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


@functools.lru_cache(maxsize=64)
def model_inv_freq(cfg) -> np.ndarray:
    """``inv_frequencies`` for a ``ModelConfig`` (cached: configs are frozen and hashable)."""
    return inv_frequencies(cfg.head_size, cfg.rope_theta, cfg.rope_scaling, cfg.rope_factor,
                           cfg.rope_low_freq_factor, cfg.rope_high_freq_factor,
                           cfg.rope_original_max_pos)
