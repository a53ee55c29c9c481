"""Layer-stacked caches (one lax.scan over the blocks) compute what the per-layer loop does."""

import jax
import numpy as np
import pytest
from flax import nnx

from lcache.cache import (
    H2O,
    Dense,
    Recompress,
    SnapKV,
    StreamingLLM,
    quantized,
)
from lcache.eval import Engine, ProgramCache
from lcache.model import ModelConfig, Transformer
from lcache.model.layer_stack import LayerStack
from lcache.sampling import Sampling

TINY = dict(vocab_size=61, dim=32, num_layers=3, num_heads=4, num_kv_heads=2, ffn_dim=48)
MLA = dict(mla_kv_lora_rank=16, mla_q_lora_rank=0, mla_qk_nope_dim=8, mla_qk_rope_dim=4,
           mla_v_dim=8)
POLICIES = {
    "dense": Dense(64),
    "streaming_llm": StreamingLLM(window=7, num_sinks=2),
    "h2o": H2O(heavy=5, recent=4),
    "snapkv": SnapKV(budget=12, window=4, kernel=3, decode_capacity=8),
    "recompress": Recompress(SnapKV(budget=8, window=4, kernel=3, decode_capacity=0),
                             interval=3, target=8),
    "int4_streaming": quantized(StreamingLLM(window=12, num_sinks=2), bits=4, group=4,
                                residual=4),
}
PROMPTS = [np.arange(1, 20) % 61, (np.arange(5, 31) * 7) % 61, np.arange(3, 9)]


CASES = [(name, {}) for name in POLICIES] + [
    (name, dict(num_sink_tokens=1)) for name in ("streaming_llm", "snapkv")]


@pytest.mark.parametrize("name, model_kw", CASES,
                         ids=[f"{n}-{'sinktoken' if kw else 'plain'}" for n, kw in CASES])
def test_stacked_generation_equals_loop(name, model_kw):
    model = Transformer(ModelConfig(**TINY, **model_kw), nnx.Rngs(0))
    engine = Engine.create(model, ProgramCache())
    policy = POLICIES[name]
    sampling = Sampling(max_new_tokens=9)
    stacked = engine.generate(PROMPTS, policy, sampling, pad_to=32)  # one policy: LayerStack
    looped = engine.generate(PROMPTS, (policy,) * TINY["num_layers"], sampling, pad_to=32)
    for a, b in zip(stacked, looped, strict=True):
        np.testing.assert_array_equal(a, b)


def test_mla_stacked_equals_loop():
    model = Transformer(ModelConfig(**TINY, **MLA), nnx.Rngs(1))
    engine = Engine.create(model, ProgramCache())
    policy = StreamingLLM(window=9, num_sinks=1)
    a = engine.generate(PROMPTS, policy, Sampling(max_new_tokens=6), pad_to=32)
    b = engine.generate(PROMPTS, (policy,) * 3, Sampling(max_new_tokens=6), pad_to=32)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))


def test_stack_round_trip_and_model_calls():
    model = Transformer(ModelConfig(**TINY), nnx.Rngs(2))
    policy = StreamingLLM(window=8, num_sinks=1)
    stack = model.init_cache(policy, 2, stacked=True)
    loop = model.init_cache(policy, 2)
    assert isinstance(stack, LayerStack)
    tokens = jax.random.randint(jax.random.key(0), (2, 5), 0, 61)
    pos = np.broadcast_to(np.arange(5), (2, 5))
    la, stack = model.prefill(tokens, pos, stack, policy)
    lb, loop = model.prefill(tokens, pos, loop, policy)
    np.testing.assert_allclose(np.asarray(la), np.asarray(lb), atol=1e-5)
    for a, b in zip(stack.layers(), loop, strict=True):
        np.testing.assert_allclose(np.asarray(a.keys), np.asarray(b.keys), atol=1e-6)
    da, _ = model.decode(tokens[:, 0], pos[:, -1] + 1, stack, policy)
    db, _ = model.decode(tokens[:, 0], pos[:, -1] + 1, loop, policy)
    np.testing.assert_allclose(np.asarray(da), np.asarray(db), atol=1e-5)


def test_stacked_needs_one_policy():
    model = Transformer(ModelConfig(**TINY), nnx.Rngs(0))
    per_layer = (StreamingLLM(window=8), StreamingLLM(window=9), StreamingLLM(window=8))
    with pytest.raises(ValueError, match="same policy in every layer"):
        model.init_cache(per_layer, 1, stacked=True)
