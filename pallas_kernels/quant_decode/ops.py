"""Dispatch of decode attention over a KIVI-quantized cache plus full-precision segments.

``impl``: 'xla' = the ``jnp`` reference (dequantize, then attend); 'pallas' = the TPU kernel on
TPU, the split-K Triton kernel elsewhere (interpreted on CPU); 'auto' = 'pallas' on GPU/TPU,
'xla' on CPU. Sizes a kernel cannot take raise ``ValueError`` with 'pallas' and log a warning
and use the reference with 'auto' (never a wrong result).
"""

from __future__ import annotations

import jax
from absl import logging

from pallas_kernels.quant_decode import gpu, tpu
from pallas_kernels.quant_decode.reference import QuantCodes, check_inputs, quant_decode_reference

IMPLS = ("xla", "pallas", "auto")


def quant_decode_attention(q, codes: QuantCodes, segments=(), *, scale=None,
                           return_slot_probs=False, impl="auto", interpret=None, block_k=None,
                           num_splits=None):
    """Softmax attention of one query per head over quantized slots and full-precision segments.

    Args:
      q: ``[B, Hq, D]`` rotated queries, ``Hq = G_q * H``.
      codes: ``QuantCodes`` (``k_codes [B, H, C, D*bits/8]`` uint8, ``k_scale``/``k_zero
        [B, H, ceil(C/G), D]``, ``v_codes [B, H, C, Dv*bits/8]``, ``v_scale``/``v_zero
        [B, H, C, Dv/G]``, ``valid [B, H, C]``); bits and G are read off the shapes.
      segments: ``Segment(keys [B, H, S, D], values [B, H, S, Dv], valid [B, H, S])`` tuple
        (sinks, residual ring), attended in full precision.
      scale: logit scale, default ``1/sqrt(D)``.
      return_slot_probs: also return ``(code_probs [B, H, C], [segment probs [B, H, S_i]])``.
      impl: 'xla', 'pallas' or 'auto'.
      interpret: run the kernel in interpret mode; None = True on CPU.
      block_k: code slots per kernel step; num_splits: GPU split-K factor (None = auto).

    Returns:
      ``out [B, Hq, Dv]`` in ``q.dtype``, and the probabilities if requested.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    dims = check_inputs(q, codes, segments)
    backend = jax.default_backend()
    kw = dict(scale=scale, return_slot_probs=return_slot_probs)
    if impl == "xla" or (impl == "auto" and backend not in ("gpu", "tpu")):
        return quant_decode_reference(q, codes, segments, **kw)
    interpret = backend == "cpu" if interpret is None else interpret
    if backend == "tpu":
        reason = tpu.unsupported_reason(dims.d, dims.dv, dims.group, block_k)
        kernel = lambda: tpu.quant_decode_tpu(q, codes, segments, **kw, block_k=block_k,  # noqa: E731
                                              interpret=interpret)
    else:
        reason = gpu.unsupported_reason(dims.d, dims.dv, dims.bits, dims.group, block_k)
        kernel = lambda: gpu.quant_decode_gpu(q, codes, segments, **kw, block_k=block_k,  # noqa: E731
                                              num_splits=num_splits, interpret=interpret)
    if reason is None:
        return kernel()
    if impl == "pallas":
        raise ValueError(f"quant_decode_attention(impl='pallas') on {backend}: {reason}; "
                         "use impl='auto' to fall back to XLA")
    logging.warning("quant_decode_attention: %s on %s; using the XLA reference", reason, backend)
    return quant_decode_reference(q, codes, segments, **kw)
