"""One decode step of attention over a cache view, dispatched to a kernel or to ``jnp``.

``impl`` (``pallas_kernels.dispatch``, the one place the choice is made): 'xla' always uses the
``jnp`` path; 'pallas' uses the Pallas decode kernel (softmax-like variants only: softmax,
sink_logit and off_by_one, the last two as a per-head sink logit merged in the kernel; other
variants raise); 'auto' uses the kernel on GPU/TPU for those variants and ``jnp`` otherwise.

Quantized caches: given the ``Quantized`` policy and its ``QuantizedKVState`` (``state=``,
``policy=``), the kernel paths attend the KIVI codes, the full-precision sinks and the residual
ring directly (``pallas_kernels.quant_decode``: dequantized in-kernel, merged by log-sum-exp);
the view is then read only for its validity (and the dequantized keys/values it holds are dead
code under ``jit``). Views with ``keys_rotated=False`` keep the dequantized-view path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lcache.attention.core import grouped_attention
from lcache.cache import CacheView, Quantized, QuantizedKVState
from lcache.cache import sinks as sk
from pallas_kernels import dispatch

KERNEL_VARIANTS = ("softmax", "sink_logit", "off_by_one")


def _use_kernel(impl: str, variant: str) -> bool:
    """Whether ``impl`` runs ``variant`` through a kernel here (``dispatch.kernel_family``)."""
    if impl == "pallas" and variant not in KERNEL_VARIANTS:
        raise ValueError(f"attention_impl='pallas' supports the variants {KERNEL_VARIANTS}, got "
                         f"{variant!r}; use 'auto' to fall back to XLA for other variants")
    return dispatch.kernel_family(impl) is not None and variant in KERNEL_VARIANTS


def _kernel_sink(variant, sink_logit, num_q_heads):
    """The per-head sink logit ``[Hq]`` f32 a kernel merges for ``variant`` (None: softmax)."""
    if variant == "sink_logit":
        if sink_logit is None:
            raise ValueError("variant 'sink_logit' requires sink_logit (per-head s_h)")
        return jnp.asarray(sink_logit, jnp.float32).reshape(num_q_heads)
    return jnp.zeros((num_q_heads,), jnp.float32) if variant == "off_by_one" else None


def decode_over_view(q_BHqD, view: CacheView, inv_freq, *, variant="softmax", sink_logit=None,
                     sigmoid_bias=0.0, impl="xla", state=None, policy=None):
    """Returns ``out [B, Hq, Dv]`` and ``slot_probs [B, H, C]`` (weights summed over the group).

    ``q`` is already rotated. Keys of a view with ``keys_rotated=False`` are rotated with
    ``view.rope_pos`` (inside the kernel on the Pallas path). ``state``/``policy`` (optional):
    the cache state and policy the view came from; a ``Quantized`` one takes the quantized
    kernel on the Pallas paths.
    """
    b, hq, d = q_BHqD.shape
    h = view.keys.shape[1]
    if _use_kernel(impl, variant):
        kimpl = "auto" if impl == "auto" else "pallas"
        sink = _kernel_sink(variant, sink_logit, hq)
        if isinstance(policy, Quantized) and view.keys_rotated:
            return quantized_decode(q_BHqD, view, state, policy, impl=kimpl, sink_logit=sink)
        from pallas_kernels.decode import decode_attention

        rope_pos = None if view.keys_rotated else view.rope_pos
        return decode_attention(q_BHqD, view.keys, view.values, view.valid, rope_pos=rope_pos,
                                inv_freq=None if rope_pos is None else inv_freq,
                                sink_logit=sink, return_slot_probs=True, impl=kimpl)
    from lcache.model.rope import apply_rope  # here: lcache.model imports this module

    keys = view.keys if view.keys_rotated else apply_rope(view.keys, view.rope_pos, inv_freq)
    q = q_BHqD.reshape(b, h, hq // h, 1, d)
    mask = view.valid[:, :, None, None, :]
    sink = None if sink_logit is None else sink_logit.reshape(h, hq // h)
    out, probs = grouped_attention(q, keys.astype(q.dtype), view.values.astype(q.dtype), mask,
                                   variant=variant, sink_logit_HG=sink,
                                   sigmoid_bias=sigmoid_bias)
    return out.reshape(b, hq, -1), probs.astype(jnp.float32)


def _scatter_any(index_BHC, mask_BHC, size):
    """``[B, H, size]`` bool: entry ``i`` is hit by some slot with ``mask`` and ``index == i``."""

    def row(idx, m):
        return jnp.zeros((size,), jnp.int8).at[idx].max(m.astype(jnp.int8), mode="drop")

    return jax.vmap(jax.vmap(row))(index_BHC, mask_BHC) > 0


def quantized_inputs(view: CacheView, state: QuantizedKVState, policy: Quantized):
    """Splits a quantized cache into kernel inputs.

    Returns ``(codes, segments, to_slots)``: ``QuantCodes`` over the slots served by codes,
    ``Segment``s for the sinks and the residual ring (their validity scattered from the slots
    that hold them, so evictions and ``view.valid`` windows carry over), and
    ``to_slots(code_probs, seg_probs) -> [B, H, C]``, gathering probabilities back onto slots.
    """
    from pallas_kernels.quant_decode import QuantCodes, Segment

    pos, valid = state.pos, view.valid
    none = jnp.zeros(pos.shape, jnp.bool_)
    sink, sink_idx = (sk.is_sink(pos, state.sink_pos) if policy.keep_sinks else (none, None))
    recent = none
    if policy.residual:
        recent = (pos >= policy.flush_point(state.seen)[:, None, None]) & ~sink
    ring_idx = jnp.where(pos >= 0, pos % max(policy.residual, 1), 0)
    codes = QuantCodes(state.k_codes, state.k_scale, state.k_zero, state.v_codes, state.v_scale,
                       state.v_zero, valid & ~sink & ~recent)
    segments, gathers = [], []
    if policy.keep_sinks:
        n = policy.keep_sinks
        segments.append(Segment(state.sink_keys, state.sink_values,
                                _scatter_any(sink_idx, valid & sink, n)))
        gathers.append((sink_idx, valid & sink))
    if policy.residual:
        segments.append(Segment(state.ring_keys, state.ring_values,
                                _scatter_any(ring_idx, valid & recent, policy.residual)))
        gathers.append((ring_idx, valid & recent))

    def to_slots(code_probs, seg_probs):
        out = code_probs
        for (idx, m), p in zip(gathers, seg_probs, strict=True):
            out = out + jnp.where(m, jnp.take_along_axis(p, idx, axis=2), 0.0)
        return out

    return codes, tuple(segments), to_slots


def quantized_decode(q_BHqD, view: CacheView, state: QuantizedKVState, policy: Quantized, *,
                     impl="pallas", sink_logit=None):
    """``(out [B, Hq, Dv], slot_probs [B, H, C])`` of one decode step over a quantized cache
    (keys stored rotated), with the codes dequantized inside the kernel; ``sink_logit [Hq]``
    as in ``decode_over_view``."""
    from pallas_kernels.quant_decode import quant_decode_attention

    if not isinstance(state, QuantizedKVState):
        raise ValueError(f"policy {policy!r} needs its QuantizedKVState, got {type(state)}")
    codes, segments, to_slots = quantized_inputs(view, state, policy)
    out, (code_probs, seg_probs) = quant_decode_attention(q_BHqD, codes, segments,
                                                          sink_logit=sink_logit,
                                                          return_slot_probs=True, impl=impl)
    return out, to_slots(code_probs, seg_probs)


def mla_decode_over_view(q_latent_BHC, q_rope_BHR, view: CacheView, inv_freq, *, scale,
                         impl="auto"):
    """Absorbed MLA decode over a latent cache view (``keys = k_rope [B, 1, C, dr]``,
    ``values = c [B, 1, C, dc]``; ``lcache/model/mla.py``) with the Pallas kernel.

    ``q_latent [B, H, dc]`` (``W_UK`` folded in), ``q_rope [B, H, dr]`` rotated. Keys of a view
    with ``keys_rotated=False`` are rotated here (``dr`` of ``dc + dr`` numbers per token).
    Returns ``out_latent [B, H, dc]`` (apply ``W_UV`` after) and ``slot_probs [B, 1, C]``.
    ``impl``: 'pallas' or 'auto' (softmax only: other variants use ``grouped_attention``).
    """
    from pallas_kernels.mla_decode import mla_decode_attention

    keys = view.keys
    if not view.keys_rotated:
        from lcache.model.rope import apply_rope

        keys = apply_rope(keys, view.rope_pos, inv_freq)
    latent = view.values.astype(q_latent_BHC.dtype)
    return mla_decode_attention(q_latent_BHC, q_rope_BHR, latent, keys.astype(latent.dtype),
                                view.valid, scale=scale, return_slot_probs=True,
                                impl="auto" if impl == "auto" else "pallas")
