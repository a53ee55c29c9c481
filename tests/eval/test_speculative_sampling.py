"""Self-speculative decoding with register tokens (``Engine.generate_speculative``): sampled
output has the plain sampler's distribution (a tiny vocabulary, many rows); end of sequence,
micro-batches and a sink token in greedy mode; bad inputs raise before any work."""

import jax
import numpy as np
import pytest
from flax import nnx
from scipy import stats
from speculative_models import PROMPTS, SMALL_VOCAB, make_engine, make_policy

from lcache.cache import registry
from lcache.eval import Engine, ProgramCache
from lcache.model import ModelConfig, Transformer
from lcache.sampling import Sampling


def test_greedy_with_eos_micro_batches_and_a_sink_token():
    engine = make_engine(seed=1, num_sink_tokens=1)
    policy = make_policy("h2o", engine)
    plain = engine.generate(PROMPTS, policy, Sampling(max_new_tokens=10))
    eos = int(plain[0][3])  # a token the first row emits: it stops there
    sampling = Sampling(max_new_tokens=10, eos_id=eos)
    want = engine.generate(PROMPTS, policy, sampling, batch=2)
    got, _ = engine.generate_speculative(PROMPTS, policy, sampling, draft_len=1, batch=2)
    assert len(got[0]) <= 4
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sampling", [Sampling(max_new_tokens=3, temperature=1.0),
                                      Sampling(max_new_tokens=3, temperature=0.7, top_k=4)])
def test_sampling_keeps_the_distribution(sampling):
    model = Transformer(ModelConfig(**SMALL_VOCAB, register_depth=3), nnx.Rngs(2))
    state = nnx.state(model, nnx.Param)  # sharper distributions than a fresh init's
    nnx.update(model, jax.tree.map(lambda x: x * 4 if x.ndim == 2 else x, state))
    engine = Engine.create(model, ProgramCache())
    rows, policy = 3000, registry.build("dense", 16, prompt_len=16, max_new=16)
    prompts = [[1, 2, 3]] * rows
    plain = np.stack(engine.generate(prompts, policy, sampling, seed=0))
    fast, st = engine.generate_speculative(prompts, policy, sampling, draft_len=2, seed=1)
    fast = np.stack(fast)
    assert 0.05 < st["acceptance_rate"] < 0.95  # both acceptance and rejection happen
    v = SMALL_VOCAB["vocab_size"]
    code = lambda x: x[:, 1] * v + x[:, 2]  # the joint law of the 2nd and 3rd tokens
    counts = np.stack([np.bincount(code(x), minlength=v * v) for x in (plain, fast)])
    counts = counts[:, counts.sum(0) > 0]
    assert stats.chi2_contingency(counts)[1] > 1e-3


def test_bad_inputs_raise_before_any_work():
    plain = Engine.create(Transformer(ModelConfig(**SMALL_VOCAB), nnx.Rngs(0)), ProgramCache())
    policy = registry.build("dense", 16, prompt_len=32, max_new=16)
    with pytest.raises(ValueError, match="trained without them"):
        plain.generate_speculative(PROMPTS, policy, draft_len=1)
    engine = make_engine()
    with pytest.raises(ValueError, match="register_depth=3: use draft_len <= 2"):
        engine.generate_speculative(PROMPTS, policy, draft_len=3)
    with pytest.raises(ValueError, match="draft_len must be an int >= 1"):
        engine.generate_speculative(PROMPTS, policy, draft_len=0)
    with pytest.raises(ValueError, match="cannot hold"):
        engine.generate_speculative(PROMPTS, registry.build("dense", 16, prompt_len=32,
                                                            max_new=12),
                                    Sampling(max_new_tokens=12), draft_len=2)
    assert engine.programs.compiles == 0
