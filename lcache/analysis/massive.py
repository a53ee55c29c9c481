"""Massive activations (Sun et al. 2024, algorithms.md §10c): a few huge residual entries."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class MassiveActivations(NamedTuple):
    max_abs: np.ndarray  # [L+1] largest |h| per layer
    sample: np.ndarray  # [L+1] int, sample index holding it
    position: np.ndarray  # [L+1] int, token position holding it
    channel: np.ndarray  # [L+1] int, hidden channel holding it
    top_abs: np.ndarray  # [L+1, top] the `top` largest |h| (Sun et al. plot top-1..3)
    median_abs: np.ndarray  # [L+1] median |h| over all samples, tokens and channels
    ratio: np.ndarray  # [L+1] max_abs / median_abs (inf if the median is 0)


def massive_activations(hidden, top: int = 3) -> MassiveActivations:
    """Per-layer largest hidden-state magnitude, where it sits, and its ratio to the median.

    ``hidden``: ``[N, L+1, T, D]`` residual stream (index 0 = embeddings, ``l`` = after block
    ``l``). Statistics per layer are over all ``N·T·D`` entries of that layer.
    """
    hidden = np.asarray(hidden)
    if hidden.ndim != 4:
        raise ValueError(f"hidden must be [N, L+1, T, D], got shape {hidden.shape}")
    n, nl, t, d = hidden.shape
    abs_LX = np.abs(np.moveaxis(hidden, 1, 0).reshape(nl, -1)).astype(np.float64)
    flat = abs_LX.argmax(axis=1)
    sample, position, channel = np.unravel_index(flat, (n, t, d))
    max_abs = abs_LX[np.arange(nl), flat]
    k = min(top, abs_LX.shape[1])
    top_abs = -np.sort(-np.partition(abs_LX, abs_LX.shape[1] - k, axis=1)[:, -k:], axis=1)
    median = np.median(abs_LX, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(median > 0, max_abs / np.where(median > 0, median, 1.0), np.inf)
    return MassiveActivations(max_abs, sample, position, channel, top_abs, median, ratio)
