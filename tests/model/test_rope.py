"""RoPE variants against closed-form numpy."""

import math

import numpy as np
import pytest

from lcache.model.rope import apply_rope, inv_frequencies


def test_none_and_linear_and_ntk_closed_form():
    d, theta = 16, 10000.0
    base = 1.0 / theta ** (np.arange(0, d, 2) / d)
    np.testing.assert_allclose(inv_frequencies(d, theta), base, rtol=1e-6)
    np.testing.assert_allclose(inv_frequencies(d, theta, "linear", 4.0), base / 4, rtol=1e-6)
    ntk_theta = theta * 4.0 ** (d / (d - 2))
    np.testing.assert_allclose(inv_frequencies(d, theta, "ntk", 4.0),
                               1.0 / ntk_theta ** (np.arange(0, d, 2) / d), rtol=1e-6)


def test_llama3_bands():
    d, theta, factor, old = 64, 500000.0, 8.0, 8192
    inv = inv_frequencies(d, theta, "llama3", factor, 1.0, 4.0, old)
    base = 1.0 / theta ** (np.arange(0, d, 2) / d)
    wavelen = 2 * math.pi / base
    for i in range(d // 2):
        if wavelen[i] < old / 4.0:  # high frequency: untouched
            assert inv[i] == pytest.approx(base[i], rel=1e-6)
        elif wavelen[i] > old / 1.0:  # low frequency: divided by the factor
            assert inv[i] == pytest.approx(base[i] / factor, rel=1e-6)
        else:  # in between: interpolated
            s = (old / wavelen[i] - 1.0) / 3.0
            assert inv[i] == pytest.approx((1 - s) * base[i] / factor + s * base[i], rel=1e-5)


def test_apply_rope_matches_complex_rotation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 8)).astype(np.float32)
    pos = rng.integers(0, 1000, size=(2, 5))
    inv = inv_frequencies(8)
    out = np.asarray(apply_rope(x, pos, inv))
    z = (x[..., :4] + 1j * x[..., 4:]) * np.exp(1j * pos[..., None] * inv)
    np.testing.assert_allclose(out, np.concatenate([z.real, z.imag], -1), atol=1e-4)
    # relative property: <R(p)q, R(p+k)k> depends on k only
    q, k = x[0, :1], x[1, :1]
    dots = [float(np.sum(np.asarray(apply_rope(q, np.array([p]), inv))
                         * np.asarray(apply_rope(k, np.array([p + 3]), inv)))) for p in (0, 50)]
    assert dots[0] == pytest.approx(dots[1], rel=1e-4)


@pytest.mark.parametrize("kw", [dict(scaling="yarn"), dict(head_dim=7)])
def test_bad_rope_raises(kw):
    args = dict(head_dim=8, scaling="none") | kw
    with pytest.raises(ValueError, match=str(kw[next(iter(kw))])):
        inv_frequencies(args["head_dim"], scaling=args["scaling"])
