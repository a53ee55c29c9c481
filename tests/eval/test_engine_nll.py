"""Teacher-forced NLL: the engine's scanned chunks equal token-by-token decoding, dense
prefill equals the full forward, recomputation equals dense when its window covers the stream,
and continuation NLL equals the stream NLL of prompt + continuation."""

import jax
import numpy as np
import pytest
from flax import nnx

from lcache.cache import H2O, Dense, SnapKV, StreamingLLM
from lcache.eval import Engine

RNG = np.random.default_rng(0)
STREAM = RNG.integers(0, 61, 41).astype(np.int32)  # BOS-free is fine for a random model


def nll_of(logits, targets):
    logits = np.asarray(logits, np.float64)
    return np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1) - \
        np.take_along_axis(logits, targets[..., None], -1)[..., 0]


def token_by_token(model, stream, policy):
    """The reference: one jitted decode step per token from a Python loop."""
    step = nnx.jit(lambda m, tok, pos, caches: m.decode(tok, pos, caches, policy))
    caches = model.init_cache(policy, 1)
    out = []
    for i in range(stream.size - 1):
        logits, caches = step(model, stream[i:i + 1], np.array([i], np.int32), caches)
        out.append(nll_of(logits, stream[i + 1:i + 2])[0])
    return np.array(out)


@pytest.mark.parametrize("policy", [StreamingLLM(window=9, num_sinks=2), H2O(heavy=5, recent=6)],
                         ids=["streaming_llm", "h2o"])
def test_stream_nll_equals_token_by_token(sink_model, policy):
    engine = Engine.create(sink_model)
    got = engine.stream_nll(STREAM, policy, chunk=16)  # 40 steps: 3 chunks, the last padded
    np.testing.assert_allclose(got, token_by_token(sink_model, STREAM, policy), atol=2e-5)


@pytest.mark.parametrize("name", ["model", "sink_model"])
def test_dense_recompute_and_decode_equal_the_full_forward(name, request):
    model = request.getfixturevalue(name)
    engine = Engine.create(model)
    full = nll_of(jax.jit(lambda t: model(t))(STREAM[None, :-1])[0], STREAM[1:])
    np.testing.assert_allclose(engine.dense_nll(STREAM, chunk=16), full, atol=2e-4)
    np.testing.assert_allclose(engine.recompute_nll(STREAM, window=64, batch=16), full,
                               atol=2e-4)
    np.testing.assert_allclose(engine.stream_nll(STREAM, Dense(48), chunk=32), full, atol=2e-4)


def test_recompute_scores_every_stride_th_target(model):
    nll = Engine.create(model).recompute_nll(STREAM, window=8, stride=3, batch=4)
    assert np.isfinite(nll).nonzero()[0].tolist() == list(range(0, 40, 3))


def test_continuation_nll_equals_the_stream_nll(model):
    engine = Engine.create(model)
    prompts, conts = [STREAM[:20], STREAM[:7]], [STREAM[20:41], STREAM[7:9]]
    out = engine.continuation_nll(prompts, conts, Dense(64), batch=1)
    full = engine.stream_nll(STREAM, Dense(64))
    np.testing.assert_allclose(out[0], full[19:40], atol=2e-5)
    np.testing.assert_allclose(out[1], full[6:8], atol=2e-5)


def test_bad_inputs_fail_before_any_work(model):
    engine = Engine.create(model)
    with pytest.raises(ValueError, match="token id 61 outside the vocabulary"):
        engine.stream_nll(np.array([1, 61]), Dense(8))
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        engine.stream_nll(STREAM, Dense(48), chunk=0)
    with pytest.raises(ValueError, match="one non-empty continuation per prompt"):
        engine.continuation_nll([[1, 2]], [[]], Dense(8))
    with pytest.raises(ValueError, match="recompute stride must be >= 1"):
        engine.recompute_nll(STREAM, window=8, stride=0)


def test_continuation_nll_sizes_an_unsized_decode_room(model):
    engine = Engine.create(model)
    prompts, conts = [STREAM[:20]], [STREAM[20:30]]
    unsized = engine.continuation_nll(prompts, conts, SnapKV(budget=8, window=2, kernel=3,
                                                             decode_capacity=None))
    sized = engine.continuation_nll(prompts, conts, SnapKV(budget=8, window=2, kernel=3,
                                                           decode_capacity=9))
    np.testing.assert_allclose(unsized[0], sized[0], atol=1e-6)
