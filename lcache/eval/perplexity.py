"""Perplexity from per-token NLL arrays (nats; NaN marks a target that was not scored)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def ppl(nll, mask=None) -> float:
    """``exp(mean NLL)`` over the finite entries of ``nll [N]`` (and ``mask [N]``)."""
    nll = np.asarray(nll, np.float64)
    keep = np.isfinite(nll) if mask is None else np.isfinite(nll) & mask
    if not keep.any():
        raise ValueError("no scored tokens")
    return float(math.exp(nll[keep].mean()))


def common_targets(nlls: Sequence[np.ndarray]) -> np.ndarray:
    """``[N]`` bool: the targets every one of ``nlls`` scored. Perplexities of runs that score
    different targets (recomputation scores every k-th) compare only on these."""
    if not nlls:
        raise ValueError("common_targets needs at least one NLL array")
    return np.logical_and.reduce([np.isfinite(x) for x in nlls])


def common_ppl(nll, common) -> float:
    """``ppl`` on the ``common [N]`` targets, NaN if this run scored none of them."""
    return ppl(nll, common) if (common & np.isfinite(nll)).any() else float("nan")


def chunk_curve(nll, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Perplexity per ``size`` consecutive targets -> ``(end target of each chunk [K],
    ppl [K])``, NaN for a chunk without scored targets."""
    if size < 1:
        raise ValueError(f"curve chunk size must be >= 1, got {size}")
    nll = np.asarray(nll, np.float64)
    ends = np.arange(size, nll.size + size - 1, size).clip(max=nll.size)
    vals = [ppl(nll[e - size:e]) if np.isfinite(nll[e - size:e]).any() else np.nan
            for e in ends]
    return ends, np.array(vals)
