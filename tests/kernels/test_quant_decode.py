"""Quantized decode kernels (KIVI codes + full-precision segments) vs the reference, on CPU:
the Triton kernel interpreted, the TPU kernel interpreted and lowered for TPU."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_helpers import lower_for_cuda, lower_for_tpu, run

from lcache.cache import quant_ops as qo
from pallas_kernels import dispatch
from pallas_kernels.quant_decode import QuantCodes, Segment, dequantize, quant_decode_attention
from pallas_kernels.quant_decode.gpu import dequant, plane, quant_decode_gpu
from pallas_kernels.quant_decode.reference import quant_decode_reference, unpack
from pallas_kernels.quant_decode.tpu import quant_decode_tpu


def make_case(seed, b, h, g, c, d, bits, group, dtype, seg_lens=(4, 32), empty_row=True):
    """Random codes with realistic grids (scale = range / levels), random masks (one kv row
    with nothing valid when ``empty_row``), and full-precision segments."""
    rng = np.random.default_rng(seed)
    per, lv, nb = 16 // bits, 2**bits - 1, -(-c // group)
    q = jnp.asarray(rng.standard_normal((b, h * g, d)), dtype)
    bf = lambda x: jnp.asarray(x, jnp.bfloat16)  # noqa: E731
    codes = QuantCodes(
        k_codes=jnp.asarray(rng.integers(0, 2**16, (b, h, c, d // per)), jnp.uint16),
        k_scale=bf(rng.uniform(1.0, 4.0, (b, h, nb, d)) / lv),
        k_zero=bf(rng.uniform(-2.0, 0.0, (b, h, nb, d))),
        v_codes=jnp.asarray(rng.integers(0, 2**16, (b, h, c, d // per)), jnp.uint16),
        v_scale=bf(rng.uniform(1.0, 4.0, (b, h, c, d // group)) / lv),
        v_zero=bf(rng.uniform(-2.0, 0.0, (b, h, c, d // group))),
        valid=jnp.asarray(rng.random((b, h, c)) < 0.6))
    segs = []
    for n in seg_lens:
        ok = rng.random((b, h, n)) < 0.7
        if empty_row:
            ok[0, 0] = False
        segs.append(Segment(jnp.asarray(rng.standard_normal((b, h, n, d)), dtype),
                            jnp.asarray(rng.standard_normal((b, h, n, d)), dtype),
                            jnp.asarray(ok)))
    if empty_row:
        codes = codes._replace(valid=codes.valid.at[0, 0].set(False))
    return q, codes, tuple(segs)


def check(got, want, atol, patol=None):
    (out, (cp, sp)), (rout, (rcp, rsp)) = got, want
    assert out.dtype == rout.dtype and out.shape == rout.shape
    out, rout = np.asarray(out, np.float32), np.asarray(rout, np.float32)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, rout, atol=atol, rtol=1e-2)
    patol = patol or atol
    for a, b in zip([cp, *sp], [rcp, *rsp], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=patol)


@functools.partial(jax.jit, static_argnums=1)
def _lcache_quantize(x, bits):
    v_codes, v_scale, v_zero = qo.quantize_per_token(x, bits, 8, jnp.bfloat16)
    lo, hi, _ = qo.block_range(x, jnp.ones(x.shape[:3], bool), 8)
    k_scale, k_zero = qo.minmax_params(lo, hi, bits, jnp.bfloat16)
    k_codes = qo.pack(qo.quantize(x, qo.per_slot(k_scale, 8, 37), qo.per_slot(k_zero, 8, 37),
                                  bits), bits)
    codes = QuantCodes(k_codes, k_scale, k_zero, v_codes, v_scale, v_zero,
                       jnp.ones(x.shape[:3], bool))
    want_k = qo.dequantize(qo.unpack(k_codes, bits), qo.per_slot(k_scale, 8, 37),
                           qo.per_slot(k_zero, 8, 37))
    want_v = qo.dequantize_per_token(v_codes, v_scale, v_zero, bits, 8)
    return dequantize(codes, bits, 8), (want_k, want_v)


def test_dequantize_matches_lcache_quant_ops():
    """The kernels' layout is lcache's: pack/per-token/per-block parameters agree."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 37, 32)), jnp.float32)
    for bits in (2, 4, 8):
        (keys, values), (want_k, want_v) = _lcache_quantize(x, bits)
        np.testing.assert_allclose(keys, want_k, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(values, want_v, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_planes_are_channel_blocks(bits):
    """Plane ``k`` of the words is channels ``[kW, (k+1)W)`` of lcache's unpacked codes, and
    the kernel's 'jnp' dequantization of it is ``code * scale + zero``."""
    rng = np.random.default_rng(bits)
    words = jnp.asarray(rng.integers(0, 2**16, (16, 8)), jnp.uint16)
    codes = np.asarray(qo.unpack(words, bits))
    np.testing.assert_array_equal(unpack(words, bits), codes)
    scale = jnp.asarray(rng.uniform(0.1, 1.0, (1, 8)), jnp.float32)
    zero = jnp.asarray(rng.uniform(-1.0, 0.0, (16, 1)), jnp.float32)
    for k in range(16 // bits):
        block = codes[:, 8 * k:8 * (k + 1)]
        np.testing.assert_array_equal(plane(words, k, bits), block)
        for cdt in (jnp.float32, jnp.bfloat16):
            got = dequant(words, k, bits, scale, zero, cdt, "jnp")
            want = (block * np.asarray(scale) + np.asarray(zero)).astype(cdt)
            np.testing.assert_allclose(np.asarray(got, np.float32),
                                       np.asarray(want, np.float32), rtol=1e-2, atol=1e-2)


# (bits, D, G, dtype, C, block_k, num_splits, segments, atol): odd C (not a multiple of
# block_k or of G), a partial last split, segments that need padding (N=4 -> 16 rows), value
# chunks of a whole group (int4, int8) and of half a group (int2 at G=32, int4 at G=32).
GPU_CASES = [
    (4, 64, 16, jnp.float32, 200, 32, 3, (4, 32), 1e-4),
    (2, 128, 32, jnp.float32, 77, 32, None, (4,), 1e-4),
    (8, 32, 16, jnp.bfloat16, 130, 16, 2, (), 4e-2),
    (4, 64, 32, jnp.bfloat16, 100, 64, None, (4,), 4e-2),
]


@pytest.mark.parametrize("bits,d,group,dtype,c,bk,splits,segs,atol", GPU_CASES)
def test_gpu_kernel_interpret(bits, d, group, dtype, c, bk, splits, segs, atol):
    q, codes, segments = make_case(1, 2, 2, 3, c, d, bits, group, dtype, segs)
    got = run(lambda *a: quant_decode_gpu(*a, return_slot_probs=True, block_k=bk,
                                          num_splits=splits, interpret=True), q, codes, segments)
    check(got, quant_decode_reference(q, codes, segments, return_slot_probs=True), atol,
          patol=2e-2 if dtype == jnp.bfloat16 else 1e-5)


def test_tpu_kernel_interpret():
    q, codes, segments = make_case(2, 1, 2, 4, 300, 128, 2, 32, jnp.float32, (4, 128))
    got = run(lambda *a: quant_decode_tpu(*a, return_slot_probs=True, block_k=128,
                                          interpret=True), q, codes, segments)
    check(got, quant_decode_reference(q, codes, segments, return_slot_probs=True), 1e-4, 1e-5)


def test_tpu_kernel_lowers_for_tpu():
    q, codes, segments = make_case(3, 1, 2, 4, 1000, 128, 4, 32, jnp.bfloat16, (4, 128))
    text = lower_for_tpu(lambda *a: quant_decode_tpu(*a, return_slot_probs=True), q, codes,
                         segments)
    assert "tpu_custom_call" in text


def test_gpu_kernel_lowers_for_cuda():
    q, codes, segments = make_case(4, 1, 2, 4, 4096, 128, 4, 32, jnp.bfloat16, (4, 128))
    text = lower_for_cuda(lambda *a: quant_decode_gpu(*a, return_slot_probs=True), q, codes,
                          segments)
    assert "__gpu$xla.gpu.triton" in text


def test_ops_unsupported_group(monkeypatch):
    q, codes, segments = make_case(5, 1, 1, 2, 40, 64, 4, 8, jnp.float32, (4,))  # G=8 < 16
    with pytest.raises(ValueError, match="G=8"):
        quant_decode_attention(q, codes, segments, impl="pallas")
    monkeypatch.setattr(dispatch.jax, "default_backend", lambda: "gpu")
    got = quant_decode_attention(q, codes, segments, impl="auto", interpret=True)  # logged
    np.testing.assert_array_equal(got, quant_decode_reference(q, codes, segments))


@pytest.mark.parametrize("bad,match", [
    (dict(k_codes=jnp.zeros((1, 1, 40, 12), jnp.uint16)), "does not pack"),
    (dict(k_codes=jnp.zeros((1, 1, 40, 8), jnp.uint8)), "uint16"),
    (dict(v_scale=jnp.zeros((1, 1, 40, 3), jnp.bfloat16)), "v_scale"),
    (dict(valid=jnp.ones((1, 1, 41), bool)), "codes.valid"),
])
def test_shape_validation(bad, match):
    q, codes, segments = make_case(6, 1, 1, 2, 40, 32, 4, 16, jnp.float32, ())
    with pytest.raises(ValueError, match=match):
        quant_decode_attention(q, codes._replace(**bad), segments, impl="xla")
