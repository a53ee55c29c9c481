"""Dispatch of decode attention over a KIVI-quantized cache plus full-precision segments.

``impl`` as in ``pallas_kernels.dispatch``: 'xla' = the ``jnp`` reference (dequantize, then
attend); 'pallas' = the TPU kernel on TPU, the split-K Triton kernel elsewhere (interpreted on
CPU); 'auto' = the kernel on GPU/TPU, the reference on CPU.
"""

from __future__ import annotations

from pallas_kernels import dispatch
from pallas_kernels.quant_decode import gpu, tpu
from pallas_kernels.quant_decode.reference import QuantCodes, check_inputs, quant_decode_reference


def quant_decode_attention(q, codes: QuantCodes, segments=(), *, scale=None, sink_logit=None,
                           return_slot_probs=False, impl="auto", interpret=None, block_k=None,
                           num_splits=None):
    """Softmax attention of one query per head over quantized slots and full-precision segments.

    Args:
      q: ``[B, Hq, D]`` rotated queries, ``Hq = G_q * H``.
      codes: ``QuantCodes`` (``k_codes [B, H, C, D*bits/16]`` uint16 bit-plane words,
        ``k_scale``/``k_zero [B, H, ceil(C/G), D]``, ``v_codes [B, H, C, Dv*bits/16]``,
        ``v_scale``/``v_zero [B, H, C, Dv/G]``, ``valid [B, H, C]``); bits and G are read off
        the shapes.
      segments: ``Segment(keys [B, H, S, D], values [B, H, S, Dv], valid [B, H, S])`` tuple
        (sinks, residual ring), attended in full precision.
      scale: logit scale, default ``1/sqrt(D)``.
      sink_logit: optional ``[Hq]`` f32 per-head sink logit (gpt-oss), as in decode.
      return_slot_probs: also return ``(code_probs [B, H, C], [segment probs [B, H, S_i]])``.
      impl: 'xla', 'pallas' or 'auto'.
      interpret: run the kernel in interpret mode; None = True on CPU.
      block_k: code slots per kernel step; num_splits: GPU split-K factor (None = auto).

    Returns:
      ``out [B, Hq, Dv]`` in ``q.dtype``, and the probabilities if requested.
    """
    dispatch.check_impl(impl)
    dims = check_inputs(q, codes, segments, sink_logit)
    kw = dict(scale=scale, return_slot_probs=return_slot_probs)
    tpu_reason = (tpu.unsupported_reason(dims.d, dims.dv, dims.group, block_k) or
                  ("the TPU kernel takes no sink_logit" if sink_logit is not None else None))
    return dispatch.run(
        "quant_decode_attention", impl,
        lambda: quant_decode_reference(q, codes, segments, **kw, sink_logit=sink_logit),
        gpu=dispatch.Kernel(
            gpu.unsupported_reason(dims.d, dims.dv, dims.bits, dims.group, block_k),
            lambda interp: gpu.quant_decode_gpu(q, codes, segments, **kw, block_k=block_k,
                                                sink_logit=sink_logit, num_splits=num_splits,
                                                interpret=interp)),
        tpu=dispatch.Kernel(
            tpu_reason,
            lambda interp: tpu.quant_decode_tpu(q, codes, segments, **kw, block_k=block_k,
                                                interpret=interp)),
        interpret=interpret)
