"""Causal GQA prefill flash attention that also emits SnapKV observation-window scores
(without materialising ``T x T``): reference, GPU and TPU kernels."""

from pallas_kernels.prefill.ops import prefill_attention
from pallas_kernels.prefill.reference import prefill_reference

__all__ = ["prefill_attention", "prefill_reference"]
