"""Sink metrics on hand-built attention maps with known answers."""

import numpy as np
import pytest

from lcache.analysis import (
    first_token_share,
    sink_map,
    sink_rate,
    sink_scores,
    top_sink_tokens,
    value_drain,
)

T = 64


def causal_uniform(t=T):
    """A[t, k] = 1/(t+1) for k <= t."""
    return np.tril(np.ones((t, t))) / np.arange(1, t + 1)[:, None]


def half_on_first(t=T):
    """Query t >= 1 puts 0.5 on token 0 and spreads 0.5 uniformly over keys 1..t."""
    a = np.zeros((t, t))
    a[0, 0] = 1.0
    for q in range(1, t):
        a[q, 0] = 0.5
        a[q, 1:q + 1] = 0.5 / q
    return a


def tile(a, n=3, nl=2, h=4):
    return np.broadcast_to(a, (n, nl, h) + a.shape).copy()


def test_causal_uniform_closed_form():
    alpha = sink_scores(tile(causal_uniform()))
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, T + 1))])  # H_0..H_T
    want = (harmonic[T] - harmonic[:T]) / (T - np.arange(T))  # mean_{t>=k} 1/(t+1)
    np.testing.assert_allclose(alpha, np.broadcast_to(want, alpha.shape), rtol=1e-12)
    assert sink_rate(tile(causal_uniform()), eps=0.3) == 0.0  # alpha_0 = H_64/64 ≈ 0.074


def test_half_on_first_token_rate():
    attn = tile(half_on_first())
    assert sink_rate(attn, eps=0.3) == 1.0
    assert sink_rate(attn, eps=0.6) == 0.0  # alpha_0 = (1 + 0.5·63)/64 ≈ 0.508
    np.testing.assert_allclose(sink_scores(attn)[0, 0, 0, 0], (1 + 0.5 * (T - 1)) / T)
    np.testing.assert_allclose(first_token_share(attn), 0.5)
    assert first_token_share(attn).shape == (2, 4)


def test_sink_map_mixes_samples_and_heads():
    attn = tile(causal_uniform(), n=4)
    attn[:3, 1, 2] = half_on_first()  # layer 1 head 2 sinks in 3 of 4 samples
    m = sink_map(attn, eps=0.3)
    want = np.zeros((2, 4))
    want[1, 2] = 0.75
    np.testing.assert_allclose(m, want)
    assert sink_rate(attn, eps=0.3) == pytest.approx(3 / (4 * 2 * 4))


def test_sink_rate_other_k():
    attn = tile(causal_uniform())
    attn[..., 1:, :] = 0.0
    attn[..., 1:, 1] = 0.4  # every query t >= 1 puts 0.4 on key 1
    attn[..., 1:, 0] = 0.6
    assert sink_rate(attn, eps=0.3, k=1) == 1.0
    np.testing.assert_allclose(sink_scores(attn)[..., 1], 0.4)


def test_distributed_sink_detection():
    n = 4
    attn = tile(causal_uniform(), n=n)
    tokens = np.tile(np.arange(100, 100 + T), (n, 1))
    tokens[:, 5] = 13  # a delimiter at position 5 in every sample
    tokens[0, 20] = 13  # and at position 20 in sample 0
    # heads 0-1 of layer 0 sink on position 5; in sample 0, head 3 of layer 1 on position 20
    def plant(smp, lay, head, k):
        a = attn[smp, lay, head]
        a[k:, :] *= 0.4
        a[k:, k] += 0.6

    for smp in range(n):
        for head in (0, 1):
            plant(smp, 0, head, 5)
    plant(0, 1, 3, 20)
    res = top_sink_tokens(attn, tokens, eps=0.3)
    assert res.positions[0].position == 5
    assert res.positions[0].rate == pytest.approx(2 / 8)
    assert list(res.positions[0].token_ids) == [13]
    assert res.positions[1].position == 20
    assert res.positions[1].rate == pytest.approx(1 / (n * 8))
    assert len(res.positions) == 2  # token 0 is excluded
    tid = res.token_ids[0]
    assert tid.token_id == 13 and tid.count == n + 1
    assert tid.rate == pytest.approx((n * 2 / 8 + 1 / 8) / (n + 1))
    assert len(res.token_ids) == 1


def test_diagonal_map_no_false_late_sinks():
    attn = tile(np.eye(T))
    assert top_sink_tokens(attn, np.arange(T), eps=0.3).positions == []
    late = top_sink_tokens(attn, np.arange(T), eps=0.3, min_queries=1)
    # alpha_k = 1/(T-k) > 0.3 for the last 3 keys: why min_queries exists
    assert {p.position for p in late.positions} == {T - 3, T - 2, T - 1}


@pytest.mark.parametrize("eps", [0.0, 1.0, -0.2, 1.5])
def test_eps_validation(eps):
    attn = tile(causal_uniform(8))
    with pytest.raises(ValueError, match="eps"):
        sink_rate(attn, eps)
    with pytest.raises(ValueError, match="eps"):
        sink_map(attn, eps)
    with pytest.raises(ValueError, match="eps"):
        top_sink_tokens(attn, np.arange(8), eps)
    with pytest.raises(ValueError, match="eps"):
        value_drain(np.ones((3, 2, 4, 8, 2)), attn, eps=eps)


def test_shape_validation():
    with pytest.raises(ValueError):
        sink_scores(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError):
        sink_scores(np.zeros((1, 1, 1, 4, 5)))
