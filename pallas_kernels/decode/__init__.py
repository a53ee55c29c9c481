"""Decode attention (one query token) over a head-major KV cache: reference, GPU, TPU kernels."""

from pallas_kernels.decode.ops import decode_attention
from pallas_kernels.decode.reference import decode_attention_reference

__all__ = ["decode_attention", "decode_attention_reference"]
