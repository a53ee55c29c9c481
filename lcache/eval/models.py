"""Models to evaluate: a checkpoint directory, or an untrained byte-level stand-in that makes
smoke runs cheap (small graphs compile fast)."""

from __future__ import annotations

from flax import nnx

from lcache.checkpoint import load_model
from lcache.data import ByteTokenizer
from lcache.model import ModelConfig, Transformer

RANDOM_MODELS = {
    "random": dict(dim=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=160),
    "random-sink": dict(dim=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=160,
                        num_sink_tokens=1),
    "random-registers": dict(dim=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=160,
                             register_depth=3),
}


def load_reference(model_dir: str, compute_dtype: str = "float32"):
    """-> ``(model, tokenizer)`` from a checkpoint directory, or an untrained byte-level model
    for ``model_dir`` in ``RANDOM_MODELS``. float32 compute by default (CPUs lack fast bf16).

    Raises ValueError when the weights do not match the checkpoint's config (``load_model``) or
    the checkpoint ships no tokenizer of the model's vocabulary."""
    if model_dir in RANDOM_MODELS:
        cfg = ModelConfig(**RANDOM_MODELS[model_dir], compute_dtype=compute_dtype)
        return Transformer(cfg, nnx.Rngs(0)), ByteTokenizer()
    model, tok, _ = load_model(model_dir, compute_dtype=compute_dtype)
    if tok is None or tok.vocab_size != model.cfg.vocab_size:
        raise ValueError(f"checkpoint {model_dir!r}: tokenizer vocabulary "
                         f"{getattr(tok, 'vocab_size', None)} does not match the model's "
                         f"{model.cfg.vocab_size}")
    return model, tok
