"""Training/eval batches: BOS layout, real corpus windows, determinism and resumption."""

import numpy as np
import pytest

from lcache.data import TrainStream, eval_batches, sample_batch

BOS = 1000
TOKENS = np.arange(500, dtype=np.int32)  # token value == its corpus position


def test_sample_batch_layout_and_windows():
    out = sample_batch(TOKENS, batch=16, seq_len=32, rng=np.random.default_rng(0), bos_id=BOS)
    assert out.shape == (16, 33) and out.dtype == np.int32
    assert (out[:, 0] == BOS).all()
    for row in out:
        start = row[1]
        np.testing.assert_array_equal(row[1:], TOKENS[start : start + 32])


def test_sample_batch_reaches_corpus_end():
    out = sample_batch(TOKENS[:10], batch=200, seq_len=10, rng=np.random.default_rng(0), bos_id=BOS)
    np.testing.assert_array_equal(out[:, 1:], np.tile(TOKENS[:10], (200, 1)))


def test_eval_batches_non_overlapping_in_order():
    batches = list(eval_batches(TOKENS, batch=5, seq_len=30, bos_id=BOS))  # 16 full windows
    assert [b.shape for b in batches] == [(5, 31)] * 3 + [(1, 31)]
    stacked = np.concatenate(batches)
    assert (stacked[:, 0] == BOS).all()
    np.testing.assert_array_equal(stacked[:, 1:].reshape(-1), TOKENS[: 16 * 30])
    assert len(list(eval_batches(TOKENS, 4, 30, BOS, max_batches=2))) == 2
    assert len(list(eval_batches(TOKENS, 4, 30, BOS))) == 4


def test_train_stream_deterministic_and_resumable():
    stream = TrainStream(TOKENS, batch=4, seq_len=16, bos_id=BOS, seed=7)
    first = [stream.next_batch() for _ in range(5)]
    assert stream.step == 5
    again = TrainStream(TOKENS, batch=4, seq_len=16, bos_id=BOS, seed=7)
    for step, batch in enumerate(first):
        np.testing.assert_array_equal(again.batch_at(step), batch)
    resumed = TrainStream(TOKENS, batch=4, seq_len=16, bos_id=BOS, seed=7, step=3)
    np.testing.assert_array_equal(next(iter(resumed)), first[3])
    assert not np.array_equal(first[0], first[1])
    other_seed = TrainStream(TOKENS, batch=4, seq_len=16, bos_id=BOS, seed=8)
    assert not np.array_equal(other_seed.batch_at(0), first[0])


def test_bad_inputs_raise():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="seq_len=501"):
        sample_batch(TOKENS, 2, 501, rng, BOS)
    with pytest.raises(ValueError, match="batch=0"):
        sample_batch(TOKENS, 0, 8, rng, BOS)
    with pytest.raises(ValueError, match="seq_len=0"):
        next(eval_batches(TOKENS, 2, 0, BOS))
    with pytest.raises(ValueError, match=r"shape \(2, 250\)"):
        sample_batch(TOKENS.reshape(2, 250), 2, 8, rng, BOS)
    with pytest.raises(ValueError, match="seed=-1"):
        TrainStream(TOKENS, 2, 8, BOS, seed=-1)
    with pytest.raises(ValueError, match="step=-2"):
        TrainStream(TOKENS, 2, 8, BOS).batch_at(-2)
