"""Pure-``jnp`` MLA absorbed decode over the latent cache: the test oracle and XLA fallback.

DeepSeek MLA with ``W_UK`` folded into the query (``lcache/model/mla.py``, 'absorb'): every query
head attends the same cache of latents ``c [dc]`` and shared RoPE keys ``k_r [dr]``:

    s[h, t] = scale * (q_latent[h] . c[t] + q_rope[h] . k_r[t]),   out[h] = softmax_t(s[h]) @ c

Shapes (the lcache latent cache has one head): ``q_latent [B, Hq, dc]``, ``q_rope [B, Hq, dr]``,
``latent [B, 1, C, dc]``, ``k_rope [B, 1, C, dr]`` (already rotated), ``valid [B, 1, C]`` bool.
Returns ``out_latent [B, Hq, dc]`` (``W_UV`` is applied by the caller) and optionally
``slot_probs [B, 1, C]``: the probabilities summed over all query heads.
"""

from __future__ import annotations

import jax.numpy as jnp

from pallas_kernels.decode.reference import decode_attention_reference


def check_inputs(q_latent, q_rope, latent, k_rope, valid):
    """Validates shapes/dtypes at trace time; returns ``(B, Hq, C, dc, dr)``."""
    if q_latent.ndim != 3 or q_rope.ndim != 3 or q_latent.shape[:2] != q_rope.shape[:2]:
        raise ValueError(f"q_latent/q_rope must be [B, Hq, dc]/[B, Hq, dr], got "
                         f"{q_latent.shape}/{q_rope.shape}")
    b, hq, dc = q_latent.shape
    dr = q_rope.shape[2]
    if latent.ndim != 4 or latent.shape[:2] != (b, 1) or latent.shape[3] != dc:
        raise ValueError(f"latent must be [B={b}, 1, C, dc={dc}], got {latent.shape}")
    c = latent.shape[2]
    if k_rope.shape != (b, 1, c, dr):
        raise ValueError(f"k_rope must be [B, 1, C, dr] = {[b, 1, c, dr]}, got {k_rope.shape}")
    if valid.shape != (b, 1, c) or valid.dtype != jnp.bool_:
        raise ValueError(f"valid must be bool [{b}, 1, {c}], got {valid.dtype}{list(valid.shape)}")
    return b, hq, c, dc, dr


def mla_decode_reference(q_latent, q_rope, latent, k_rope, valid, *, scale,
                         return_slot_probs=False):
    """Absorbed MLA decode in f32 (see the module docstring); ``scale`` is required (DeepSeek
    uses ``1/sqrt(dn + dr)``, not ``1/sqrt(dc + dr)``)."""
    check_inputs(q_latent, q_rope, latent, k_rope, valid)
    q = jnp.concatenate([q_latent.astype(jnp.float32), q_rope.astype(jnp.float32)], axis=-1)
    keys = jnp.concatenate([latent.astype(jnp.float32), k_rope.astype(jnp.float32)], axis=-1)
    res = decode_attention_reference(q, keys, latent, valid, scale=scale,
                                     return_slot_probs=return_slot_probs)
    if not return_slot_probs:
        return res.astype(q_latent.dtype)
    out, probs = res
    return out.astype(q_latent.dtype), probs
