"""Grouped-query attention over a set of keys with explicit masks, for every variant.

This is the pure-``jnp`` path used for training, prefill chunks and the XLA decode fallback.
Keys arrive already rotated; the mask carries causality, validity and policy windows.
"""

from __future__ import annotations

import jax.numpy as jnp

from lcache.attention.variants import attention_weights


def grouped_attention(q_BHGTD, k_BHSD, v_BHSE, mask_BHGTS, *, variant="softmax", scale=None,
                      sink_logit_HG=None, sigmoid_bias=0.0, return_weights=False,
                      bias_BHS=None):
    """Attention of ``T`` queries per group member over ``S`` keys.

    ``q [B, H, G, T, D]`` (``H`` key heads, ``G`` queries heads per key head), ``k [B, H, S, D]``,
    ``v [B, H, S, E]``, ``mask [B, H, G, T, S]`` bool (broadcastable). Returns
    ``out [B, H, G, T, E]`` in ``q.dtype`` and ``mass [B, H, S]`` float32: the weights summed
    over ``G`` and ``T`` (attention each key received), the feedback H2O-style policies need.
    ``bias [B, H, S]`` (optional) is added to each key's logits (a cache entry standing for
    several tokens: ``log`` of their number).
    With ``return_weights`` also the weights ``[B, H, G, T, S]`` float32 (for analysis).
    """
    scale = q_BHGTD.shape[-1] ** -0.5 if scale is None else scale
    logits = jnp.einsum("bhgtd,bhsd->bhgts", q_BHGTD, k_BHSD,
                        preferred_element_type=jnp.float32) * scale
    if bias_BHS is not None:
        logits = logits + bias_BHS[:, :, None, None, :]
    sink = None if sink_logit_HG is None else sink_logit_HG[None, :, :, None, None]
    weights = attention_weights(logits, mask_BHGTS, variant, sink_logit=sink,
                                sigmoid_bias=sigmoid_bias)
    out = jnp.einsum("bhgts,bhse->bhgte", weights.astype(v_BHSE.dtype), v_BHSE,
                     preferred_element_type=jnp.float32)
    if return_weights:
        return out.astype(q_BHGTD.dtype), weights.sum(axis=(2, 3)), weights
    return out.astype(q_BHGTD.dtype), weights.sum(axis=(2, 3))
