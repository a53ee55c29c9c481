"""Dispatch of one decode step of GQA attention over a head-major cache view.

``impl`` as in ``pallas_kernels.dispatch``: 'xla' = the ``jnp`` reference; 'pallas' = the TPU
kernel on TPU, the split-K Triton kernel elsewhere (interpreted on CPU); 'auto' = the kernel on
GPU/TPU, the reference on CPU.
"""

from __future__ import annotations

from pallas_kernels import dispatch
from pallas_kernels.decode import gpu, tpu
from pallas_kernels.decode.reference import check_inputs, decode_attention_reference


def decode_attention(q, keys, values, valid, *, scale=None, rope_pos=None, inv_freq=None,
                     sink_logit=None, return_slot_probs=False, impl="auto", interpret=None,
                     block_k=None, num_splits=None):
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
      sink_logit: optional ``[Hq]`` f32 learned per-head sink logit (gpt-oss): one more
        softmax term ``exp(sink_logit)`` with no value.
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
    dispatch.check_impl(impl)
    _, _, _, _, d, dv = check_inputs(q, keys, values, valid, rope_pos, inv_freq, sink_logit)
    args = (q, keys, values, valid)
    kw = dict(scale=scale, rope_pos=rope_pos, inv_freq=inv_freq,
              return_slot_probs=return_slot_probs)
    tpu_reason = (tpu.unsupported_reason(d, dv, block_k) or
                  ("the TPU kernel takes no sink_logit" if sink_logit is not None else None))
    return dispatch.run(
        "decode_attention", impl,
        lambda: decode_attention_reference(*args, **kw, sink_logit=sink_logit),
        gpu=dispatch.Kernel(
            gpu.unsupported_reason(d, dv, block_k, rope_pos is not None),
            lambda interp: gpu.decode_attention_gpu(*args, **kw, sink_logit=sink_logit,
                                                    block_k=block_k, num_splits=num_splits,
                                                    interpret=interp)),
        tpu=dispatch.Kernel(tpu_reason, lambda interp: tpu.decode_attention_tpu(
            *args, **kw, block_k=block_k, interpret=interp)),
        interpret=interpret)
