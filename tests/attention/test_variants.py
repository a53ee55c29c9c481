"""Attention weight variants vs independent float64 NumPy implementations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcache.attention import variants as V

B, H, Q, K = 2, 3, 5, 7


# ---------------------------------------------------------------- float64 references (row-wise)
def _rows(fn, x, m, **kw):
    x, m = np.asarray(x, np.float64), np.broadcast_to(np.asarray(m, bool), x.shape)
    out = np.zeros_like(x)
    for idx in np.ndindex(x.shape[:-1]):
        out[idx] = fn(x[idx], m[idx], **{k: np.broadcast_to(v, x.shape[:-1] + (1,))[idx][0]
                                         if isinstance(v, np.ndarray) else v
                                         for k, v in kw.items()})
    return out


def np_softmax(x, m, extra=None):
    if not m.any():
        return np.zeros_like(x)
    xs = x[m]
    logits = xs if extra is None else np.append(xs, extra)
    e = np.exp(logits - logits.max())
    out = np.zeros_like(x)
    out[m] = (e / e.sum())[: xs.size]
    return out


def np_softpick(x, m, eps=1e-8):
    # naive_softpick_attn.py::softpick with masked = -inf
    if not m.any():
        return np.zeros_like(x)
    xm = x[m].max()
    d = np.exp(x - xm) - np.exp(-xm)
    num = np.where(m, np.maximum(d, 0), 0)
    return num / (np.where(m, np.abs(d), 0).sum() + eps)


def np_sigmoid(x, m, b=0.0):
    return np.where(m, 1 / (1 + np.exp(-(x + b))), 0)


def np_relu(x, m, normalize=True):
    r = np.where(m, np.maximum(x, 0), 0)
    return r / max(m.sum(), 1) if normalize else r


def _inputs(seed, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, scale, (B, H, Q, K)).astype(np.float32)
    logits[np.abs(logits) < 1e-3] = 0.5  # never zeros
    mask = rng.random((B, H, Q, K)) < 0.7
    mask[0, 0, 0] = False  # an all-masked row
    mask[1, 2, 3] = False
    return logits, mask


def _np_ref(variant, x, m, sink=None, bias=0.0):
    if variant == "softmax":
        return _rows(np_softmax, x, m)
    if variant == "off_by_one":
        return _rows(np_softmax, x, m, extra=0.0)
    if variant == "sink_logit":
        return _rows(np_softmax, x, m, extra=np.asarray(sink, np.float64))
    if variant == "softpick":
        return _rows(np_softpick, x, m)
    if variant == "sigmoid":
        return _rows(np_sigmoid, x, m, b=bias)
    return _rows(np_relu, x, m)


SINK_H11 = np.array([-1.0, 0.5, 2.0], np.float32)[:, None, None]


@pytest.mark.parametrize("variant", V.VARIANTS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_numpy(variant, seed):
    logits, mask = _inputs(seed)
    got = np.asarray(V.attention_weights(logits, mask, variant, sink_logit=SINK_H11,
                                         sigmoid_bias=-0.7 if variant == "sigmoid" else None))
    want = _np_ref(variant, logits, mask, sink=SINK_H11, bias=-0.7)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    assert np.all(got[~mask] == 0)
    assert np.all(got[0, 0, 0] == 0) and np.all(got[1, 2, 3] == 0)


def test_softmax_rows_sum_to_one_and_mask_broadcast():
    logits, _ = _inputs(3)
    causal = np.tril(np.ones((Q, K), bool), k=K - Q)
    w = np.asarray(V.attention_weights(logits, causal, "softmax"))
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(w, _np_ref("softmax", logits, causal), rtol=2e-5, atol=1e-7)
    w_none = np.asarray(V.attention_weights(logits, None, "softmax"))
    np.testing.assert_allclose(w_none.sum(-1), 1.0, rtol=1e-5)


def test_softpick_nonpositive_logits_give_exact_zeros():
    rng = np.random.default_rng(4)
    logits = -np.abs(rng.normal(0, 5, (B, H, Q, K))).astype(np.float32) - 1e-3
    logits[..., 0] = 0.0  # includes x == 0 exactly
    w = np.asarray(V.attention_weights(logits, np.ones_like(logits, bool), "softpick"))
    assert np.all(w == 0.0)
    w = np.asarray(V.attention_weights(logits - 200.0, None, "softpick"))  # e^{-m} would overflow
    assert np.all(w == 0.0)


def test_softpick_eps_placement_matches_reference():
    # ε is added to the shifted denominator: w = relu(e^{x-m}-e^{-m}) / (Σ|…| + ε)
    x = np.array([[3.0, 1e-4, -2.0]], np.float32)
    got = np.asarray(V.attention_weights(x, None, "softpick", softpick_eps=0.5))
    m = 3.0
    d = np.exp(x.astype(np.float64) - m) - np.exp(-m)
    np.testing.assert_allclose(got, np.maximum(d, 0) / (np.abs(d).sum() + 0.5), rtol=1e-5,
                               atol=1e-8)  # f32 cancellation in e^{x-m} - e^{-m}


def test_off_by_one_is_softmax_with_extra_zero_logit():
    logits, mask = _inputs(5)
    padded = np.concatenate([logits, np.zeros(logits.shape[:-1] + (1,), np.float32)], -1)
    pmask = np.concatenate([mask, np.ones(mask.shape[:-1] + (1,), bool)], -1)
    want = np.asarray(V.attention_weights(padded, pmask, "softmax"))[..., :-1]
    got = np.asarray(V.attention_weights(logits, mask, "off_by_one"))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("s", [-1e4, -np.inf])
def test_sink_logit_to_minus_inf_is_softmax(s):
    logits, mask = _inputs(6)
    got = np.asarray(V.attention_weights(logits, mask, "sink_logit", sink_logit=np.float32(s)))
    want = np.asarray(V.attention_weights(logits, mask, "softmax"))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("variant", V.VARIANTS)
def test_long_rows_large_logits_finite(variant):
    rng = np.random.default_rng(7)
    tk = 100_000
    logits = rng.choice(np.array([-80.0, 80.0], np.float32), (2, tk))
    logits[1] = -80.0  # a row of only large negative logits
    mask = rng.random((2, tk)) < 0.9
    w = np.asarray(V.attention_weights(logits, mask, variant, sink_logit=np.float32(5.0)))
    assert np.all(np.isfinite(w))
    assert np.all(w >= 0)
    if variant in V.SOFTMAX_LIKE:
        assert w[0].sum() == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("variant", V.VARIANTS)
def test_gradients_finite(variant):
    logits, mask = _inputs(8, scale=20.0)
    logits[1, 0, 0, :] = -90.0
    logits[1, 0, 1, :] = 90.0
    r = np.random.default_rng(9).normal(size=logits.shape).astype(np.float32)

    def loss(x, s):
        return jnp.sum(V.attention_weights(x, mask, variant, sink_logit=s) * r)

    gx, gs = jax.grad(loss, argnums=(0, 1))(jnp.asarray(logits), jnp.asarray(SINK_H11))
    assert np.all(np.isfinite(np.asarray(gx))) and np.all(np.isfinite(np.asarray(gs)))
    assert np.all(np.asarray(gx)[~mask] == 0)  # masked keys (incl. all-masked rows) get 0


@pytest.mark.parametrize("variant", ["softpick", "sink_logit", "off_by_one"])
def test_gradient_matches_numerical(variant):
    logits, mask = _inputs(10, scale=1.0)
    r = np.random.default_rng(11).normal(size=logits.shape)

    def f64(x):
        return float((_np_ref(variant, x, mask, sink=SINK_H11) * r).sum())

    g = np.asarray(jax.grad(lambda x: jnp.sum(V.attention_weights(
        x, mask, variant, sink_logit=SINK_H11) * r))(jnp.asarray(logits)))
    h = 1e-4
    for idx in [(1, 1, 2, int(np.argmax(mask[1, 1, 2]))), (0, 2, 4, int(np.argmax(mask[0, 2, 4])))]:
        xp, xm = logits.astype(np.float64), logits.astype(np.float64)
        xp[idx] += h
        xm[idx] -= h
        assert g[idx] == pytest.approx((f64(xp) - f64(xm)) / (2 * h), rel=1e-3, abs=1e-5)


def test_proxy_scores():
    w = np.array([[0.2, 0.6, 0.2, 5.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    m = np.array([True, True, True, False])
    p = np.asarray(V.proxy_scores(w, m))
    np.testing.assert_allclose(p[0], [0.2, 0.6, 0.2, 0.0], rtol=1e-6)
    assert np.all(p[1] == 0)
    np.testing.assert_allclose(np.asarray(V.proxy_scores(w[:1]))[0].sum(), 1.0, rtol=1e-6)


def test_relu_unnormalized_and_sigmoid_bias_helper():
    logits, mask = _inputs(12)
    got = np.asarray(V.attention_weights(logits, mask, "relu", relu_normalize=False))
    np.testing.assert_allclose(got, _rows(np_relu, logits, mask, normalize=False), rtol=1e-6)
    assert V.sigmoid_log_n_bias(64) == pytest.approx(-math.log(64))


def test_online_helpers_and_validation():
    assert V.denominator_offset("softmax") is None
    assert V.denominator_offset("off_by_one") == 0.0
    np.testing.assert_array_equal(V.denominator_offset("sink_logit", [1.0, 2.0]), [1.0, 2.0])
    assert [V.is_softmax_like(v) for v in V.VARIANTS] == [True, True, True, False, False, False]
    for v in ("softpick", "sigmoid", "relu"):
        with pytest.raises(ValueError, match=v):
            V.denominator_offset(v)
    with pytest.raises(ValueError, match="sink_logit"):
        V.denominator_offset("sink_logit")
    with pytest.raises(ValueError, match="sink_logit"):
        V.attention_weights(np.zeros((2, 2)), None, "sink_logit")
    with pytest.raises(ValueError, match="bogus"):
        V.attention_weights(np.zeros((2, 2)), None, "bogus")


def test_gate_output():
    out = jnp.ones((2, 3, 4), jnp.bfloat16)
    g = np.array([0.0, 100.0, -100.0], np.float32)[:, None]
    got = np.asarray(V.gate_output(out, g), np.float32)
    assert V.gate_output(out, g).dtype == jnp.bfloat16
    np.testing.assert_allclose(got[:, 0, 0], 0.5)
    np.testing.assert_allclose(got[:, 1], 1.0)
    np.testing.assert_allclose(got[:, 2], 0.0, atol=1e-30)
