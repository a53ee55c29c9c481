"""Bigram-Backcopy: BOS first, back-copies after triggers, bigram support, fresh samples."""

import numpy as np
import pytest

from lcache.data import BigramBackcopy


def test_structure():
    task = BigramBackcopy(vocab_size=20, num_triggers=3, seed=1)
    tokens = task.sample(np.random.default_rng(0), batch=64, seq_len=128)
    assert tokens.shape == (64, 128) and tokens.dtype == np.int32
    assert task.model_vocab_size == 21 and task.bos_id == 20
    assert (tokens[:, 0] == task.bos_id).all()
    assert (tokens[:, 1:] < task.vocab_size).all() and (tokens >= 0).all()
    triggers = set(task.trigger_ids.tolist())
    assert len(triggers) == 3
    assert tokens[0, 1] not in triggers

    copies = task.backcopy_positions(tokens)
    assert copies.shape == tokens.shape and copies.sum() > 50  # triggers do occur
    expected = np.isin(tokens[:, :-1], task.trigger_ids)
    np.testing.assert_array_equal(copies[:, 1:], expected)
    np.testing.assert_array_equal(tokens[:, 2:][copies[:, 2:]], tokens[:, :-2][copies[:, 2:]])

    # Every other transition is in the bigram's support.
    probs = task.bigram_matrix
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    prev, nxt = tokens[:, 1:-1][~copies[:, 2:]], tokens[:, 2:][~copies[:, 2:]]
    assert (probs[prev, nxt] > 0).all()


def test_fresh_samples_and_fixed_distribution():
    task = BigramBackcopy(vocab_size=32)
    rng = np.random.default_rng(0)
    assert not np.array_equal(task.sample(rng, 8, 64), task.sample(rng, 8, 64))
    np.testing.assert_array_equal(
        task.sample(np.random.default_rng(5), 4, 32),
        BigramBackcopy(vocab_size=32).sample(np.random.default_rng(5), 4, 32),
    )
    assert not np.array_equal(
        BigramBackcopy(vocab_size=32, seed=1).bigram_matrix, task.bigram_matrix
    )


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="vocab_size=1"):
        BigramBackcopy(vocab_size=1)
    with pytest.raises(ValueError, match="num_triggers=10"):
        BigramBackcopy(vocab_size=10, num_triggers=10)
    with pytest.raises(ValueError, match="num_successors=0"):
        BigramBackcopy(vocab_size=10, num_successors=0)
    task = BigramBackcopy(vocab_size=10)
    with pytest.raises(ValueError, match="seq_len=0"):
        task.sample(np.random.default_rng(0), 2, 0)
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        task.backcopy_positions(np.zeros(5, dtype=np.int32))
    with pytest.raises(ValueError, match="11"):
        task.backcopy_positions(np.full((1, 3), 11))
