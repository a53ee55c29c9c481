"""Decode attention through cuDNN's fused flash attention: the end-to-end baseline of the Pallas
decode kernel (``attention_impl='cudnn'``, ``experiments.bench_decode``).

jax's cuDNN attention (``jax._src.cudnn.fused_attention_stablehlo``, the implementation behind
``jax.nn.dot_product_attention(implementation='cudnn')``) is called in its BNTH layout, which
reads the head-major cache ``[B, H, C, D]`` as it is stored (the public function takes BTNH
only: a transposed copy of the whole cache every step). Validity is an additive mask per query
head. GPU only, 16-bit inputs (``ModelConfig`` asks for bfloat16), softmax.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention


def cudnn_decode(q_BHqD, keys_BHCD, values_BHCE, valid_BHC, *, scale=None):
    """One query token per head over a cache: ``q [B, Hq, D]`` rotated, ``keys [B, H, C, D]``
    rotated, ``values [B, H, C, E]``, ``valid [B, H, C]`` bool -> ``out [B, Hq, E]``."""
    b, hq, d = q_BHqD.shape
    mask = jnp.repeat(valid_BHC, hq // keys_BHCD.shape[1], axis=1)[:, :, None]  # [B, Hq, 1, C]
    out = cudnn_attention.dot_product_attention(
        q_BHqD[:, :, None], keys_BHCD.astype(q_BHqD.dtype), values_BHCE.astype(q_BHqD.dtype),
        mask=mask, scale=d**-0.5 if scale is None else scale, qkv_layout="BNTH")
    return out[:, :, 0]
