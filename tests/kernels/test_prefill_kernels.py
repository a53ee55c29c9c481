"""Causal prefill flash attention with SnapKV observation scores vs the reference, on CPU:
the Triton kernels interpreted, the TPU kernels interpreted and lowered for TPU; the two passes
on their own (``prefill_flash``'s log-sum-exp, ``observation_scores`` of any observers)."""

import jax.numpy as jnp
import numpy as np
import pytest
from kernel_helpers import lower_for_cuda, lower_for_tpu, run

from pallas_kernels import dispatch
from pallas_kernels.prefill import (
    observation_scores,
    prefill_attention,
    prefill_flash,
    prefill_reference,
    scores_reference,
)
from pallas_kernels.prefill.gpu import observation_scores_gpu, prefill_attention_gpu
from pallas_kernels.prefill.reference import last_observers
from pallas_kernels.prefill.tpu import observation_scores_tpu, prefill_attention_tpu


def make_case(seed, b, hq, hkv, t, d, dtype):
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.standard_normal(s), dtype)  # noqa: E731
    return f(b, hq, t, d), f(b, hkv, t, d), f(b, hkv, t, d)


def check(got, want, atol, patol):
    (out, sc), (rout, rsc) = got, want
    assert out.dtype == rout.dtype and out.shape == rout.shape and sc.shape == rsc.shape
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(rout, np.float32),
                               atol=atol, rtol=1e-2)
    np.testing.assert_allclose(sc, rsc, atol=patol, rtol=1e-3)


def test_reference_scores_are_column_sums():
    q, k, v = make_case(0, 1, 2, 1, 9, 8, jnp.float32)
    _, scores = prefill_reference(q, k, v, obs_window=3)
    np.testing.assert_allclose(scores.sum(-1), 3.0, rtol=1e-5)  # 3 queries, 1 each
    assert float(jnp.abs(scores[..., :]).min()) >= 0


@pytest.mark.parametrize("dtype,t,w,bq,bk,atol", [
    (jnp.float32, 100, 7, 32, 16, 1e-4),  # T not a multiple of the blocks (padded)
    (jnp.bfloat16, 64, 80, 32, 32, 3e-2),  # window longer than T
])
def test_gpu_kernels_interpret(dtype, t, w, bq, bk, atol):
    q, k, v = make_case(1, 2, 6, 2, t, 32, dtype)
    got = run(lambda *a: prefill_attention_gpu(*a, obs_window=w, block_q=bq, block_k=bk,
                                               interpret=True), q, k, v)
    check(got, prefill_reference(q, k, v, obs_window=w), atol, 1e-4)


def test_tpu_kernels_interpret():
    q, k, v = make_case(2, 1, 4, 2, 300, 128, jnp.float32)
    got = run(lambda *a: prefill_attention_tpu(*a, obs_window=20, block_q=128, block_k=128,
                                               interpret=True), q, k, v)
    check(got, prefill_reference(q, k, v, obs_window=20), 1e-4, 1e-5)


def observers_case(seed, t, d):
    """Every real query of two right-padded rows (lengths T and T - 9) observes."""
    q, k, v = make_case(seed, 2, 4, 2, t, d, jnp.float32)
    lse = prefill_reference(q, k, v, return_lse=True)[1]
    idx = jnp.where(jnp.arange(t) < jnp.array([[t], [t - 9]]), jnp.arange(t), -1)
    return q, idx, lse, k


def test_reference_scores_of_the_last_queries_are_snapkv_scores():
    q, k, v = make_case(5, 2, 4, 2, 30, 16, jnp.float32)
    _, lse, want = prefill_reference(q, k, v, obs_window=6, return_lse=True)
    got = scores_reference(q[:, :, -6:], last_observers(2, 30, 6), lse[:, :, -6:], k)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel,t,d", [(observation_scores_gpu, 150, 32),
                                        (observation_scores_tpu, 150, 128)], ids=["gpu", "tpu"])
def test_scores_of_any_observers_interpret(kernel, t, d):
    """W = T = 150 observers with padding rows: several observer blocks, the last partial."""
    args = observers_case(6, t, d)
    got = run(lambda *a: kernel(*a, interpret=True), *args)
    np.testing.assert_allclose(got, scores_reference(*args), rtol=1e-4, atol=1e-5)


def test_flash_lse_interpret():
    q, k, v = make_case(7, 2, 4, 2, 50, 32, jnp.float32)
    got = run(lambda *a: prefill_flash(*a, impl="pallas"), q, k, v)
    want = prefill_reference(q, k, v, return_lse=True)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_kernels_lower():
    q, k, v = make_case(3, 1, 8, 2, 1024, 128, jnp.bfloat16)
    f = lambda *a: prefill_attention_tpu(*a, obs_window=32)  # noqa: E731
    assert lower_for_tpu(f, q, k, v).count("tpu_custom_call") == 2
    g = lambda *a: prefill_attention_gpu(*a, obs_window=32)  # noqa: E731
    assert lower_for_cuda(g, q, k, v).count("__gpu$xla.gpu.triton") == 2
    args = observers_case(8, 1000, 128)  # 1000 observers: not a power of 2
    args = (args[0].astype(jnp.bfloat16),) + args[1:3] + (args[3].astype(jnp.bfloat16),)
    assert lower_for_cuda(observation_scores_gpu, *args).count("__gpu$xla.gpu.triton") == 1
    assert lower_for_tpu(observation_scores_tpu, *args).count("tpu_custom_call") == 1


def test_ops_unsupported_head_dim(monkeypatch):
    q, k, v = make_case(4, 1, 2, 1, 12, 24, jnp.float32)  # D=24
    with pytest.raises(ValueError, match="D=24"):
        prefill_attention(q, k, v, impl="pallas")
    monkeypatch.setattr(dispatch.jax, "default_backend", lambda: "gpu")
    got = prefill_attention(q, k, v, obs_window=4, impl="auto")
    want = prefill_reference(q, k, v, obs_window=4)
    np.testing.assert_array_equal(got[0], want[0])
    with pytest.raises(ValueError, match="observation_scores.*D=24"):
        observation_scores(q, jnp.zeros((1, 12), jnp.int32), jnp.zeros((1, 2, 12)), k,
                           impl="pallas")
    with pytest.raises(ValueError, match=r"obs_idx must be int \[B=1, W=12\]"):
        observation_scores(q, jnp.zeros((1, 5), jnp.int32), jnp.zeros((1, 2, 12)), k,
                           impl="xla")
    with pytest.raises(ValueError, match="Hq=3"):
        prefill_attention(q[:, :1].repeat(3, 1), k[:, :1].repeat(2, 1), v[:, :1].repeat(2, 1),
                          impl="xla")
