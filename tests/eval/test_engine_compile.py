"""Compile counting: prompts of other lengths under the same (policy, pad_to, batch) reuse one
program, another policy compiles another, and ``precompile`` in threads leaves nothing to
compile at run time."""

import numpy as np

from lcache.cache import H2O, SnapKV, StreamingLLM
from lcache.eval import Engine, ProgramCache
from lcache.sampling import Sampling

S = Sampling(max_new_tokens=4)


def test_one_program_per_policy_and_shape(model):
    engine = Engine.create(model, ProgramCache())
    policy = StreamingLLM(window=6, num_sinks=2)
    engine.generate([[1, 2, 3], [4, 5]], policy, S, pad_to=16, batch=2)
    engine.generate([[9] * 14, [1] * 7, [2] * 3], policy, S, pad_to=16, batch=2)  # 2 batches
    assert engine.programs.stats["generate"].compiles == 1
    assert engine.programs.stats["generate"].calls == 3
    engine.generate([[1, 2, 3]], H2O(heavy=3, recent=3), S, pad_to=16, batch=2)
    assert engine.programs.stats["generate"].compiles == 2
    nll = engine.stream_nll(np.arange(30) % 61, policy, chunk=8)
    engine.stream_nll(np.arange(25) % 61, policy, chunk=8)  # same chunk shape
    assert nll.shape == (29,)
    assert engine.programs.stats["decode_nll"].compiles == 1
    assert "generate" in engine.report() and "total" in engine.report()


def test_precompile_in_threads_then_run_compiles_nothing(model):
    engine = Engine.create(model, ProgramCache())
    policies = [SnapKV(budget=b, window=2, kernel=3, decode_capacity=4) for b in (4, 6, 8)]
    jobs = [j for p in policies for j in engine.generate_jobs(p, S, pad_to=16, batch=2)]
    jobs += engine.decode_nll_jobs(policies[0], batch=1, chunk=8)
    wall = engine.precompile(jobs + jobs[:1], threads=3)  # a repeated job compiles once
    assert wall > 0 and engine.programs.compiles == 5  # 3 generate + init_cache + decode_nll
    for p in policies:
        engine.generate([[1, 2, 3, 4, 5], [6, 7, 8]], p, S, pad_to=16, batch=2)
    engine.stream_nll(np.arange(17) % 61, policies[0], chunk=8)
    assert engine.programs.compiles == 5
    assert engine.programs.stats["generate"].calls == 3
