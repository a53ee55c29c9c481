"""Budget as data: rows of one batch keep different budgets of one score-based policy in one
compiled program, and each row equals a run of the policy built for its own budget."""

import numpy as np
import pytest

from lcache.cache import H2O, SnapKV, StreamingLLM
from lcache.eval import Engine, ProgramCache
from lcache.sampling import Sampling

PROMPTS = [[1, 5, 9, 2, 7, 7, 3, 4, 8, 1, 30, 2, 9, 4], [4, 8, 6, 1, 2, 3, 4, 9, 9, 10],
           [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]]
REFS = [[3, 4, 5], [6, 7], [8]]
S = Sampling(max_new_tokens=6)


def snap(budget):
    return SnapKV(budget=budget, window=2, kernel=3, decode_capacity=6)


@pytest.mark.parametrize("make,budgets", [(snap, (8, 4, 6)),
                                          (lambda b: H2O(heavy=b - 3, recent=3), (7, 4, 5))],
                         ids=["snapkv", "h2o"])
def test_each_row_equals_its_own_budget(model, make, budgets):
    engine = Engine.create(model, ProgramCache())
    out, nll = engine.generate_scored(PROMPTS, REFS, make(max(budgets)), S, budgets=budgets,
                                      batch=2, pad_to=16)
    assert engine.programs.stats["generate_scored"].compiles == 1
    for i, b in enumerate(budgets):
        alone, alone_nll = engine.generate_scored(PROMPTS[i:i + 1], REFS[i:i + 1], make(b), S,
                                                  pad_to=16)
        assert out[i].tolist() == alone[0].tolist()
        np.testing.assert_allclose(nll[i], alone_nll[0], atol=2e-5)


def test_bad_budgets_fail_before_any_work(model):
    engine = Engine.create(model, ProgramCache())
    with pytest.raises(ValueError, match="need one score-based policy"):
        engine.generate(PROMPTS, StreamingLLM(window=6, num_sinks=2), S, budgets=(8, 8, 8))
    with pytest.raises(ValueError, match=r"budget 9 outside \[2, 8\]"):
        engine.generate(PROMPTS, snap(8), S, budgets=(8, 9, 4))
    with pytest.raises(ValueError, match="3 integers, one per prompt"):
        engine.generate(PROMPTS, snap(8), S, budgets=(8, 4))
    assert engine.programs.compiles == 0
