"""One decode step of attention over a cache view, dispatched to a kernel or to ``jnp``.

``impl``: 'xla' always uses the ``jnp`` path; 'pallas' uses the Pallas decode kernel (softmax
only; other variants raise); 'auto' uses the kernel on GPU/TPU for softmax and ``jnp`` otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lcache.attention.core import grouped_attention
from lcache.cache import CacheView
from lcache.model.rope import apply_rope


def _use_kernel(impl: str, variant: str) -> bool:
    if impl == "pallas":
        if variant != "softmax":
            raise ValueError(f"attention_impl='pallas' supports the softmax variant only, got "
                             f"{variant!r}; use 'auto' to fall back to XLA for other variants")
        return True
    return impl == "auto" and variant == "softmax" and jax.default_backend() in ("gpu", "tpu")


def decode_over_view(q_BHqD, view: CacheView, inv_freq, *, variant="softmax", sink_logit=None,
                     sigmoid_bias=0.0, impl="xla"):
    """Returns ``out [B, Hq, Dv]`` and ``slot_probs [B, H, C]`` (weights summed over the group).

    ``q`` is already rotated. Keys of a view with ``keys_rotated=False`` are rotated with
    ``view.rope_pos`` (inside the kernel on the Pallas path).
    """
    b, hq, d = q_BHqD.shape
    h = view.keys.shape[1]
    if _use_kernel(impl, variant):
        from pallas_kernels.decode import decode_attention

        rope_pos = None if view.keys_rotated else view.rope_pos
        return decode_attention(q_BHqD, view.keys, view.values, view.valid, rope_pos=rope_pos,
                                inv_freq=None if rope_pos is None else inv_freq,
                                return_slot_probs=True, impl="pallas")
    keys = view.keys if view.keys_rotated else apply_rope(view.keys, view.rope_pos, inv_freq)
    q = q_BHqD.reshape(b, h, hq // h, 1, d)
    mask = view.valid[:, :, None, None, :]
    sink = None if sink_logit is None else sink_logit.reshape(h, hq // h)
    out, probs = grouped_attention(q, keys.astype(q.dtype), view.values.astype(q.dtype), mask,
                                   variant=variant, sink_logit_HG=sink,
                                   sigmoid_bias=sigmoid_bias)
    return out.reshape(b, hq, -1), probs.astype(jnp.float32)
