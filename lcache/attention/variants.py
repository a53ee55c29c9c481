"""Attention *weight* functions: softmax and its alternatives (algorithms.md §10).

All functions are pure ``jnp``, computed in float32, and safe on fully masked rows (weights 0)
and on very long rows (Tk ~ 1e5) with large logits.

Shapes: ``logits_QK`` is ``[..., Tq, Tk]`` (already scaled, q·k/√d); ``mask_QK`` is a bool array
broadcastable to it, True = the query may attend to the key. Returned weights have the shape of
the logits.

Variants (weights ``w_i`` for one query row over its visible keys ``j``):

* ``softmax``      ``e^{x_i} / Σ_j e^{x_j}``.
* ``off_by_one``   ``e^{x_i} / (1 + Σ_j e^{x_j})`` (Miller 2023; = StreamingLLM "zero sink").
* ``sink_logit``   ``e^{x_i} / (e^{s_h} + Σ_j e^{x_j})`` with a learned per-head logit ``s_h``
  (gpt-oss ``gpt_oss/torch/model.py::sdpa``).
* ``softpick``     ``ReLU(e^{x_i} − 1) / (Σ_j |e^{x_j} − 1| + ε)``, evaluated exactly as the
  reference ``zaydzuhri/softpick-attention naive_softpick_attn.py::softpick``: with
  ``m = max_j x_j``, ``ReLU(e^{x_i−m} − e^{−m}) / (Σ_j |e^{x_j−m} − e^{−m}| + ε)``, ``ε = 1e-8``
  added to the *shifted* denominator (not ``ε·e^{−m}``). Rows need not sum to 1.
* ``sigmoid``      ``sigmoid(x_i + b)``, no normalisation (Gu et al. 2025,
  ``sail-sg/Attention-Sink lit_gpt/model_attn_sim.py``: ``sigmoid(QKᵀ·scale) ⊙ causal``, i.e.
  ``b = 0``, the default here). Apple's sigmoid attention uses ``b = −log n``: pass
  ``sigmoid_bias=-log(n)`` (see :func:`sigmoid_log_n_bias`).
* ``relu``         ``ReLU(x_i) / n_vis`` with ``n_vis`` the number of visible keys of the row
  (Guo et al. 2024, ``GuoTianYu2000/Active-Dormant-Attention`` ``Attention.forward`` with
  ``attn_use_relu``: ``relu(scores + causal_mask) / arange(1, T+1)[query]``, i.e. divided by the
  number of keys a causal query sees). ``relu_normalize=False`` gives plain ``ReLU(x_i)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

VARIANTS = ("softmax", "off_by_one", "sink_logit", "softpick", "sigmoid", "relu")
# Variants normalised over keys with an optional extra logit: online-softmax compatible.
SOFTMAX_LIKE = ("softmax", "off_by_one", "sink_logit")
SOFTPICK_EPS = 1e-8  # naive_softpick_attn.py::softpick default eps


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown attention variant {variant!r}; expected one of {VARIANTS}")


def _prepare(logits, mask):
    """Casts logits to f32 and broadcasts the mask to their shape (None -> all True)."""
    logits = jnp.asarray(logits, jnp.float32)
    if mask is None:
        mask = jnp.ones(logits.shape, bool)
    mask = jnp.broadcast_to(jnp.asarray(mask, bool), logits.shape)
    return logits, mask


def _masked_max(logits, mask):
    """Row max over visible keys, ``[..., Tq, 1]``; −inf on fully masked rows."""
    return jnp.max(jnp.where(mask, logits, -jnp.inf), axis=-1, keepdims=True)


def _softmax_with_offset(logits, mask, offset):
    """``e^{x_i} / (e^{offset} + Σ_j e^{x_j})``; ``offset=None`` means plain softmax.

    The shift ``m`` does not change the value, so its gradient is stopped.
    """
    m = _masked_max(logits, mask)
    if offset is not None:
        m = jnp.maximum(m, offset)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
    e = jnp.where(mask, jnp.exp(jnp.where(mask, logits, m) - m), 0.0)
    denom = jnp.sum(e, axis=-1, keepdims=True)
    if offset is not None:
        denom = denom + jnp.exp(offset - m)
    return e / jnp.where(denom > 0, denom, 1.0)


def _softpick(logits, mask, eps):
    """Softpick in the reference's stable form (see module docstring).

    Shift ``m' = max(m, 0)``: for ``m ≥ 0`` this is the reference's ``m``; for ``m < 0`` every
    numerator is exactly 0 under either shift, so values (and gradients, both 0) match while
    ``e^{−m}`` cannot overflow. Masked keys contribute 0 to numerator and denominator.
    """
    m = jnp.maximum(_masked_max(logits, mask), 0.0)
    x = jnp.where(mask, logits, m)
    d = jnp.exp(x - m) - jnp.exp(-m)
    num = jnp.where(mask & (logits > 0), jnp.maximum(d, 0.0), 0.0)
    denom = jnp.sum(jnp.where(mask, jnp.abs(d), 0.0), axis=-1, keepdims=True) + eps
    return num / denom


def attention_weights(
    logits,
    mask,
    variant: str,
    *,
    sink_logit=None,
    sigmoid_bias=None,
    relu_normalize: bool = True,
    softpick_eps: float = SOFTPICK_EPS,
):
    """Attention weights ``[..., Tq, Tk]`` (f32) for one of :data:`VARIANTS`.

    Args:
      logits: ``[..., Tq, Tk]`` scaled scores q·k/√d (cast to f32).
      mask: bool, broadcastable to ``logits``; True = may attend. ``None`` = no mask.
      variant: one of :data:`VARIANTS`.
      sink_logit: ``s_h`` for ``"sink_logit"`` (required there), broadcastable to
        ``logits[..., :1]``, e.g. ``[H, 1, 1]`` for logits ``[B, H, Tq, Tk]``. −inf gives softmax.
      sigmoid_bias: scalar ``b`` for ``"sigmoid"``; ``None`` -> 0 (Gu et al.).
      relu_normalize: ``"relu"`` divides by the number of visible keys (Guo et al.) if True.
      softpick_eps: ``ε`` of softpick (reference default 1e-8).

    Arguments that do not belong to ``variant`` are ignored. Masked entries are exactly 0.
    """
    _check_variant(variant)
    logits_QK, mask_QK = _prepare(logits, mask)
    if variant == "softmax":
        return _softmax_with_offset(logits_QK, mask_QK, None)
    if variant == "off_by_one":
        return _softmax_with_offset(logits_QK, mask_QK, jnp.zeros((), jnp.float32))
    if variant == "sink_logit":
        if sink_logit is None:
            raise ValueError("variant 'sink_logit' requires sink_logit (per-head s_h)")
        s = jnp.asarray(sink_logit, jnp.float32)
        return _softmax_with_offset(logits_QK, mask_QK, s)
    if variant == "softpick":
        return _softpick(logits_QK, mask_QK, softpick_eps)
    if variant == "sigmoid":
        b = 0.0 if sigmoid_bias is None else jnp.asarray(sigmoid_bias, jnp.float32)
        return jnp.where(mask_QK, jax.nn.sigmoid(logits_QK + b), 0.0)
    # relu
    w = jnp.where(mask_QK, jnp.maximum(logits_QK, 0.0), 0.0)
    if relu_normalize:
        n_vis = jnp.sum(mask_QK, axis=-1, keepdims=True).astype(jnp.float32)
        w = w / jnp.maximum(n_vis, 1.0)
    return w


def sigmoid_log_n_bias(n: int) -> float:
    """Apple sigmoid-attention bias ``b = −log n`` for sequence length ``n`` (not Gu's default)."""
    return -math.log(n)


def proxy_scores(weights, mask=None):
    """Gu et al. proxy scores for non-softmax attention: ``w_ij / Σ_j' w_ij'``.

    ``weights``: ``[..., Tq, Tk]``; ``mask`` (optional, broadcastable) zeroes entries first.
    Rows whose sum is 0 get all-zero proxies. Returns f32 of the weights' shape.
    """
    w, m = _prepare(weights, mask)
    w = jnp.where(m, w, 0.0)
    total = jnp.sum(w, axis=-1, keepdims=True)
    return jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 0.0)


def is_softmax_like(variant: str) -> bool:
    """True if ``variant`` is softmax over keys plus at most one extra constant logit.

    Such variants stream with online softmax: start the running max at the extra logit ``s``
    (``m₀ = s``) and the running denominator at ``l₀ = 1`` (= ``e^{s−m₀}``) instead of
    ``m₀ = −inf, l₀ = 0``; the extra term has no value vector. The others (softpick, sigmoid,
    relu) are elementwise or need their own accumulator.
    """
    _check_variant(variant)
    return variant in SOFTMAX_LIKE


def denominator_offset(variant: str, sink_logit=None):
    """The extra logit added to the softmax denominator, for online/streaming kernels.

    Returns ``None`` for ``softmax`` (no extra term), ``0.0`` for ``off_by_one`` and
    ``sink_logit`` (f32 array, e.g. ``[H]``) for ``sink_logit``: weights are
    ``e^{x_i} / (e^{offset} + Σ_j e^{x_j})``. Raises ValueError for variants that are not
    softmax-like (see :func:`is_softmax_like`) or if ``sink_logit`` is missing.
    """
    if not is_softmax_like(variant):
        raise ValueError(f"variant {variant!r} is not softmax-like; it has no online-softmax form")
    if variant == "softmax":
        return None
    if variant == "off_by_one":
        return 0.0
    if sink_logit is None:
        raise ValueError("variant 'sink_logit' requires sink_logit (per-head s_h)")
    return jnp.asarray(sink_logit, jnp.float32)


def gate_output(attn_out, gate_logits):
    """Gated attention (Qiu et al., position G1): ``attn_out ⊙ sigmoid(gate_logits)``.

    ``attn_out``: ``[..., H, Dh]`` per-head SDPA output before concat and ``o_proj``;
    ``gate_logits``: broadcastable, ``[..., H, 1]`` (headwise) or ``[..., H, Dh]`` (elementwise).
    The gate is computed in f32 and cast to ``attn_out``'s dtype.
    """
    attn_out = jnp.asarray(attn_out)
    gate = jax.nn.sigmoid(jnp.asarray(gate_logits, jnp.float32))
    return attn_out * gate.astype(attn_out.dtype)
