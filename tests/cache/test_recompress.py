"""Recompress: the cache oscillates between target and target + interval, re-selecting top."""

from __future__ import annotations

import numpy as np
import pytest
from cache_streams import feed, make_stream

from lcache.cache import H2O, KeyNorm, Recompress, SlidingWindow, SnapKV


def counts(pos_hist):
    return (np.asarray(pos_hist) >= 0).sum(-1)  # [steps, B, H]


def test_h2o_recompress_oscillates_and_keeps_top_scores():
    policy = Recompress(H2O(2, 1), interval=3, target=4)
    stream = make_stream(5, steps=12)
    _, (pos_hist, score_hist) = feed(policy, stream)
    pos_hist, score_hist = np.asarray(pos_hist), np.asarray(score_hist)
    n = counts(pos_hist)
    assert n.max() <= policy.capacity and n[-4:].min() >= policy.target
    fb, nchunks = stream.feedback, stream.chunk_pos.shape[0]
    resets = 0
    for s in range(1, n.shape[0]):
        for b in range(2):
            p = int(stream.dec_pos[s, b])
            for h in range(2):
                if n[s, b, h] >= n[s - 1, b, h]:
                    continue
                resets += 1  # re-selected at this step's observe: full -> target
                assert n[s - 1, b, h] == policy.capacity - 1 and n[s, b, h] == policy.target
                before = dict(zip(pos_hist[s - 1, b, h].tolist(),
                                  score_hist[s - 1, b, h].tolist(), strict=True))
                before.pop(-1, None)
                total = {q: np.float32(sc + fb[nchunks + s, b, h, q]) for q, sc in before.items()}
                total[p] = fb[nchunks + s, b, h, p]
                kept = {int(q) for q in pos_hist[s, b, h] if q >= 0}
                assert p in kept  # the recent window survives
                dropped = [total[q] for q in set(total) - kept]
                assert min(total[q] for q in kept - {p}) >= max(dropped)
    assert resets


def test_snapkv_votes_restart_after_prefill_and_each_recompression():
    policy = Recompress(SnapKV(budget=4, window=2, kernel=3), interval=2, target=5)
    stream = make_stream(2, steps=8)
    state, (pos_hist, score_hist) = feed(policy, stream)
    n = counts(pos_hist)
    assert n.max() <= 7
    score_hist, fb = np.asarray(score_hist), stream.feedback
    first = np.asarray(pos_hist)[0]
    # step 0 scores are exactly this step's votes: prefill votes were reset
    nchunks = stream.chunk_pos.shape[0]
    for b in range(2):
        for h in range(2):
            for slot, p in enumerate(first[b, h]):
                if p >= 0 and n[0, b, h] < 7:
                    assert score_hist[0, b, h, slot] == fb[nchunks, b, h, p]


def test_query_agnostic_base_keeps_its_scores():
    policy = Recompress(KeyNorm(3), interval=2, target=3)
    state, (pos_hist, score_hist) = feed(policy, make_stream(1, steps=6))
    assert counts(pos_hist).max() <= 5
    valid = np.asarray(state.pos) >= 0
    norms = -np.linalg.norm(np.asarray(state.keys), axis=-1)
    np.testing.assert_allclose(np.asarray(state.score)[valid], norms[valid], rtol=1e-6)


@pytest.mark.parametrize("kw,match", [
    (dict(base=SlidingWindow(4), interval=2, target=4), "score-based"),
    (dict(base=KeyNorm(4), interval=0, target=4), "interval must be >= 1"),
    (dict(base=SnapKV(budget=8, window=4), interval=2, target=3), "protected"),
])
def test_bad_config_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        Recompress(**kw)
