"""Dispatch of MLA absorbed decode over the latent cache.

``impl`` as in ``pallas_kernels.dispatch``: 'xla' = the ``jnp`` reference; 'pallas' = the TPU
kernel on TPU, the split-K Triton kernel elsewhere (interpreted on CPU); 'auto' = the kernel on
GPU/TPU, the reference on CPU.
"""

from __future__ import annotations

from pallas_kernels import dispatch
from pallas_kernels.mla_decode import gpu, tpu
from pallas_kernels.mla_decode.reference import check_inputs, mla_decode_reference


def mla_decode_attention(q_latent, q_rope, latent, k_rope, valid, *, scale,
                         return_slot_probs=False, impl="auto", interpret=None, block_h=None,
                         block_k=None, num_splits=None):
    """Absorbed MLA decode: every head attends the shared latent cache.

    Args:
      q_latent: ``[B, Hq, dc]`` queries with ``W_UK`` folded in.
      q_rope: ``[B, Hq, dr]`` rotated RoPE queries.
      latent: ``[B, 1, C, dc]`` cached latents (keys and values at once).
      k_rope: ``[B, 1, C, dr]`` cached rotated RoPE keys.
      valid: ``[B, 1, C]`` bool.
      scale: logit scale (DeepSeek: ``1/sqrt(dn + dr)``).
      return_slot_probs: also return ``slot_probs [B, 1, C]`` summed over all heads.
      impl: 'xla', 'pallas' or 'auto'; interpret: None = True on CPU.
      block_h, block_k, num_splits: kernel tiling (None = auto).

    Returns:
      ``out_latent [B, Hq, dc]`` in ``q_latent.dtype`` (apply ``W_UV`` after), and the
      probabilities if requested.
    """
    dispatch.check_impl(impl)
    _, _, _, dc, dr = check_inputs(q_latent, q_rope, latent, k_rope, valid)
    args = (q_latent, q_rope, latent, k_rope, valid)
    kw = dict(scale=scale, return_slot_probs=return_slot_probs)
    return dispatch.run(
        "mla_decode_attention", impl, lambda: mla_decode_reference(*args, **kw),
        gpu=dispatch.Kernel(gpu.unsupported_reason(dc, dr, block_h, block_k),
                            lambda interp: gpu.mla_decode_gpu(
                                *args, **kw, block_h=block_h, block_k=block_k,
                                num_splits=num_splits, interpret=interp)),
        tpu=dispatch.Kernel(tpu.unsupported_reason(dc, dr, block_k),
                            lambda interp: tpu.mla_decode_tpu(
                                *args, **kw, block_h=block_h, block_k=block_k,
                                interpret=interp)),
        interpret=interpret)
