"""Decode attention over a KIVI-quantized cache (int8/int4/int2 codes, dequantized in-kernel)
plus full-precision sink and residual segments, merged by log-sum-exp."""

from pallas_kernels.quant_decode.ops import quant_decode_attention
from pallas_kernels.quant_decode.reference import (
    QuantCodes,
    Segment,
    dequantize,
    quant_decode_reference,
)

__all__ = ["QuantCodes", "Segment", "dequantize", "quant_decode_attention",
           "quant_decode_reference"]
