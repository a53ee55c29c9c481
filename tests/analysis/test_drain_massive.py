"""Value drain and massive activations on constructed arrays."""

import numpy as np
import pytest

from lcache.analysis import massive_activations, value_drain

N, L, HKV, T, DV = 3, 2, 2, 16, 4


def values_with_small_first():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(N, L, HKV, T, DV))
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    v *= 2.0
    v[..., 0, :] *= 0.05  # ‖v_0‖ = 0.1
    return v


def test_value_drain_at_position_zero():
    res = value_drain(values_with_small_first())
    np.testing.assert_allclose(res.sink_norm, 0.1)
    np.testing.assert_allclose(res.other_norm, 2.0)
    np.testing.assert_allclose(res.ratio, 0.05)
    assert res.sink_norm.shape == (L, HKV)


def test_value_drain_positions_and_mask():
    v = values_with_small_first()
    res = value_drain(v, [0, 3])
    np.testing.assert_allclose(res.sink_norm, (0.1 + 2.0) / 2)
    mask = np.zeros(T, bool)
    mask[0] = True
    np.testing.assert_allclose(value_drain(v, mask).sink_norm, 0.1)


def test_value_drain_from_attention_gqa():
    h = 4  # 2 query heads per KV head
    attn = np.broadcast_to(np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None],
                           (N, L, h, T, T)).copy()
    attn[:, :, 1, 1:, :] = 0.0
    attn[:, :, 1, 1:, 0] = 1.0  # query head 1 (KV head 0) sinks on token 0
    res = value_drain(values_with_small_first(), attn, eps=0.3)
    np.testing.assert_allclose(res.sink_norm[:, 0], 0.1)
    assert np.all(np.isnan(res.sink_norm[:, 1]))  # KV head 1 has no sink
    np.testing.assert_allclose(res.other_norm[:, 0], 2.0)
    np.testing.assert_allclose(res.other_norm[:, 1], (0.1 + (T - 1) * 2.0) / T)  # all tokens
    with pytest.raises(ValueError, match="multiple"):
        value_drain(values_with_small_first()[:, :, :1].repeat(3, axis=2), attn)


def test_massive_activation_located():
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(2, L + 1, T, 32)).astype(np.float32)
    hidden[1, 2, 5, 7] = -1000.0
    res = massive_activations(hidden)
    assert res.max_abs[2] == pytest.approx(1000.0)
    assert (res.sample[2], res.position[2], res.channel[2]) == (1, 5, 7)
    assert res.ratio[2] > 500  # median |N(0,1)| ≈ 0.674
    assert res.ratio[0] < 20
    assert res.top_abs.shape == (L + 1, 3)
    assert np.all(np.diff(res.top_abs, axis=1) <= 0)
    assert res.top_abs[2, 0] == res.max_abs[2]
    np.testing.assert_allclose(res.median_abs, np.median(np.abs(hidden), axis=(0, 2, 3)),
                               rtol=1e-6)
