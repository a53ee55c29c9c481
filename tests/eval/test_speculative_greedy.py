"""Self-speculative decoding with register tokens (``Engine.generate_speculative``), greedy:
the output equals plain greedy decoding token for token under every kind of cache policy (tiny
random models: drafts are mostly wrong, so rejection and rollback are exercised on most
passes)."""

import numpy as np
import pytest
from flax import nnx

from lcache.cache import registry
from lcache.eval import Engine, ProgramCache
from lcache.model import ModelConfig, Transformer
from lcache.sampling import Sampling

SMALL_VOCAB = dict(vocab_size=6, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=64)
MLA = dict(mla_kv_lora_rank=16, mla_qk_nope_dim=8, mla_qk_rope_dim=8, mla_v_dim=8)
PROMPTS = [[1, 2, 3, 4, 5] * 6, [5, 4, 3] * 5, [2] * 23]


def _engine(seed=0, **kw):
    model = Transformer(ModelConfig(**(SMALL_VOCAB | dict(register_depth=3) | kw)),
                        nnx.Rngs(seed))
    return Engine.create(model, ProgramCache())


def _policy(spec, engine):
    return registry.build(spec, 16, prompt_len=32, max_new=16, num_layers=2,
                          num_model_sinks=engine.cfg.num_sink_tokens)


@pytest.mark.parametrize("spec,extra", [
    ("dense", {}), ("streaming_llm(sinks=2)", {}), ("h2o", {}), ("snapkv(window=4)", {}),
    ("streaming_llm(sinks=2)@int4(group=8,residual=8)", {}), ("dense", MLA),
    ("streaming_llm(sinks=2)", MLA)])
def test_greedy_equals_plain_decoding(spec, extra):
    engine = _engine(**extra)
    policy, sampling = _policy(spec, engine), Sampling(max_new_tokens=12)
    plain = engine.generate(PROMPTS, policy, sampling)
    fast, st = engine.generate_speculative(PROMPTS, policy, sampling, draft_len=2)
    for a, b in zip(plain, fast, strict=True):
        np.testing.assert_array_equal(a, b)
    assert 0 <= st["acceptance_rate"] <= 1 and len(st["acceptance_per_position"]) == 2
    if not extra:  # these seeds accept some drafts: the accept path is exercised too
        assert st["acceptance_rate"] > 0
