"""KIVI primitives: packing round-trip and the min-max error bound per bit width."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcache.cache import quant_ops as qo


@functools.partial(jax.jit, static_argnames=("bits", "group", "dtype"))
def _round_trip(x, bits, group, dtype):
    packed, scale, zero = qo.quantize_per_token(x, bits, group, dtype)
    return qo.dequantize_per_token(packed, scale, zero, bits, group), scale, zero


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_round_trip_and_size(bits):
    codes = np.random.default_rng(bits).integers(0, 2**bits, (3, 5, 64)).astype(np.uint8)
    packed = qo.pack(jnp.asarray(codes), bits)
    assert packed.dtype == jnp.uint16 and packed.shape == (3, 5, 64 * bits // 16)
    np.testing.assert_array_equal(qo.unpack(packed, bits), codes)


def test_pack_layout_bit_planes():
    """Word ``j`` holds channel ``j + k * W`` in bits ``[k * bits, (k + 1) * bits)``."""
    words = qo.pack(jnp.asarray([1, 2, 3, 4, 5, 6, 7, 8], jnp.uint8), 4)  # W = 2
    assert [int(w) for w in words] == [0x7531, 0x8642]
    assert [int(w) for w in qo.pack(jnp.asarray([200, 7], jnp.uint8), 8)] == [0x07C8]


@pytest.mark.parametrize("scale_dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_per_token_error_within_half_scale(bits, scale_dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 128)) * rng.choice([0.01, 1.0, 30.0], size=(4, 6, 1))
    x[0, 0, 7] = 250.0  # an outlier channel widens only its own group
    x[1, 1, :32] = 0.3  # a constant group
    x = jnp.asarray(x, jnp.float32)
    deq, scale, zero = _round_trip(x, bits, 32, scale_dtype)
    assert scale.dtype == scale_dtype and scale.shape == (4, 6, 4)
    bound = jnp.repeat(scale.astype(jnp.float32), 32, axis=-1) / 2
    err = jnp.abs(deq - x)
    assert bool(jnp.all(err <= bound * (1 + 1e-5) + 1e-6 * jnp.abs(x)))
    groups = x.reshape(4, 6, 4, 32)
    assert bool(jnp.all(zero.astype(jnp.float32) <= groups.min(-1)))
    top = zero.astype(jnp.float32) + qo.levels(bits) * scale.astype(jnp.float32)
    assert bool(jnp.all(top >= groups.max(-1) * (1 - 1e-6)))


def test_more_bits_less_error():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 256)), jnp.float32)
    errs = [float(jnp.abs(_round_trip(x, b, 32, jnp.bfloat16)[0] - x).mean()) for b in (2, 4, 8)]
    assert errs[0] > errs[1] > errs[2]


def test_bad_bits():
    with pytest.raises(ValueError, match="bits must be one of"):
        qo.pack(jnp.zeros((8,), jnp.uint8), 3)
