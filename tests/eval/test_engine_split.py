"""Questions after compression (``Engine.generate(question_at=...)``): the context and the
question as two prefill chunks. Policies whose chunked prefill is exact (dense, a sliding
window) give the one-chunk tokens; a selecting policy sees the context without the question;
bad split points fail before any work."""

import numpy as np
import pytest

from lcache.cache import Dense, SlidingWindow, SnapKV, StreamingLLM, registry
from lcache.eval import Engine, ProgramCache
from lcache.sampling import Sampling

RNG = np.random.default_rng(4)
PROMPTS = [RNG.integers(1, 61, n).tolist() for n in (23, 9, 30, 17)]
CUTS = [15, 3, 26, 16]  # questions of 8, 6, 4 and 1 tokens


@pytest.mark.parametrize("policy", [Dense(64), SlidingWindow(window=6)], ids=["dense", "window"])
def test_exact_policies_give_the_one_chunk_tokens(model, sink_model, policy):
    s = Sampling(max_new_tokens=6)
    for m in (model, sink_model):
        engine = Engine.create(m)
        whole = engine.generate(PROMPTS, policy, s, pad_to=32, batch=2)
        split = engine.generate(PROMPTS, policy, s, pad_to=32, batch=2, question_at=CUTS)
        assert [o.tolist() for o in split] == [o.tolist() for o in whole]


def test_one_program_per_question_shape_and_every_spec_runs(model):
    programs = ProgramCache()
    engine = Engine.create(model, programs)
    s = Sampling(max_new_tokens=4)
    for spec in ("snapkv(window=2,kernel=3)", "h2o", "tova", "streaming_llm(sinks=1)",
                 "expected_attention(sinks=1)", "adakv(window=2,kernel=3)", "dense@int4+sinks4"):
        policy = registry.build(spec, 12, prompt_len=32, num_layers=2, max_new=4)
        jobs = engine.generate_jobs(policy, s, pad_to=32, batch=2, question_to=16)
        engine.precompile(jobs, threads=1)
        before = programs.compiles
        out = engine.generate(PROMPTS, policy, s, pad_to=32, batch=2, question_at=CUTS)
        assert programs.compiles == before, spec  # the precompiled program served every batch
        assert [len(o) for o in out] == [4] * len(PROMPTS)


def _kept(caches):
    """Per (layer, row, head) the set of kept positions."""
    layers = caches.layers() if hasattr(caches, "layers") else caches
    return [[[set(p[p >= 0].tolist()) for p in row] for row in np.asarray(c.pos)]
            for c in layers]


def test_selection_sees_the_context_without_the_question(model):
    """SnapKV votes with the chunk's last ``window`` queries. After a split, a context token it
    dropped never comes back (the kept context is a subset of what the context alone keeps);
    in one chunk the question's queries vote, and keep context tokens the context alone drops."""
    policy = SnapKV(budget=8, window=2, kernel=1, decode_capacity=0)
    engine = Engine.create(model)
    contexts = [p[:c] for p, c in zip(PROMPTS, CUTS, strict=True)]
    alone = _kept(engine.prefill(contexts, policy, pad_to=32))
    split = _kept(engine.prefill(PROMPTS, policy, pad_to=32, question_at=CUTS))
    whole = _kept(engine.prefill(PROMPTS, policy, pad_to=32))
    subset = lambda kept: all(  # noqa: E731
        {p for p in k if p < c} <= a for layer_k, layer_a in zip(kept, alone, strict=True)
        for row_k, row_a, c in zip(layer_k, layer_a, CUTS, strict=True)
        for k, a in zip(row_k, row_a, strict=True))
    assert subset(split) and not subset(whole)


@pytest.mark.parametrize("cuts, match", [
    ([15, 3, 26], "one index per prompt"),
    ([15, 0, 26, 16], r"question_at\[1\]=0 must lie inside prompt 1"),
    ([15, 3, 30, 16], r"question_at\[2\]=30 must lie inside prompt 2"),
])
def test_bad_split_points(model, cuts, match):
    with pytest.raises(ValueError, match=match):
        Engine.create(model).generate(PROMPTS, StreamingLLM(window=4, num_sinks=1),
                                      question_at=cuts)
