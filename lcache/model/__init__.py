"""Llama-style decoder LM (Flax NNX) with cached inference through cache policies."""

from lcache.model.config import ATTENTION_VARIANTS, ModelConfig
from lcache.model.rope import apply_rope, inv_frequencies
from lcache.model.transformer import Transformer

__all__ = ["ATTENTION_VARIANTS", "ModelConfig", "Transformer", "apply_rope", "inv_frequencies"]
