"""Dispatch of causal prefill attention with optional SnapKV observation scores.

``impl`` as in ``pallas_kernels.dispatch``: 'xla' = the ``jnp`` reference (materialises
``T x T``: small inputs only); 'pallas' = the TPU kernels on TPU, the Triton kernels elsewhere
(interpreted on CPU); 'auto' = the kernels on GPU/TPU, the reference on CPU.

Three ops: ``prefill_attention`` (attention and the last ``w`` queries' scores in one call),
and its two passes on their own for callers that choose the observers (the model:
right-padded rows, every query for H2O's mass, a sink logit merged into ``lse``):
``prefill_flash`` (attention and each query's log-sum-exp) and ``observation_scores``.
"""

from __future__ import annotations

from pallas_kernels import dispatch
from pallas_kernels.prefill import gpu, tpu
from pallas_kernels.prefill.reference import (
    check_inputs,
    check_observers,
    prefill_reference,
    scores_reference,
)


def prefill_attention(q, k, v, *, scale=None, obs_window=0, impl="auto", interpret=None,
                      block_q=None, block_k=None):
    """Causal GQA attention of a whole sequence, plus SnapKV observation scores.

    Args:
      q: ``[B, Hq, T, D]`` rotated queries; ``Hq = G * Hkv``.
      k: ``[B, Hkv, T, D]`` rotated keys.
      v: ``[B, Hkv, T, Dv]``.
      scale: logit scale, default ``1/sqrt(D)``.
      obs_window: ``w > 0`` also returns ``scores [B, Hq, T]`` f32: the softmax probability
        each key gets from the last ``w`` queries, summed over them (SnapKV's votes).
      impl: 'xla', 'pallas' or 'auto'; interpret: None = True on CPU.
      block_q, block_k: forward-pass tiles (None = auto).

    Returns:
      ``out [B, Hq, T, Dv]`` in ``q.dtype``, and ``scores`` if ``obs_window > 0``.
    """
    dispatch.check_impl(impl)
    _, _, _, _, d, dv = check_inputs(q, k, v, obs_window)
    kw = dict(scale=scale, obs_window=obs_window)
    blocks = dict(block_q=block_q, block_k=block_k)
    return dispatch.run(
        "prefill_attention", impl, lambda: prefill_reference(q, k, v, **kw),
        gpu=dispatch.Kernel(gpu.unsupported_reason(d, dv, block_q, block_k),
                            lambda interp: gpu.prefill_attention_gpu(
                                q, k, v, **kw, **blocks, interpret=interp)),
        tpu=dispatch.Kernel(tpu.unsupported_reason(d, dv, block_q, block_k),
                            lambda interp: tpu.prefill_attention_tpu(
                                q, k, v, **kw, **blocks, interpret=interp)),
        interpret=interpret)


def prefill_flash(q, k, v, *, scale=None, impl="auto", interpret=None):
    """Causal GQA attention (shapes as ``prefill_attention``) -> ``out [B, Hq, T, Dv]`` in
    ``q.dtype`` and ``lse [B, Hq, T]`` f32, each query's log-sum-exp of its scaled logits."""
    dispatch.check_impl(impl)
    _, _, _, _, d, dv = check_inputs(q, k, v)
    return dispatch.run(
        "prefill_flash", impl,
        lambda: prefill_reference(q, k, v, scale=scale, return_lse=True),
        gpu=dispatch.Kernel(gpu.unsupported_reason(d, dv), lambda interp: gpu.prefill_flash_gpu(
            q, k, v, scale=scale, interpret=interp)),
        tpu=dispatch.Kernel(tpu.unsupported_reason(d, dv), lambda interp: tpu.prefill_flash_tpu(
            q, k, v, scale=scale, interpret=interp)),
        interpret=interpret)


def observation_scores(q_obs, obs_idx, lse_obs, k, *, scale=None, impl="auto", interpret=None):
    """The probability each key gets from a set of observer queries, summed over them.

    Args:
      q_obs: ``[B, Hq, W, D]`` rotated observer queries.
      obs_idx: ``[B, W]`` int: each observer's index in the chunk (``-1``: none); observer
        ``w`` sees the keys at indices ``<= obs_idx[w]``.
      lse_obs: ``[B, Hq, W]`` f32 each observer's log-sum-exp (``prefill_flash``).
      k: ``[B, Hkv, T, D]`` the chunk's rotated keys.
      scale, impl, interpret: as ``prefill_attention``.

    Returns:
      ``[B, Hq, T]`` f32.
    """
    dispatch.check_impl(impl)
    d = check_observers(q_obs, obs_idx, lse_obs, k)[-1]
    args = (q_obs, obs_idx, lse_obs, k)
    return dispatch.run(
        "observation_scores", impl, lambda: scores_reference(*args, scale=scale),
        gpu=dispatch.Kernel(gpu.unsupported_reason(d, d), lambda interp: (
            gpu.observation_scores_gpu(*args, scale=scale, interpret=interp))),
        tpu=dispatch.Kernel(tpu.unsupported_reason(d, d), lambda interp: (
            tpu.observation_scores_tpu(*args, scale=scale, interpret=interp))),
        interpret=interpret)
