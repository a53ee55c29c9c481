"""Decode-attention kernels vs the reference, on CPU (interpret mode) + TPU cross-lowering."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import dispatch
from pallas_kernels.decode import decode_attention, decode_attention_reference
from pallas_kernels.decode.gpu import decode_attention_gpu
from pallas_kernels.decode.tpu import decode_attention_tpu
from pallas_kernels.gpu_common import merge_splits

# (out atol, slot-prob atol): bf16 kernels round p and RoPE'd keys to bf16 for the MMAs.
TOL = {jnp.float32: (2e-5, 1e-5), jnp.bfloat16: (4e-2, 2e-2)}


def _inv_freq(d, base=10000.0):
    return (1.0 / base ** (np.arange(0, d, 2) / d)).astype(np.float32)


def make_case(seed, b, hkv, g, c, d, dtype, mask="random", dv=None):
    """Random inputs (no zeros); mask 'random' has one all-invalid and one all-valid row,
    'ring' is sinks + a wrapped-around window per (b, h)."""
    rng = np.random.default_rng(seed)
    dv = dv or d
    q = 2.0 * rng.standard_normal((b, hkv * g, d))
    keys = rng.standard_normal((b, hkv, c, d))
    values = rng.standard_normal((b, hkv, c, dv))
    if mask == "random":
        valid = rng.random((b, hkv, c)) < 0.6
        valid[0, 0] = False
        valid[-1, -1] = True
    else:
        idx = np.arange(c)
        start = rng.integers(0, c, (b, hkv, 1))
        count = rng.integers(1, c, (b, hkv, 1))
        valid = ((idx - start) % c < count) | (idx < 4)
    pos = rng.integers(0, 50_000, (b, hkv, c)).astype(np.int32)
    cast = lambda x: jnp.asarray(x, dtype)
    return (cast(q), cast(keys), cast(values), jnp.asarray(valid)), jnp.asarray(pos)


def _check(got, want, dtype, probs):
    atol, patol = TOL[dtype]
    if probs:
        (out, sp), (rout, rsp) = got, want
        np.testing.assert_allclose(np.asarray(sp), np.asarray(rsp), atol=patol, rtol=1e-2)
    else:
        out, rout = got, want
    assert out.dtype == rout.dtype and out.shape == rout.shape
    out, rout = np.asarray(out, np.float32), np.asarray(rout, np.float32)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, rout, atol=atol, rtol=1e-2)


def _numpy_oracle(q, keys, values, valid, pos, inv_freq):
    """Per-head float64 loops, independent of the vectorised reference."""
    q, keys, values = (np.asarray(x, np.float64) for x in (q, keys, values))
    b, hkv, c, d = keys.shape
    g = q.shape[1] // hkv
    out = np.zeros((b, hkv * g, values.shape[-1]))
    probs = np.zeros((b, hkv, c))
    for i in range(b):
        for h in range(hkv):
            k = keys[i, h]
            if pos is not None:
                # The angle is an f32 product by convention (large positions lose bits).
                ang = (np.asarray(pos[i, h], np.float32)[:, None] * inv_freq).astype(np.float64)
                k1, k2 = k[:, : d // 2], k[:, d // 2:]
                k = np.concatenate([k1 * np.cos(ang) - k2 * np.sin(ang),
                                    k2 * np.cos(ang) + k1 * np.sin(ang)], -1)
            sel = np.asarray(valid[i, h])
            for j in range(g):
                if not sel.any():
                    continue
                s = k[sel] @ q[i, h * g + j] / np.sqrt(d)
                p = np.exp(s - s.max())
                p /= p.sum()
                out[i, h * g + j] = p @ values[i, h][sel]
                probs[i, h, sel] += p
    return out, probs


@pytest.mark.parametrize("rope", [False, True])
def test_reference_matches_numpy_oracle(rope):
    (q, k, v, valid), pos = make_case(0, 2, 2, 3, 37, 16, jnp.float32)
    inv = jnp.asarray(_inv_freq(16)) if rope else None
    pos = pos if rope else None
    out, sp = decode_attention_reference(q, k, v, valid, rope_pos=pos, inv_freq=inv,
                                         return_slot_probs=True)
    want_out, want_sp = _numpy_oracle(q, k, v, valid, pos, None if inv is None else _inv_freq(16))
    np.testing.assert_allclose(out, want_out, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(sp, want_sp, atol=1e-5)
    assert float(jnp.abs(out[0, :3]).max()) == 0.0  # the all-invalid row gives zeros


# (g, c, dtype, rope, probs, num_splits, block_k, mask): odd C, C % block != 0, G in {1, 4}.
GPU_CASES = [
    (1, 37, jnp.float32, False, True, 1, 16, "random"),
    (4, 130, jnp.float32, True, True, 3, 32, "ring"),
    (4, 130, jnp.bfloat16, False, False, None, None, "random"),
    (4, 64, jnp.bfloat16, True, True, 2, 16, "ring"),
    (1, 130, jnp.bfloat16, True, False, 4, 16, "random"),
]


@pytest.mark.parametrize("g,c,dtype,rope,probs,splits,bk,mask", GPU_CASES)
def test_gpu_kernel_interpret(g, c, dtype, rope, probs, splits, bk, mask):
    d = 32
    (q, k, v, valid), pos = make_case(1, 2, 2, g, c, d, dtype, mask)
    kw = dict(rope_pos=pos, inv_freq=jnp.asarray(_inv_freq(d))) if rope else {}
    got = decode_attention_gpu(q, k, v, valid, return_slot_probs=probs, num_splits=splits,
                               block_k=bk, interpret=True, **kw)
    _check(got, decode_attention_reference(q, k, v, valid, return_slot_probs=probs, **kw),
           dtype, probs)


def test_sink_logit_reference_matches_model_attention():
    """The reference's sink is lcache's 'sink_logit' variant (gpt-oss): same weights."""
    from lcache.attention.core import grouped_attention

    (q, k, v, valid), _ = make_case(8, 2, 2, 3, 29, 16, jnp.float32)
    sink = jnp.asarray(np.random.default_rng(8).normal(size=6) * 2, jnp.float32)
    out, sp = decode_attention_reference(q, k, v, valid, sink_logit=sink,
                                         return_slot_probs=True)
    want, mass = grouped_attention(q.reshape(2, 2, 3, 1, 16), k, v, valid[:, :, None, None],
                                   variant="sink_logit", sink_logit_HG=sink.reshape(2, 3))
    np.testing.assert_allclose(out, want.reshape(2, 6, 16), atol=1e-5)
    np.testing.assert_allclose(sp, mass, atol=1e-6)


@pytest.mark.parametrize("splits", [1, 3])
def test_gpu_kernel_sink_logit(splits):
    """The sink joins the split merge; the all-invalid row keeps zeros."""
    (q, k, v, valid), _ = make_case(9, 2, 2, 4, 70, 32, jnp.float32)
    sink = jnp.asarray(np.random.default_rng(9).normal(size=8) * 3, jnp.float32)
    got = decode_attention_gpu(q, k, v, valid, sink_logit=sink, return_slot_probs=True,
                               num_splits=splits, block_k=16, interpret=True)
    want = decode_attention_reference(q, k, v, valid, sink_logit=sink, return_slot_probs=True)
    _check(got, want, jnp.float32, True)
    assert float(jnp.abs(got[0][0, :4]).max()) == 0.0


def test_gpu_kernel_small_group_tile_and_dv():
    """G=3 padded only to 4 rows (min_block_h=1), Dv != D."""
    (q, k, v, valid), _ = make_case(2, 1, 2, 3, 50, 32, jnp.float32, dv=16)
    got = decode_attention_gpu(q, k, v, valid, num_splits=2, block_k=16, min_block_h=1,
                               interpret=True, scale=0.3)
    _check(got, decode_attention_reference(q, k, v, valid, scale=0.3), jnp.float32, False)


def test_merge_splits_handles_empty_splits():
    m = jnp.array([[-1e30, 1.0, -1e30]])[..., None]  # [1, S=3, G=1]
    den = jnp.array([[0.0, 2.0, 0.0]])[..., None]
    acc = jnp.ones((1, 3, 1, 4))
    out, lse = merge_splits(m, den, acc)
    np.testing.assert_allclose(out, 0.5 * jnp.ones((1, 1, 4)))
    np.testing.assert_allclose(lse, [[1.0 + np.log(2.0)]])


TPU_CASES = [  # (g, c, dtype, rope, probs, mask, interpret)
    (4, 300, jnp.float32, True, True, "random", "params"),
    (1, 256, jnp.bfloat16, False, False, "ring", "plain"),
]


@pytest.mark.parametrize("g,c,dtype,rope,probs,mask,interp", TPU_CASES)
def test_tpu_kernel_interpret(g, c, dtype, rope, probs, mask, interp):
    from jax.experimental.pallas import tpu as pltpu

    d = 128
    (q, k, v, valid), pos = make_case(3, 2, 2, g, c, d, dtype, mask)
    kw = dict(rope_pos=pos, inv_freq=jnp.asarray(_inv_freq(d))) if rope else {}
    interpret = pltpu.InterpretParams(uninitialized_memory="nan") if interp == "params" else True
    got = decode_attention_tpu(q, k, v, valid, return_slot_probs=probs, block_k=128,
                               interpret=interpret, **kw)
    _check(got, decode_attention_reference(q, k, v, valid, return_slot_probs=probs, **kw),
           dtype, probs)


@pytest.mark.parametrize("rope,probs", [(False, False), (True, True)])
def test_tpu_kernel_lowers_for_tpu(rope, probs):
    (q, k, v, valid), pos = make_case(4, 2, 2, 4, 256, 128, jnp.bfloat16)
    inv = jnp.asarray(_inv_freq(128))

    def f(q, k, v, valid, pos):
        kw = dict(rope_pos=pos, inv_freq=inv) if rope else {}
        return decode_attention_tpu(q, k, v, valid, return_slot_probs=probs, **kw)

    text = jax.jit(f).trace(q, k, v, valid, pos).lower(lowering_platforms=("tpu",)).as_text()
    assert "tpu_custom_call" in text


def test_ops_dispatch_on_cpu():
    (q, k, v, valid), _ = make_case(5, 2, 2, 4, 40, 32, jnp.float32)
    ref = decode_attention_reference(q, k, v, valid, return_slot_probs=True)
    for impl in ("xla", "auto"):
        got = decode_attention(q, k, v, valid, impl=impl, return_slot_probs=True)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
    got = jax.jit(lambda *a: decode_attention(*a, impl="pallas", return_slot_probs=True))(
        q, k, v, valid)
    _check(got, ref, jnp.float32, True)


def test_ops_unsupported_head_dim(monkeypatch):
    (q, k, v, valid), _ = make_case(6, 1, 1, 2, 20, 24, jnp.float32)  # D=24: not a power of 2
    with pytest.raises(ValueError, match="D=24"):
        decode_attention(q, k, v, valid, impl="pallas")
    # 'auto' on an accelerator backend logs and falls back to the reference.
    monkeypatch.setattr(dispatch.jax, "default_backend", lambda: "gpu")
    got = decode_attention(q, k, v, valid, impl="auto", interpret=True)
    np.testing.assert_array_equal(got, decode_attention_reference(q, k, v, valid))


@pytest.mark.parametrize("bad,match", [
    (dict(q=jnp.zeros((2, 8, 16))), r"q \(2, 8, 16\)"),
    (dict(valid=jnp.ones((2, 2, 9), bool)), r"\[2, 2, 9\]"),
    (dict(values=jnp.ones((2, 2, 9, 32))), r"values \(2, 2, 9, 32\)"),
    (dict(q=jnp.ones((2, 7, 32))), "Hq=7"),
    (dict(rope_pos=jnp.zeros((2, 2, 10), jnp.int32), inv_freq=jnp.ones(8)), r"inv_freq"),
])
def test_shape_validation(bad, match):
    (q, k, v, valid), _ = make_case(7, 2, 2, 2, 10, 32, jnp.float32)
    args = dict(q=q, keys=k, values=v, valid=valid) | bad
    with pytest.raises(ValueError, match=match):
        decode_attention(**args, impl="xla")


@pytest.mark.parametrize("heads,c", [(8, 4096), (64, 32768), (256, 131072), (4, 37), (2, 5000)])
def test_split_plan(heads, c):
    from pallas_kernels.decode.gpu import plan

    for itemsize, want_bk in ((2, 128), (4, 64)):
        bk, splits, nb = plan(heads, c, 128, 128, itemsize=itemsize)
        assert bk == min(want_bk, max(16, 1 << (c - 1).bit_length()))
        nblocks = -(-c // bk)
        assert (splits - 1) * nb < nblocks <= splits * nb  # every split has work
