"""Helpers shared by the GPU (Triton-lowered ``pl.pallas_call``) kernels of every op.

* small integer helpers, the finite ``-inf`` and the per-backend compiler parameters;
* ``load_rows``: masked row loads (jax's Triton lowering adds no bounds masks of its own);
* ``merge_splits``: the log-sum-exp merge of split-K partials, with an optional per-head sink
  logit (gpt-oss style: an extra softmax term ``exp(sink)`` that carries no value);
* ``check_offsets``: refuses operands whose element offsets would overflow 32 bits.

**Offsets.** jax's Triton lowering (``_compute_offsets_from_indices``, jax 0.10-0.12) indexes
an operand with 64-bit element offsets only when its size *in bytes* exceeds ``2**32``, and
with signed 32-bit element offsets otherwise. An operand of 1-byte elements with more than
``2**31`` elements (``2**31 < bytes <= 2**32``) therefore gets offsets that wrap negative:
the B = 32, 128K int8 cache (exactly 4 GiB of ``uint8`` codes) crashed with
CUDA_ERROR_ILLEGAL_ADDRESS. Elements of >= 2 bytes are always safe (``elements <= 2**31``
whenever ``bytes <= 2**32``), which is why quantized codes are stored as ``uint16`` words.
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import triton as pltr

# The Triton backend warns at every lowering (deprecated since jax 0.11); silence it here only.
warnings.filterwarnings("ignore", message="The Pallas Triton backend is deprecated",
                        category=DeprecationWarning)

NEG = -1e30  # finite "-inf": exp(m_old - m_new) stays NaN-free on rows with no valid slot yet
DOT_NT = (((1,), (1,)), ((), ()))  # dot_general dims of ``a @ b.T``
DEFAULT_NUM_SMS = 132  # H100/H200 SXM
I32_ELEMENTS = 2**31  # element offsets from here on do not fit a signed 32-bit integer
I64_BYTES = 2**32  # jax's lowering switches to 64-bit offsets above this many bytes


def is_pow2(x):
    return x > 0 and x & (x - 1) == 0


def next_pow2(x):
    return 1 << max(0, int(x) - 1).bit_length()


def cdiv(a, b):
    return -(-a // b)


def num_sms():
    """Streaming multiprocessors of the first device (132 off a GPU)."""
    dev = jax.devices()[0]
    return int(getattr(dev, "core_count", 0) or DEFAULT_NUM_SMS) if dev.platform == "gpu" \
        else DEFAULT_NUM_SMS


def compiler_params(num_warps, num_stages, interpret):
    """Triton parameters on a GPU, None in interpret mode (where they are ignored)."""
    on_gpu = jax.default_backend() == "gpu" and not interpret
    return pltr.CompilerParams(num_warps=num_warps, num_stages=num_stages) if on_gpu else None


def offset_bits(shape, dtype):
    """Width of the element offsets jax's Triton lowering uses for an operand: 64 or 32."""
    return 64 if math.prod(shape) * jnp.dtype(dtype).itemsize > I64_BYTES else 32


def offsets_overflow(shape, dtype):
    """True if indexing an operand of this shape and dtype can overflow its offsets."""
    return offset_bits(shape, dtype) == 32 and math.prod(shape) > I32_ELEMENTS


def check_offsets(name, **operands):
    """Raises ``ValueError`` naming every operand whose offsets could overflow (see the module
    docstring); called by each GPU wrapper on the arrays it hands to ``pallas_call``."""
    bad = [f"{k} {jnp.dtype(x.dtype).name}{list(x.shape)}" for k, x in operands.items()
           if offsets_overflow(x.shape, x.dtype)]
    if bad:
        raise ValueError(f"{name}: {', '.join(bad)} would be indexed with 32-bit offsets past "
                         f"2**31 elements (jax's Triton lowering); split the batch")


def load_rows(view, start_row, limit, other=0):
    """Masked load of a ref view whose first axis is rows ``start_row + i``: rows at or past
    ``limit`` read ``other`` and are never accessed."""
    n = view.shape[0]
    ok = start_row + lax.broadcasted_iota(jnp.int32, (n,), 0) < limit
    if len(view.shape) > 1:
        ok = jnp.broadcast_to(ok.reshape(n, *([1] * (len(view.shape) - 1))), view.shape)
    return pltr.load(view, mask=ok, other=other)


def merge_splits(m, den, acc, sink=None):
    """LSE-merge of split partials ``m, den [..., S, G]``, ``acc [..., S, G, Dv]`` (f32).

    ``sink [..., G]`` (optional, broadcastable): a per-head logit added to the softmax
    denominator as ``exp(sink)`` with no value (gpt-oss attention sinks). Returns normalised
    ``out [..., G, Dv]`` (0 where nothing was valid) and ``lse [..., G]`` (sink included).
    """
    mx = m.max(axis=-2)
    if sink is not None:
        mx = jnp.maximum(mx, sink)
    w = jnp.exp(m - mx[..., None, :])
    lt = (w * den).sum(axis=-2)
    if sink is not None:
        lt = lt + jnp.exp(sink - mx)
    out = (w[..., None] * acc).sum(axis=-3) / jnp.where(lt > 0, lt, 1.0)[..., None]
    return out, mx + jnp.log(lt)
