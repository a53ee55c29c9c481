"""MLA absorbed decode over the latent cache (``c_kv`` + shared ``k_rope``): reference, GPU and
TPU kernels reading the latent once for all query heads."""

from pallas_kernels.mla_decode.ops import mla_decode_attention
from pallas_kernels.mla_decode.reference import mla_decode_reference

__all__ = ["mla_decode_attention", "mla_decode_reference"]
