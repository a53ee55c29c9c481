"""Attention weight functions (softmax alternatives) and gating helpers."""

from lcache.attention.variants import (
    SOFTMAX_LIKE,
    VARIANTS,
    attention_weights,
    denominator_offset,
    gate_output,
    is_softmax_like,
    proxy_scores,
    sigmoid_log_n_bias,
)

__all__ = [
    "SOFTMAX_LIKE",
    "VARIANTS",
    "attention_weights",
    "denominator_offset",
    "gate_output",
    "is_softmax_like",
    "proxy_scores",
    "sigmoid_log_n_bias",
]
