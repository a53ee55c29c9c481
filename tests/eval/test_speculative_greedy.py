"""Self-speculative decoding with register tokens (``Engine.generate_speculative``), greedy:
the output equals plain greedy decoding token for token under every kind of cache policy (tiny
random models: drafts are mostly wrong, so rejection and rollback are exercised on most
passes)."""

import numpy as np
import pytest
from speculative_models import PROMPTS, make_engine, make_policy

from lcache.sampling import Sampling

MLA = dict(mla_kv_lora_rank=16, mla_qk_nope_dim=8, mla_qk_rope_dim=8, mla_v_dim=8)


@pytest.mark.parametrize("spec,extra", [
    ("dense", {}), ("streaming_llm(sinks=2)", {}), ("h2o", {}), ("snapkv(window=4)", {}),
    ("streaming_llm(sinks=2)@int4(group=8,residual=8)", {}), ("dense", MLA),
    ("streaming_llm(sinks=2)", MLA)])
def test_greedy_equals_plain_decoding(spec, extra):
    engine = make_engine(**extra)
    policy, sampling = make_policy(spec, engine), Sampling(max_new_tokens=12)
    plain = engine.generate(PROMPTS, policy, sampling)
    fast, st = engine.generate_speculative(PROMPTS, policy, sampling, draft_len=2)
    for a, b in zip(plain, fast, strict=True):
        np.testing.assert_array_equal(a, b)
    assert 0 <= st["acceptance_rate"] <= 1 and len(st["acceptance_per_position"]) == 2
    if not extra:  # these seeds accept some drafts: the accept path is exercised too
        assert st["acceptance_rate"] > 0
