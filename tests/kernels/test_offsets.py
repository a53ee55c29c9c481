"""32-bit offsets (issue 13): jax's Triton lowering indexes an operand with 64-bit element
offsets only above 2**32 bytes, so 1-byte operands of 2**31..2**32 elements wrap negative.
Checked on CPU: the rule against the real lowering (Triton IR printed for shapes that are never
allocated), every kernel's operands at the shape that crashed (B = 32, 128K, int8), and the
clear error for an operand that would overflow."""

import functools
import re

import jax
import jax.numpy as jnp
import pytest
from jax.experimental import pallas as pl
from kernel_helpers import lower_for_cuda

from pallas_kernels import gpu_common as gc
from pallas_kernels.decode.gpu import decode_attention_gpu
from pallas_kernels.mla_decode.gpu import mla_decode_gpu
from pallas_kernels.prefill.gpu import prefill_attention_gpu
from pallas_kernels.quant_decode import QuantCodes, Segment
from pallas_kernels.quant_decode.gpu import quant_decode_gpu

S = jax.ShapeDtypeStruct


def _copy_kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...]


def _lowered_offset_bits(shape, dtype, capsys):
    """Offset width jax's Triton lowering gives a ``shape``/``dtype`` input, read off the
    printed Triton IR (the pointer arithmetic of the input's loads)."""
    n = shape[0]

    def f(x):
        return pl.pallas_call(_copy_kernel, grid=(n // 16,),
                              in_specs=[pl.BlockSpec((16,), lambda i: (i,))],
                              out_specs=pl.BlockSpec((16,), lambda i: (0,)),
                              out_shape=S((16,), dtype), debug=True)(x)

    capsys.readouterr()
    lower_for_cuda(f, S(shape, dtype))
    ir = capsys.readouterr().out
    widths = set(re.findall(r"tt\.addptr.*tensor<16xi(32|64)>", ir))
    assert widths, ir[-2000:]
    return 64 if "64" in widths else 32


@pytest.mark.parametrize("shape,dtype", [
    ((2**32,), jnp.uint8),  # 4 GiB of bytes: 32-bit offsets up to 2**32 - 1 (the crash)
    ((2**32 + 16,), jnp.uint8),  # just over 4 GiB: 64-bit
    ((2**31,), jnp.uint16),  # 4 GiB of words: 32-bit, but offsets stay < 2**31
    ((2**31 + 16,), jnp.bfloat16),
])
def test_offset_rule_matches_lowering(shape, dtype, capsys):
    assert gc.offset_bits(shape, dtype) == _lowered_offset_bits(shape, dtype, capsys)


def test_overflow_rule():
    assert gc.offsets_overflow((32, 8, 131072, 128), jnp.uint8)  # int8 codes as bytes
    assert not gc.offsets_overflow((32, 8, 131072, 64), jnp.uint16)  # the same as words
    assert not gc.offsets_overflow((32, 8, 131072, 128), jnp.bfloat16)  # 8 GiB: 64-bit
    assert not gc.offsets_overflow((2**31,), jnp.uint8)  # last offset 2**31 - 1
    assert gc.offsets_overflow((2**31 + 1,), jnp.bool_)
    assert not gc.offsets_overflow((2**32 + 1,), jnp.bool_)


def _operands(monkeypatch, module, fn, *args, **kw):
    """Shapes of every operand ``fn`` hands to ``pallas_call`` (traced, nothing allocated)."""
    seen = []
    real = module.pl.pallas_call

    def spy(*a, **k):
        call = real(*a, **k)

        def run(*xs):
            seen.extend(xs)
            return call(*xs)
        return run

    monkeypatch.setattr(module.pl, "pallas_call", spy)
    jax.eval_shape(functools.partial(fn, **kw), *args)
    return seen


def _quant_args(b, h, c, d, bits, group=32, ring=128, sinks=4):
    w, nb, bf = d * bits // 16, -(-c // group), jnp.bfloat16
    codes = QuantCodes(S((b, h, c, w), jnp.uint16), S((b, h, nb, d), bf), S((b, h, nb, d), bf),
                       S((b, h, c, w), jnp.uint16), S((b, h, c, d // group), bf),
                       S((b, h, c, d // group), bf), S((b, h, c), jnp.bool_))
    segs = tuple(Segment(S((b, h, n, d), bf), S((b, h, n, d), bf), S((b, h, n), jnp.bool_))
                 for n in (sinks, ring))
    return S((b, 4 * h, d), bf), codes, segs


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_quant_operands_at_the_crash_shape(monkeypatch, bits):
    from pallas_kernels.quant_decode import gpu

    ops = _operands(monkeypatch, gpu, quant_decode_gpu, *_quant_args(32, 8, 131072, 128, bits),
                    return_slot_probs=True)
    assert len(ops) == 8 + 3 * 2
    assert max(x.size * x.dtype.itemsize for x in ops) >= 2**31 * (bits == 8)
    assert not any(gc.offsets_overflow(x.shape, x.dtype) for x in ops)


def test_every_kernel_refuses_an_overflowing_operand():
    """A bool validity of > 2**31 slots (not reachable on today's GPUs, but a crash, not an
    answer, if it were passed) is a clear error in every wrapper."""
    b, h, c, bf = 1, 1, 2**31 + 64, jnp.bfloat16
    valid = S((b, h, c), jnp.bool_)
    with pytest.raises(ValueError, match="32-bit offsets"):
        jax.eval_shape(decode_attention_gpu, S((b, 4, 16), bf), S((b, h, c, 16), bf),
                       S((b, h, c, 16), bf), valid)
    with pytest.raises(ValueError, match="32-bit offsets"):
        jax.eval_shape(functools.partial(mla_decode_gpu, scale=0.1), S((b, 16, 16), bf),
                       S((b, 16, 16), bf), S((b, 1, c, 16), bf), S((b, 1, c, 16), bf), valid)
    q, codes, _ = _quant_args(b, h, c, 64, 4)
    with pytest.raises(ValueError, match="valid bool.* 32-bit offsets"):
        jax.eval_shape(quant_decode_gpu, q, codes)
    fp8 = S((1, 1, 2**27 + 128, 16), jnp.float8_e4m3fn)  # 1-byte inputs, > 2**31 elements
    with pytest.raises(ValueError, match="32-bit offsets"):
        jax.eval_shape(prefill_attention_gpu, fp8, fp8, fp8)
