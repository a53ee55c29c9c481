"""MLA absorbed decode kernels vs the reference (and vs the model's absorbed attention), on CPU:
the Triton kernel interpreted, the TPU kernel interpreted and lowered for TPU."""

import jax.numpy as jnp
import numpy as np
import pytest
from kernel_helpers import lower_for_cuda, lower_for_tpu, run

from lcache.attention.core import grouped_attention
from pallas_kernels import dispatch
from pallas_kernels.mla_decode import mla_decode_attention, mla_decode_reference
from pallas_kernels.mla_decode.gpu import mla_decode_gpu
from pallas_kernels.mla_decode.tpu import mla_decode_tpu


def make_case(seed, b, hq, c, dc, dr, dtype):
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.standard_normal(s), dtype)  # noqa: E731
    valid = rng.random((b, 1, c)) < 0.7
    valid[0] = False  # a row with nothing valid
    return f(b, hq, dc), f(b, hq, dr), f(b, 1, c, dc), f(b, 1, c, dr), jnp.asarray(valid)


def check(got, want, atol):
    (out, sp), (rout, rsp) = got, want
    assert out.dtype == rout.dtype and out.shape == rout.shape
    out = np.asarray(out, np.float32)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, np.asarray(rout, np.float32), atol=atol, rtol=1e-2)
    np.testing.assert_allclose(sp, rsp, atol=atol)


def test_reference_matches_grouped_attention():
    """The oracle is the model's absorbed path: one latent key head read by all heads."""
    ql, qr, lat, kr, valid = make_case(0, 2, 6, 33, 32, 16, jnp.float32)
    out, probs = mla_decode_reference(ql, qr, lat, kr, valid, scale=0.2, return_slot_probs=True)
    q = jnp.concatenate([ql, qr], -1)[:, None, :, None]  # [B, 1, H, 1, dc + dr]
    k = jnp.concatenate([lat, kr], -1)
    want, mass = grouped_attention(q, k, lat, valid[:, :, None, None, :], scale=0.2)
    np.testing.assert_allclose(out, want[:, 0, :, 0], atol=1e-5)
    np.testing.assert_allclose(probs, mass, atol=1e-5)


@pytest.mark.parametrize("dtype,hq,c,bh,splits,atol", [
    (jnp.float32, 20, 150, 16, 3, 1e-4),  # heads padded 20 -> 32, odd C, partial last split
    (jnp.bfloat16, 16, 64, None, None, 3e-2),
])
def test_gpu_kernel_interpret(dtype, hq, c, bh, splits, atol):
    args = make_case(1, 2, hq, c, 64, 16, dtype)
    got = run(lambda *a: mla_decode_gpu(*a, scale=0.15, return_slot_probs=True, block_h=bh,
                                        block_k=32, num_splits=splits, interpret=True), *args)
    check(got, mla_decode_reference(*args, scale=0.15, return_slot_probs=True), atol)


def test_tpu_kernel_interpret():
    args = make_case(2, 2, 20, 300, 128, 64, jnp.float32)
    got = run(lambda *a: mla_decode_tpu(*a, scale=0.1, return_slot_probs=True, block_k=128,
                                        interpret=True), *args)
    check(got, mla_decode_reference(*args, scale=0.1, return_slot_probs=True), 1e-4)


def test_kernels_lower():
    args = make_case(3, 1, 128, 1000, 512, 64, jnp.bfloat16)
    f = lambda *a: mla_decode_tpu(*a, scale=0.1, return_slot_probs=True)  # noqa: E731
    assert "tpu_custom_call" in lower_for_tpu(f, *args)
    g = lambda *a: mla_decode_gpu(*a, scale=0.1, return_slot_probs=True)  # noqa: E731
    assert "__gpu$xla.gpu.triton" in lower_for_cuda(g, *args)


def test_ops_unsupported_dims(monkeypatch):
    args = make_case(4, 1, 4, 20, 48, 16, jnp.float32)  # dc=48: not a power of 2
    with pytest.raises(ValueError, match="dc=48"):
        mla_decode_attention(*args, scale=0.1, impl="pallas")
    monkeypatch.setattr(dispatch.jax, "default_backend", lambda: "gpu")
    got = mla_decode_attention(*args, scale=0.1, impl="auto")
    np.testing.assert_array_equal(got, mla_decode_reference(*args, scale=0.1))
    with pytest.raises(ValueError, match="k_rope"):
        mla_decode_attention(*args[:3], args[3][:, :, :5], args[4], scale=0.1, impl="xla")


def test_mla_decode_over_view_matches_grouped_attention():
    """The lcache entry point (what ``MLAttention.decode`` would call) on a latent view."""
    from lcache.attention.decode import mla_decode_over_view
    from lcache.cache import CacheView

    ql, qr, lat, kr, valid = make_case(5, 2, 6, 40, 32, 16, jnp.float32)
    pos = jnp.broadcast_to(jnp.arange(40, dtype=jnp.int32), (2, 1, 40))
    view = CacheView.single(keys=kr, values=lat, valid=valid, key_pos=pos, rope_pos=pos,
                            query_offset=jnp.zeros((2,), jnp.int32))
    got = run(lambda a, b, v: mla_decode_over_view(a, b, v, None, scale=0.2, impl="pallas"),
              ql, qr, view)
    q = jnp.concatenate([ql, qr], -1)[:, None, :, None]
    want, mass = grouped_attention(q, jnp.concatenate([lat, kr], -1), lat,
                                   valid[:, :, None, None, :], scale=0.2)
    np.testing.assert_allclose(got[0], want[:, 0, :, 0], atol=1e-4)
    np.testing.assert_allclose(got[1], mass, atol=1e-5)
