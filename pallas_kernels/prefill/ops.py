"""Dispatch of causal prefill attention with optional SnapKV observation scores.

``impl`` as in ``pallas_kernels.dispatch``: 'xla' = the ``jnp`` reference (materialises
``T x T``: small inputs only); 'pallas' = the TPU kernels on TPU, the Triton kernels elsewhere
(interpreted on CPU); 'auto' = the kernels on GPU/TPU, the reference on CPU.
"""

from __future__ import annotations

from pallas_kernels import dispatch
from pallas_kernels.prefill import gpu, tpu
from pallas_kernels.prefill.reference import check_inputs, prefill_reference


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
