"""Decode attention over a segmented cache view, merged by log-sum-exp (the XLA path).

Each segment is attended in its own frame (a head group only by its heads' queries, a pool by
every head with its ``owner`` mask, quantized codes through their dequantized keys), giving
per-head partial softmax statistics ``(max, sum, weighted values)``; one log-sum-exp merge
combines them (and a per-head sink logit). Nothing is concatenated: the bytes read are the
bytes each segment holds. Softmax-like variants only (softmax, sink_logit, off_by_one).
"""

from __future__ import annotations

import jax.numpy as jnp

from lcache.cache.view import CacheView, Segment
from pallas_kernels.decode.reference import HIGHEST, default_scale, rope_rotate


def _partial(q_BHGD, seg: Segment, num_heads: int, inv_freq, scale):
    """Logits ``[B, R, G, C]`` (-inf where unseen) and partial stats of one segment; ``R`` is
    the segment's query frame: its heads for a head group, all ``H`` otherwise."""
    q = q_BHGD if seg.heads is None else q_BHGD[:, jnp.asarray(seg.heads, jnp.int32)]
    keys = (seg.keys.astype(jnp.float32) if seg.keys_rotated
            else rope_rotate(seg.keys, seg.rope_pos, inv_freq))
    values = seg.values.astype(jnp.float32)
    valid = seg.valid
    if seg.keys.shape[1] == 1 and q.shape[1] > 1:  # a pool: one set of entries for all heads
        s = jnp.einsum("brgd,bcd->brgc", q, keys[:, 0], precision=HIGHEST)
        valid = valid & (seg.owner == jnp.arange(num_heads, dtype=jnp.int32)[None, :, None])
        values = jnp.broadcast_to(values, (values.shape[0], num_heads, *values.shape[2:]))
    else:
        s = jnp.einsum("brgd,brcd->brgc", q, keys, precision=HIGHEST)
    s = s * scale if seg.bias is None else s * scale + seg.bias[:, :, None]
    s = jnp.where(valid[:, :, None], s, -jnp.inf)
    m = jnp.max(s, axis=-1)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.where(valid[:, :, None], jnp.exp(s - m_safe[..., None]), 0.0)
    acc = jnp.einsum("brgc,brce->brge", p, values, precision=HIGHEST)
    return s, m, p.sum(axis=-1), acc


def _to_all_heads(x_BR, heads, num_heads, fill):
    """A head group's ``[B, R, ...]`` -> ``[B, H, ...]`` (``fill`` at heads it lacks)."""
    if heads is None:
        return x_BR
    out = jnp.full((x_BR.shape[0], num_heads, *x_BR.shape[2:]), fill, x_BR.dtype)
    return out.at[:, jnp.asarray(heads, jnp.int32)].set(x_BR)


def segmented_decode(q_BHqD, view: CacheView, inv_freq, *, sink_logit=None, scale=None):
    """One decode query per head over every segment of ``view``, merged by log-sum-exp.

    ``q [B, Hq, D]`` rotated, ``Hq = G * H``; ``sink_logit [Hq]`` f32 optional (one more
    softmax term with no value). Returns ``out [B, Hq, Dv]`` in ``q.dtype`` (zeros for a head
    that sees nothing) and ``slot_probs [B, H, F]`` f32 in the view's flat frame, summed over
    each head's query group.
    """
    b, hq, d = q_BHqD.shape
    h = view.num_heads
    g = hq // h
    scale = default_scale(scale, d)
    q = q_BHqD.reshape(b, h, g, d).astype(jnp.float32)
    parts = [(seg, _partial(q, seg, h, inv_freq, scale)) for seg in view.segments]
    maxes = [_to_all_heads(m, seg.heads, h, -jnp.inf) for seg, (_, m, _, _) in parts]
    big = maxes[0]
    for m in maxes[1:]:
        big = jnp.maximum(big, m)
    sink = None if sink_logit is None else sink_logit.astype(jnp.float32).reshape(h, g)
    if sink is not None:
        big = jnp.maximum(big, sink)
    big = jnp.where(jnp.isfinite(big), big, 0.0)  # a head that sees nothing
    den = 0.0 if sink is None else jnp.exp(sink - big)
    num = 0.0
    for (seg, (_, _, total, acc)), m_all in zip(parts, maxes, strict=True):
        w = jnp.where(jnp.isfinite(m_all), jnp.exp(m_all - big), 0.0)  # [B, H, G]
        den = den + w * _to_all_heads(total, seg.heads, h, 0.0)
        num = num + w[..., None] * _to_all_heads(acc, seg.heads, h, 0.0)
    den_safe = jnp.where(den > 0, den, 1.0)
    out = (num / den_safe[..., None]).reshape(b, hq, -1).astype(q_BHqD.dtype)
    lse = big + jnp.log(den_safe)  # [B, H, G]
    probs = []
    for seg, (s, _, _, _) in parts:
        lse_r = lse if seg.heads is None else lse[:, jnp.asarray(seg.heads, jnp.int32)]
        p = jnp.exp(s - lse_r[..., None]).sum(axis=2)  # exp(-inf) = 0 where unseen
        probs.append(_to_all_heads(p, seg.heads, h, 0.0))
    return out, jnp.concatenate(probs, axis=2)
