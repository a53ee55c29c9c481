"""KVzip: reconstruction scores on planted attention, kvpress's global keep rule (one row: the
complement of the model-wide bottom-k, sinks kept), and the model: a compressed context cache
built once serves two questions (ratio 0 equals the dense cache) in ragged pools."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lcache.cache import Dense
from lcache.cache.kvzip import kvzip_compress, kvzip_keep, kvzip_scores


def test_scores_are_the_max_reconstruction_attention():
    t, r = 4, 2
    s = 2 * t + r
    w = np.zeros((1, 1, 4, s, s))
    w[0, 0, 1, t + r + 2, 3] = 0.7  # a reconstruction query of q head 1 (kv head 0) on token 3
    w[0, 0, 3, t + r + 0, 0] = 0.4  # q head 3 (kv head 1) on token 0
    w[0, 0, 0, t + 1, 2] = 0.9  # a repeat-prompt query counts too (kvpress)
    w[0, 0, 2, t - 1, 1] = 0.8  # a context query does not
    got = kvzip_scores(w, t, num_kv_heads=2)
    assert got.tolist() == [[[[0, 0, 0.9, 0.7], [0.4, 0, 0, 0]]]]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), ratio=st.sampled_from([0.0, 0.25, 0.5, 0.9]),
       sinks=st.integers(0, 3))
def test_keep_rule_is_the_global_bottom_k(seed, ratio, sinks):
    scores = np.random.default_rng(seed).random((3, 1, 2, 10))
    keep = kvzip_keep(scores, ratio, sinks)
    s = scores.copy()
    s[..., :sinks] = s.max() + 1
    n = int(s.size * ratio)
    assert keep.sum() == s.size - n
    if n > s.size - sinks * 6:  # the tied sinks are pruned too: any of them (as torch.topk)
        return
    want = np.ones(s.size, bool)
    want[np.argsort(s.reshape(-1))[:n]] = False
    np.testing.assert_array_equal(keep.reshape(-1), want)
    assert keep[..., :sinks].all()


def _model():
    from flax import nnx

    from lcache.model import ModelConfig
    from lcache.model.transformer import Transformer

    cfg = ModelConfig(vocab_size=64, dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      ffn_dim=64, max_seq_len=128)
    return Transformer(cfg, nnx.Rngs(0))


def _answer(m, policies, caches, question, start):
    """Question prefill at ``start`` then 3 greedy-free decode steps of fixed tokens."""
    b, q = question.shape
    pos = jnp.broadcast_to(jnp.arange(start, start + q, dtype=jnp.int32), (b, q))
    logits, caches = m.prefill(question, pos, caches, policies)
    out = [logits[:, -1]]
    for i in range(3):
        step, caches = m.decode(question[:, i], jnp.full((b,), start + q + i), caches, policies)
        out.append(step)
    return np.stack(out)


def test_one_compressed_cache_serves_two_questions():
    m = _model()
    key = jax.random.key(5)
    context = jax.random.randint(key, (1, 24), 0, 64)
    repeat = jnp.array([[7, 8, 9]])
    questions = [jax.random.randint(jax.random.fold_in(key, i), (1, 5), 0, 64) for i in (1, 2)]
    dense = Dense(40)
    pos = jnp.broadcast_to(jnp.arange(24), (1, 24))
    full = m.prefill(context, pos, m.init_cache(dense, 1), dense)[1]
    lossless = kvzip_compress(m, context, repeat, ratio=0.0, decode=16)
    half_policies, half = kvzip_compress(m, context, repeat, ratio=0.5, decode=16)
    for q in questions:
        np.testing.assert_allclose(_answer(m, *lossless, q, 24), _answer(m, dense, full, q, 24),
                                   atol=1e-5)
        assert np.isfinite(_answer(m, half_policies, half, q, 24)).all()
    kept = [int((c.pos >= 0).sum()) for c in half]
    assert sum(kept) == 2 * 2 * 24 - int(2 * 2 * 24 * 0.5)  # L * H * T pairs, half dropped
    assert sum(p.nbytes(1, 2, 16) for p in half_policies) < 2 * Dense(40).nbytes(1, 2, 16)
