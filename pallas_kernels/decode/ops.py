"""Dispatch of one decode step of GQA attention over a head-major cache view.

``impl``: 'xla' = the ``jnp`` reference; 'pallas' = the TPU kernel on TPU, the split-K
portable kernel elsewhere (Triton on GPU, interpreted on CPU); 'auto' = 'pallas' on GPU/TPU,
'xla' on CPU. Sizes a kernel cannot take raise ``ValueError`` with 'pallas'; with 'auto' they
log a warning and use the reference (never a wrong result).
"""

from __future__ import annotations

import jax
from absl import logging

from pallas_kernels.decode import gpu, tpu
from pallas_kernels.decode.reference import check_inputs, decode_attention_reference

IMPLS = ("xla", "pallas", "auto")


def decode_attention(q, keys, values, valid, *, scale=None, rope_pos=None, inv_freq=None,
                     return_slot_probs=False, impl="auto", interpret=None, block_k=None,
                     num_splits=None):
    """Softmax attention of one query token per head over the valid slots of a cache.

    Args:
      q: ``[B, Hq, D]``, already rotated; ``Hq = G * Hkv``, head ``h`` reads kv head ``h // G``.
      keys: ``[B, Hkv, C, D]`` (bf16 or f32).
      values: ``[B, Hkv, C, Dv]``.
      valid: ``[B, Hkv, C]`` bool; False = empty/evicted slot (any slot order).
      scale: logit scale (Python float), default ``1/sqrt(D)``.
      rope_pos: optional ``[B, Hkv, C]`` int32 positions; keys are rotated in-kernel with
        Llama rotate-half RoPE (for caches that store keys before RoPE).
      inv_freq: ``[D/2]`` f32 inverse frequencies, required with ``rope_pos``.
      return_slot_probs: also return ``slot_probs [B, Hkv, C]`` f32, the softmax
        probabilities summed over the ``G`` query heads of each kv head (0 at invalid slots).
      impl: 'xla', 'pallas' or 'auto'.
      interpret: run the Pallas kernel in interpret mode; None = True on CPU.
      block_k: KV block (power of 2 >= 16 on GPU, multiple of 128 on TPU); None = auto.
      num_splits: GPU split-K factor; None = auto from ``B*Hkv``, the SM count and ``C``.

    Returns:
      ``out [B, Hq, Dv]`` in ``q.dtype`` (zeros for a head with no valid slot), and
      ``slot_probs`` if requested.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    _, _, _, _, d, dv = check_inputs(q, keys, values, valid, rope_pos, inv_freq)
    backend = jax.default_backend()
    kw = dict(scale=scale, rope_pos=rope_pos, inv_freq=inv_freq,
              return_slot_probs=return_slot_probs)
    if impl == "xla" or (impl == "auto" and backend not in ("gpu", "tpu")):
        return decode_attention_reference(q, keys, values, valid, **kw)
    interpret = backend == "cpu" if interpret is None else interpret
    if backend == "tpu":
        reason = tpu.unsupported_reason(d, dv, block_k)
        kernel = lambda: tpu.decode_attention_tpu(q, keys, values, valid, **kw, block_k=block_k,
                                                  interpret=interpret)
    else:
        reason = gpu.unsupported_reason(d, dv, block_k, rope_pos is not None)
        kernel = lambda: gpu.decode_attention_gpu(q, keys, values, valid, **kw, block_k=block_k,
                                                  num_splits=num_splits, interpret=interpret)
    if reason is None:
        return kernel()
    if impl == "pallas":
        raise ValueError(f"decode_attention(impl='pallas') on {backend}: {reason}; "
                         "use impl='auto' to fall back to XLA")
    logging.warning("decode_attention: %s on %s; using the XLA reference", reason, backend)
    return decode_attention_reference(q, keys, values, valid, **kw)
