"""Tests of ``lcache.eval``: a tiny random model (compiling is most of the cost)."""

import jax
import pytest
from flax import nnx

from lcache.model import ModelConfig, Transformer

TINY = dict(vocab_size=61, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=96)


@pytest.fixture(autouse=True)
def _compile_less():
    """Little XLA optimisation while these tests compile (same results, less CPU time)."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(scope="package")
def model():
    return Transformer(ModelConfig(**TINY), nnx.Rngs(0))


@pytest.fixture(scope="package")
def sink_model():
    return Transformer(ModelConfig(**TINY, num_sink_tokens=1), nnx.Rngs(1))
