"""Generation: greedy equals a naive full-forward loop, micro-batches of ragged prompts padded
to one shape equal one unbatched call, generation scored against references equals separate
generation and continuation NLL, bad input fails before any work."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcache.cache import H2O, Dense, SnapKV, StreamingLLM
from lcache.eval import Engine, ProgramCache
from lcache.generate import generate
from lcache.sampling import Sampling

PROMPTS = [[1, 5, 9, 2, 7, 7, 3, 4, 8, 1, 30, 2, 9], [4, 8], [11, 12, 13, 14, 15],
           [20, 21, 22, 23, 24, 25, 26, 27, 28], [3, 3, 3]]


def test_greedy_equals_a_naive_loop(model):
    outs = Engine.create(model).generate(PROMPTS, Dense(64), Sampling(max_new_tokens=6),
                                         batch=2, pad_to=16)
    forward = jax.jit(lambda t: model(t))  # one shape: causal, so right padding changes nothing
    for prompt, out in zip(PROMPTS, outs, strict=True):
        seq = list(prompt)
        for _ in range(6):
            logits = forward(jnp.array([seq + [0] * (32 - len(seq))]))
            seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
        assert out.tolist() == seq[len(prompt):]


SNAP = SnapKV(budget=6, window=2, kernel=3, decode_capacity=8)


@pytest.mark.parametrize("policy", [SNAP, H2O(heavy=3, recent=3),
                                    StreamingLLM(window=4, num_sinks=1)],
                         ids=["snapkv", "h2o", "streaming_llm"])
def test_micro_batches_equal_one_batch(model, policy):
    s = Sampling(max_new_tokens=8)
    engine = Engine.create(model)
    whole = generate(model, PROMPTS, policy, s)
    batched = engine.generate(PROMPTS, policy, s, batch=2, pad_to=24)
    assert [o.tolist() for o in batched] == [o.tolist() for o in whole]
    assert len(batched) == len(PROMPTS)


def test_sampling_is_deterministic_and_eos_cuts_rows(model):
    engine = Engine.create(model)
    s = Sampling(max_new_tokens=10, temperature=1.0, top_k=20)
    a = engine.generate(PROMPTS[:2], Dense(64), s, seed=3, batch=1)
    b = engine.generate(PROMPTS[:2], Dense(64), s, seed=3, batch=1)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    greedy = engine.generate(PROMPTS[:1], Dense(64), Sampling(max_new_tokens=10))[0]
    eos = int(greedy[3])
    cut = engine.generate(PROMPTS[:1], Dense(64), Sampling(max_new_tokens=10, eos_id=eos))[0]
    assert cut.tolist() == greedy[: greedy.tolist().index(eos) + 1].tolist()


@pytest.mark.parametrize("kwargs,match", [
    (dict(prompts=[[1, 2, 61]]), "token id 61"),
    (dict(prompts=[[]]), "at least one token"),
    (dict(prompts=[[1] * 20], pad_to=16), "pad_to=16 is shorter than the longest prompt"),
    (dict(batch=0), "batch must be >= 1"),
    (dict(policy=Dense(20)), r"Dense\(max_len=20\)"),
])
def test_bad_input_fails_before_any_work(model, kwargs, match):
    engine = Engine.create(model, ProgramCache())
    args = dict(prompts=PROMPTS, policy=Dense(64), sampling=Sampling(max_new_tokens=8)) | kwargs
    before = engine.programs.compiles
    with pytest.raises(ValueError, match=match):
        engine.generate(**args)
    assert engine.programs.compiles == before == 0


def test_generate_scored_equals_generate_and_continuation_nll(model):
    engine = Engine.create(model)
    policy, s = SNAP, Sampling(max_new_tokens=5)
    refs = [[7, 8, 9], [1], [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [4, 4],
            [5]]
    out, nll = engine.generate_scored(PROMPTS, refs, policy, s, batch=2, pad_to=16)
    assert [o.tolist() for o in out] == [o.tolist() for o in engine.generate(PROMPTS, policy, s)]
    want = engine.continuation_nll(PROMPTS, refs, policy)
    for got, ref in zip(nll, want, strict=True):
        np.testing.assert_allclose(got, ref, atol=2e-5)
