"""Value-state drain (Guo et al. 2024, algorithms.md §10b): sink tokens carry small ‖v‖."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lcache.analysis.sinks import _check_eps, sink_scores


class ValueDrain(NamedTuple):
    sink_norm: np.ndarray  # [L, Hkv] mean ‖v‖₂ over sink tokens (NaN if a head has none)
    other_norm: np.ndarray  # [L, Hkv] mean ‖v‖₂ over the other tokens
    ratio: np.ndarray  # [L, Hkv] sink_norm / other_norm (< 1: drain)


def _sink_mask(sinks, shape_NLHT, eps: float) -> np.ndarray:
    """Bool sink mask ``[N, L, Hkv, T]`` from positions, a bool mask or an attention map."""
    n, nl, hkv, t = shape_NLHT
    sinks = np.asarray(sinks)
    if sinks.ndim == 5:  # attention map [N, L, H, T, T]
        eps = _check_eps(eps)
        alpha = sink_scores(sinks)
        h = alpha.shape[2]
        if h % hkv:
            raise ValueError(f"query heads {h} not a multiple of value heads {hkv}")
        # a key is a sink of a KV head if any query head of its group sinks on it
        alpha = alpha.reshape(n, nl, hkv, h // hkv, t).max(axis=3)
        return alpha > eps
    if sinks.dtype == bool:
        return np.broadcast_to(sinks, shape_NLHT)
    mask = np.zeros(t, bool)
    mask[np.atleast_1d(sinks).astype(int)] = True
    return np.broadcast_to(mask, shape_NLHT)


def value_drain(values, sinks=0, eps: float = 0.3) -> ValueDrain:
    """Mean value norm at sink tokens vs other tokens, per layer and KV head.

    Args:
      values: ``[N, L, Hkv, T, Dv]`` value states.
      sinks: where the sinks are: an int position or list of positions (same for all
        samples/heads; default token 0), a bool mask broadcastable to ``[N, L, Hkv, T]``, or an
        attention map ``[N, L, H, T, T]`` (``H`` a multiple of ``Hkv``): key ``k`` is a sink of a
        KV head where ``α_k > eps`` (:func:`~lcache.analysis.sinks.sink_scores`) for any query head
        of its group.
      eps: threshold used only with an attention map.

    Norms are L2 over ``Dv``, averaged over samples and tokens of each class.
    """
    values = np.asarray(values, np.float64)
    if values.ndim != 5:
        raise ValueError(f"values must be [N, L, Hkv, T, Dv], got shape {values.shape}")
    norm_NLHT = np.linalg.norm(values, axis=-1)
    sink_NLHT = _sink_mask(sinks, norm_NLHT.shape, eps)

    def mean_over(sel):
        count = sel.sum(axis=(0, 3))
        total = np.where(sel, norm_NLHT, 0.0).sum(axis=(0, 3))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    sink, other = mean_over(sink_NLHT), mean_over(~sink_NLHT)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = sink / other
    return ValueDrain(sink, other, ratio)
