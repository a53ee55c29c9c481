"""The head-wise policies through the decode engine (``lcache.generate``: prefill, decode room
sized to the generation, greedy decode): a budget that keeps the whole prompt generates the
dense tokens; a smaller one runs."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from lcache.cache import AdaKV, Dense, ExpectedAttention, ExpectedScores, SnapVote, registry
from lcache.generate import generate
from lcache.model import ModelConfig
from lcache.model.transformer import Transformer
from lcache.sampling import Sampling

PROMPTS = [list(range(1, 30)), list(range(5, 25))]
SCORES = np.array([[0.1, 0.9], [0.8, 0.2]])


def _policies(budget):
    ctx = dict(prompt_len=32, max_new=6, num_layers=2, head_scores=SCORES)
    return {
        "adakv": AdaKV(budget, SnapVote(4, 3)),
        "expected_attention": ExpectedAttention(budget, ExpectedScores(64, 2)),
        "duo": registry.build("duo(sinks=2)", budget, **ctx),
        "headkv": registry.build("headkv(window=4)", min(budget, 32), **ctx),
    }


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(vocab_size=64, dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      ffn_dim=64, max_seq_len=128)
    return Transformer(cfg, nnx.Rngs(0))


@pytest.mark.parametrize("name", ["adakv", "expected_attention", "duo", "headkv"])
def test_generate(model, name):
    sampling = Sampling(max_new_tokens=6, temperature=0.0)
    dense = generate(model, PROMPTS, Dense(64), sampling)
    full = generate(model, PROMPTS, _policies(40)[name], sampling)
    assert all((a == b).all() for a, b in zip(full, dense, strict=True))
    small = generate(model, PROMPTS, _policies(12)[name], sampling)
    assert [len(x) for x in small] == [6, 6]


def test_quantized_storage_inside_head_groups(model):
    """KIVI storage wraps each head group's policy (duo, headkv); razor's compensation sums
    need plain states: refused before any work."""
    sampling = Sampling(max_new_tokens=3, temperature=0.0)
    ctx = dict(prompt_len=32, max_new=3, num_layers=2, head_scores=SCORES)
    for spec in ("duo(sinks=2)@int4(group=16,residual=16)+sinks2",
                 "headkv(window=4)@int8(group=16,residual=16)"):
        out = generate(model, PROMPTS, registry.build(spec, 16, **ctx), sampling)
        assert [len(x) for x in out] == [3, 3]
    with pytest.raises(ValueError, match="Compensated keeps a CompState"):
        generate(model, PROMPTS, registry.build("razor(sinks=2)@int4", 16, **ctx), sampling)


def test_policy_for_prompts_passes_head_scores(model):
    from lcache.eval import Engine
    from lcache.eval.policies import policy_for_prompts

    layers = policy_for_prompts(Engine.create(model), "headkv(window=4)", 12, PROMPTS,
                                max_new=3, head_scores=SCORES)
    assert registry.spec(layers) == "headkv(window=4,decode=3)" and len(layers) == 2
