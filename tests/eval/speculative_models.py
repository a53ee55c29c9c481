"""Shared by the speculative-decoding tests: tiny random register models and their policies."""

from flax import nnx

from lcache.cache import registry
from lcache.eval import Engine, ProgramCache
from lcache.model import ModelConfig, Transformer

SMALL_VOCAB = dict(vocab_size=6, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=64)
PROMPTS = [[1, 2, 3, 4, 5] * 6, [5, 4, 3] * 5, [2] * 23]


def make_engine(seed=0, **kw):
    """An engine over an untrained model with 3 register offsets (``kw`` overrides config)."""
    model = Transformer(ModelConfig(**(SMALL_VOCAB | dict(register_depth=3) | kw)),
                        nnx.Rngs(seed))
    return Engine.create(model, ProgramCache())


def make_policy(spec, engine):
    """``spec`` at a 16-token budget for the 32-token prompts and 16 new tokens."""
    return registry.build(spec, 16, prompt_len=32, max_new=16, num_layers=2,
                          num_model_sinks=engine.cfg.num_sink_tokens)
