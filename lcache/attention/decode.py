"""One decode step of attention over a segmented cache view, dispatched to kernels or ``jnp``.

``impl`` (``pallas_kernels.dispatch``, the one place the choice is made): 'xla' always uses the
``jnp`` path; 'pallas' uses the Pallas decode kernels (softmax-like variants only: softmax,
sink_logit and off_by_one, the last two as a per-head sink logit merged in the kernel; other
variants raise); 'auto' uses the kernels on GPU/TPU for those variants and ``jnp`` otherwise.
'cudnn' (not a Pallas impl: the benchmarks' baseline) uses cuDNN's fused attention
(``lcache.attention.cudnn``) on a one-segment view (keys stored before RoPE rotated in XLA
first), softmax only; the ``slot_probs`` then come from the ``jnp`` path, computed only if
the policy reads them. A policy that reads none (``Policy.reads_feedback``) asks for none:
no kernel computes them.

The view is a tuple of segments (``lcache.cache.view``); attention never asks what storage a
policy keeps, only how its segments are laid out (``kernel_plan``):

* one plain segment: the head-major decode kernel (``pallas_kernels.decode``);
* plain full-head segments, one of them KIVI codes, keys rotated: the quantized kernel reads
  the codes and the full-precision segments (sinks, residual ring) in one pass;
* head groups that partition the heads: the decode kernel once per group, on its own arrays
  (memory read = what each group keeps);
* other full-head segments: concatenated, then the decode kernel.

Anything else (pools, groups sharing a head, entries with a logit bias) has no kernel: 'auto'
logs and runs the ``jnp`` log-sum-exp merge (``segmented.segmented_decode``), 'pallas' raises
before any work. The ``jnp`` path merges by log-sum-exp for softmax-like variants and
concatenates for the others (which do not normalise over keys).
"""

from __future__ import annotations

import jax.numpy as jnp

from lcache.attention.core import grouped_attention
from lcache.attention.cudnn import cudnn_decode
from lcache.attention.segmented import segmented_decode
from lcache.cache.view import CacheView
from pallas_kernels import dispatch

KERNEL_VARIANTS = ("softmax", "sink_logit", "off_by_one")


CUDNN = "cudnn"  # a model impl beyond dispatch.IMPLS: decode through cuDNN (lcache.attention.cudnn)


def check_variant(impl: str, variant: str) -> None:
    if impl == "pallas" and variant not in KERNEL_VARIANTS:
        raise ValueError(f"attention_impl='pallas' supports the variants {KERNEL_VARIANTS}, got "
                         f"{variant!r}; use 'auto' to fall back to XLA for other variants")
    if impl == CUDNN and variant != "softmax":
        raise ValueError(f"attention_impl='cudnn' supports the variant 'softmax' only, got "
                         f"{variant!r}")


def uses_kernel(impl: str, variant: str) -> bool:
    """Whether ``impl`` decodes ``variant`` through a Pallas kernel here (``dispatch``)."""
    check_variant(impl, variant)
    return (impl != CUDNN and dispatch.kernel_family(impl) is not None
            and variant in KERNEL_VARIANTS)


def kernel_sink(variant, sink_logit, num_q_heads):
    """The per-head sink logit ``[Hq]`` f32 merged for ``variant`` (None: softmax)."""
    if variant == "sink_logit":
        if sink_logit is None:
            raise ValueError("variant 'sink_logit' requires sink_logit (per-head s_h)")
        return jnp.asarray(sink_logit, jnp.float32).reshape(num_q_heads)
    return jnp.zeros((num_q_heads,), jnp.float32) if variant == "off_by_one" else None


def _full(seg, num_heads):
    return seg.heads is None and seg.owner is None and seg.keys.shape[1] == num_heads


def _dense_kernel(q_BHqD, seg, inv_freq, sink, impl, feedback):
    from pallas_kernels.decode import decode_attention

    rope_pos = None if seg.keys_rotated else seg.rope_pos
    res = decode_attention(q_BHqD, seg.keys, seg.values, seg.valid, rope_pos=rope_pos,
                           inv_freq=None if rope_pos is None else inv_freq, sink_logit=sink,
                           return_slot_probs=feedback, impl=impl)
    return res if feedback else (res, None)


def _quant_kernel(q_BHqD, view, sink, impl, feedback):
    from pallas_kernels.quant_decode import Segment as FullPrecision
    from pallas_kernels.quant_decode import quant_decode_attention

    segs = view.segments
    code = next(i for i, s in enumerate(segs) if s.codes is not None)
    others = [i for i in range(len(segs)) if i != code]
    res = quant_decode_attention(
        q_BHqD, segs[code].codes._replace(valid=segs[code].valid),
        tuple(FullPrecision(segs[i].keys, segs[i].values, segs[i].valid) for i in others),
        sink_logit=sink, return_slot_probs=feedback, impl=impl)
    if not feedback:
        return res, None
    out, (code_probs, seg_probs) = res
    probs = dict(zip(others, seg_probs, strict=True)) | {code: code_probs}
    return out, jnp.concatenate([probs[i] for i in range(len(segs))], axis=2)


def _group_kernels(q_BHqD, view, inv_freq, sink, impl, feedback):
    """One decode kernel per head group; outputs and probabilities scattered to all heads."""
    b, hq, _ = q_BHqD.shape
    h = view.num_heads
    g = hq // h
    q = q_BHqD.reshape(b, h, g, -1)
    out = jnp.zeros((b, h, g, view.segments[0].values.shape[-1]), q_BHqD.dtype)
    probs = []
    for seg in view.segments:
        heads = jnp.arange(h) if seg.heads is None else jnp.asarray(seg.heads, jnp.int32)
        qs = q[:, heads].reshape(b, -1, q.shape[-1])
        ss = None if sink is None else sink.reshape(h, g)[heads].reshape(-1)
        o, p = _dense_kernel(qs, seg, inv_freq, ss, impl, feedback)
        out = out.at[:, heads].set(o.reshape(b, -1, g, o.shape[-1]))
        if feedback:
            probs.append(jnp.zeros((b, h, seg.capacity), p.dtype).at[:, heads].set(p))
    return out.reshape(b, hq, -1), jnp.concatenate(probs, axis=2) if feedback else None


def kernel_plan(view: CacheView):
    """``(reason, run)``: why no kernel takes this view's segments (None: one does) and
    ``run(q, inv_freq, sink, impl, feedback) -> (out, slot_probs or None)`` (see the module
    docstring)."""
    segs, h = view.segments, view.num_heads
    if any(s.bias is not None for s in segs):
        return ("no decode kernel takes entries with a logit bias (compensation tokens)"), None
    full = all(_full(s, h) for s in segs)
    n_codes = sum(s.codes is not None for s in segs)
    if len(segs) == 1 and segs[0].plain:
        return None, lambda q, *a: _dense_kernel(q, segs[0], *a)
    if full and n_codes == 1 and all(s.keys_rotated for s in segs):
        return None, lambda q, f, *a: _quant_kernel(q, view, *a)
    covered = [x for s in segs for x in (range(h) if s.heads is None else s.heads)]
    if (all(s.owner is None and s.codes is None for s in segs) and len(set(covered)) ==
            len(covered) and all(s.heads is not None or _full(s, h) for s in segs)):
        return None, lambda q, *a: _group_kernels(q, view, *a)
    if full and len({s.keys_rotated for s in segs}) == 1:
        return None, lambda q, *a: _dense_kernel(q, view.flat(), *a)
    layout = ", ".join("pool" if s.owner is not None else "codes" if s.codes is not None
                       else f"heads={s.heads}" if s.heads else "all heads" for s in segs)
    return (f"no decode kernel takes segments ({layout}): pools, head groups sharing a head, "
            "codes with head groups or keys stored before RoPE"), None


def _cudnn(q_BHqD, view: CacheView, inv_freq):
    """cuDNN over a one-segment view; keys stored before RoPE are rotated first (in XLA: cuDNN
    has no in-kernel RoPE)."""
    seg = view.segments[0]
    if len(view.segments) != 1 or not seg.plain:
        raise ValueError(f"attention_impl='cudnn' decodes one plain cache segment; this "
                         f"policy's view has {len(view.segments)} segment(s) or pools, groups "
                         "or codes: use 'xla' or 'pallas'")
    if seg.keys_rotated:
        return cudnn_decode(q_BHqD, seg.keys, seg.values, seg.valid)
    from lcache.model.rope import apply_rope  # here: lcache.model imports this module

    return cudnn_decode(q_BHqD, apply_rope(seg.keys, seg.rope_pos, inv_freq), seg.values,
                        seg.valid)


def decode_over_view(q_BHqD, view: CacheView, inv_freq, *, variant="softmax", sink_logit=None,
                     sigmoid_bias=0.0, impl="xla", feedback=True):
    """Returns ``out [B, Hq, Dv]`` and ``slot_probs [B, H, F]`` (weights summed over each
    query group, in the view's flat frame: ``[B, H, C]`` for a one-segment view), or None
    with ``feedback=False`` (a policy that reads none: no kernel computes them).

    ``q`` is already rotated. Keys of segments with ``keys_rotated=False`` are rotated with
    their ``rope_pos`` (inside the kernel on the Pallas path).
    """
    check_variant(impl, variant)
    b, hq, d = q_BHqD.shape
    h = view.num_heads
    lse_merge = variant in KERNEL_VARIANTS and not (len(view.segments) == 1 and
                                                   view.segments[0].plain)

    def reference():
        out, probs = jnp_path()
        return out, probs if feedback else None

    def jnp_path():
        if lse_merge:
            sink = kernel_sink(variant, sink_logit, hq)
            return segmented_decode(q_BHqD, view, inv_freq, sink_logit=sink)
        from lcache.model.rope import apply_rope  # here: lcache.model imports this module

        flat = view.flat()
        keys = flat.keys if flat.keys_rotated else apply_rope(flat.keys, flat.rope_pos,
                                                              inv_freq)
        q = q_BHqD.reshape(b, h, hq // h, 1, d)
        mask = flat.valid[:, :, None, None, :]
        sink = None if sink_logit is None else sink_logit.reshape(h, hq // h)
        out, probs = grouped_attention(q, keys.astype(q.dtype), flat.values.astype(q.dtype),
                                       mask, variant=variant, sink_logit_HG=sink,
                                       sigmoid_bias=sigmoid_bias, bias_BHS=flat.bias)
        return out.reshape(b, hq, -1), probs.astype(jnp.float32)

    if impl == CUDNN:  # the probabilities from the jnp path, only if read
        return _cudnn(q_BHqD, view, inv_freq), reference()[1]
    if variant not in KERNEL_VARIANTS:
        return reference()
    reason, run = kernel_plan(view)
    kimpl = "auto" if impl == "auto" else "pallas"
    sink = kernel_sink(variant, sink_logit, hq)
    kernel = dispatch.Kernel(reason, lambda interpret: run(q_BHqD, inv_freq, sink, kimpl,
                                                           feedback))
    return dispatch.run("decode_over_view", impl, reference, gpu=kernel, tpu=kernel)


def mla_decode_over_view(q_latent_BHC, q_rope_BHR, view: CacheView, inv_freq, *, scale,
                         impl="auto"):
    """Absorbed MLA decode over a latent cache view (flat: ``keys = k_rope [B, 1, C, dr]``,
    ``values = c [B, 1, C, dc]``; ``lcache/model/mla.py``) with the Pallas kernel.

    ``q_latent [B, H, dc]`` (``W_UK`` folded in), ``q_rope [B, H, dr]`` rotated. Keys of a view
    with ``keys_rotated=False`` are rotated here (``dr`` of ``dc + dr`` numbers per token).
    Returns ``out_latent [B, H, dc]`` (apply ``W_UV`` after) and ``slot_probs [B, 1, C]``.
    ``impl``: 'pallas' or 'auto' (softmax only: other variants use ``grouped_attention``).
    """
    from pallas_kernels.mla_decode import mla_decode_attention

    flat = view.flat()
    keys = flat.keys
    if not flat.keys_rotated:
        from lcache.model.rope import apply_rope

        keys = apply_rope(keys, flat.rope_pos, inv_freq)
    latent = flat.values.astype(q_latent_BHC.dtype)
    return mla_decode_attention(q_latent_BHC, q_rope_BHR, latent, keys.astype(latent.dtype),
                                flat.valid, scale=scale, return_slot_probs=True,
                                impl="auto" if impl == "auto" else "pallas")
