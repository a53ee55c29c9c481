"""Causal GQA prefill flash attention that also emits SnapKV observation-window scores
(without materialising ``T x T``): reference, GPU and TPU kernels."""

from pallas_kernels.prefill.ops import observation_scores, prefill_attention, prefill_flash
from pallas_kernels.prefill.reference import prefill_reference, scores_reference

__all__ = ["observation_scores", "prefill_attention", "prefill_flash", "prefill_reference",
           "scores_reference"]
