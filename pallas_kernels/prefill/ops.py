"""Dispatch of causal prefill attention with optional SnapKV observation scores.

``impl``: 'xla' = the ``jnp`` reference (materialises ``T x T``: small inputs only); 'pallas' =
the TPU kernels on TPU, the Triton kernels elsewhere (interpreted on CPU); 'auto' = 'pallas' on
GPU/TPU, 'xla' on CPU. Unsupported sizes raise with 'pallas' and fall back (logged) with 'auto'.
"""

from __future__ import annotations

import jax
from absl import logging

from pallas_kernels.prefill import gpu, tpu
from pallas_kernels.prefill.reference import check_inputs, prefill_reference

IMPLS = ("xla", "pallas", "auto")


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
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    _, _, _, _, d, dv = check_inputs(q, k, v, obs_window)
    kw = dict(scale=scale, obs_window=obs_window)
    backend = jax.default_backend()
    if impl == "xla" or (impl == "auto" and backend not in ("gpu", "tpu")):
        return prefill_reference(q, k, v, **kw)
    interpret = backend == "cpu" if interpret is None else interpret
    if backend == "tpu":
        reason = tpu.unsupported_reason(d, dv, block_q, block_k)
        kernel = lambda: tpu.prefill_attention_tpu(q, k, v, **kw, block_q=block_q,  # noqa: E731
                                                   block_k=block_k, interpret=interpret)
    else:
        reason = gpu.unsupported_reason(d, dv, block_q, block_k)
        kernel = lambda: gpu.prefill_attention_gpu(q, k, v, **kw, block_q=block_q,  # noqa: E731
                                                   block_k=block_k, interpret=interpret)
    if reason is None:
        return kernel()
    if impl == "pallas":
        raise ValueError(f"prefill_attention(impl='pallas') on {backend}: {reason}; "
                         "use impl='auto' to fall back to XLA")
    logging.warning("prefill_attention: %s on %s; using the XLA reference", reason, backend)
    return prefill_reference(q, k, v, **kw)
