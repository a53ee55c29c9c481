"""H2O and ValueAware against the dict oracle on random streams with replayable feedback."""

from __future__ import annotations

import numpy as np
import pytest
from cache_oracles import TopOracle
from cache_streams import feed, make_stream
from hypothesis import given, settings
from hypothesis import strategies as st

from lcache.cache import H2O, ValueAware

# sampled, so that hypothesis varies data more than compilations; the second covers recent=0,
# the mean (ObservedAttention) normalisation and the value-norm ranking at once
POLICIES = [H2O(heavy=2, recent=2), ValueAware(heavy=4, recent=0, normalize=True)]


def h2o_rank(normalize, norms):
    def rank(p, score, seen):
        if normalize:
            score = score / np.float32(max(seen - p, 1))
        return score * norms[p] if norms is not None else score
    return rank


def replay(oracle: TopOracle, stream, b, h, on_step):
    """H2O bookkeeping: attention mass accumulates, decode tokens enter at 0."""
    n = stream.chunk_pos.shape[0]
    fb = stream.feedback
    for i in range(n):
        chunk = [int(p) for p in stream.chunk_pos[i, b] if p >= 0]
        oracle.prefill({p: s + fb[i, b, h, p] for p, s in oracle.score.items()},
                       {p: fb[i, b, h, p] for p in chunk})
    for s, p in enumerate(stream.dec_pos[:, b]):
        oracle.append(int(p))
        oracle.score = {q: np.float32(sc + fb[n + s, b, h, q]) for q, sc in oracle.score.items()}
        on_step(s, oracle)


def check_against_oracle(policy, stream, value_norm=False):
    _, (pos_hist, score_hist) = feed(policy, stream)
    pos_hist, score_hist = np.asarray(pos_hist), np.asarray(score_hist)
    for b in range(2):
        for h in range(2):
            norms = None
            if value_norm:
                v = np.concatenate([stream.chunk_v[:, b, h].reshape(-1, stream.chunk_v.shape[-1]),
                                    stream.dec_v[:, b, h]])
                norms = {int(x[0]): np.linalg.norm(x) for x in v}
            oracle = TopOracle(policy.capacity, policy.recent, h2o_rank(policy.normalize, norms))

            def on_step(s, o, b=b, h=h):
                valid = pos_hist[s, b, h] >= 0
                got = dict(zip(pos_hist[s, b, h][valid].tolist(),
                               score_hist[s, b, h][valid].tolist(), strict=True))
                assert set(got) == set(o.score), (s, sorted(got), sorted(o.score))
                for p, sc in o.score.items():
                    assert got[p] == sc, (s, p, got[p], sc)  # same float32 additions

            replay(oracle, stream, b, h, on_step)


@settings(max_examples=25, deadline=None)
@given(policy=st.sampled_from(POLICIES), seed=st.integers(0, 2**16))
def test_matches_oracle(policy, seed):
    check_against_oracle(policy, make_stream(seed), value_norm=isinstance(policy, ValueAware))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_evicts_lowest_unprotected_score(seed):
    """Oracle-free: each decode eviction removes the lowest accumulated score outside the
    recent window, the recent window is always whole, capacity is never exceeded."""
    policy = POLICIES[0]
    heavy, recent = policy.heavy, policy.recent
    stream = make_stream(seed)
    _, (pos_hist, score_hist) = feed(policy, stream)
    pos_hist, score_hist = np.asarray(pos_hist), np.asarray(score_hist)
    n = stream.chunk_pos.shape[0]
    for s in range(1, len(stream.dec_pos)):
        for b in range(2):
            p = int(stream.dec_pos[s, b])
            for h in range(2):
                before = dict(zip(pos_hist[s - 1, b, h].tolist(), score_hist[s - 1, b, h].tolist(),
                                  strict=True))
                before.pop(-1, None)
                now = {int(q) for q in pos_hist[s, b, h] if q >= 0}
                assert len(now) <= heavy + recent
                assert {q for q in range(max(p - recent + 1, 0), p + 1)} <= now
                gone = set(before) - now
                assert len(gone) <= 1
                if gone:
                    victim = gone.pop()
                    # scores before this step's observe: subtract nothing, the victim was
                    # chosen on the previous step's totals
                    rivals = [sc for q, sc in before.items() if q <= p - recent and q != victim]
                    assert all(before[victim] <= sc for sc in rivals)
                # the survivors' scores grew by exactly this step's feedback
                for q in now - {p}:
                    got = score_hist[s, b, h][list(pos_hist[s, b, h]).index(q)]
                    assert got == np.float32(before[q] + stream.feedback[n + s, b, h, q])


@pytest.mark.parametrize("kw,match", [
    (dict(heavy=-1, recent=2), "heavy >= 0"),
    (dict(heavy=0, recent=0), "must be >= 1"),
])
def test_bad_config_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        H2O(**kw)


def test_prefill_needs_mass():
    policy = H2O(2, 2)
    with pytest.raises(ValueError, match="mass"):
        policy.prefill(policy.init(1, 1, 2), np.zeros((1, 1, 3, 2)), np.zeros((1, 1, 3, 2)),
                       np.arange(3)[None])
