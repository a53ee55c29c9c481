"""Attention-sink metrics on attention maps (NumPy in, NumPy out; algorithms.md §10a).

``attn_NLHTT`` is ``[N samples, L layers, H heads, T queries, T keys]``: row ``t`` holds the
weights query ``t`` puts on each key (causal, so ``A[t, k] = 0`` for ``k > t``). For
non-softmax attention pass Gu et al.'s proxy scores ``w / Σ_row w``
(``lcache.attention.proxy_scores``), not the raw weights.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def _check_attn(attn) -> np.ndarray:
    attn = np.asarray(attn, np.float64)
    if attn.ndim != 5 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attn must be [N, L, H, T, T], got shape {attn.shape}")
    return attn


def _check_eps(eps: float) -> float:
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must lie in (0, 1), got {eps}")
    return float(eps)


def sink_scores(attn) -> np.ndarray:
    """Gu et al. importance ``α_k = Σ_t A[t, k] / (T − k)``, shape ``[N, L, H, T]``.

    ``T − k`` (0-based ``k``) is the number of queries that can see key ``k``; for a causal map
    this is the mean attention key ``k`` receives from queries ``t ≥ k``. Like the reference
    (``eval_sink_open_source.py::compute_attention_sink``) the sum runs over all queries.
    """
    attn = _check_attn(attn)
    t = attn.shape[-1]
    return attn.sum(axis=-2) / np.arange(t, 0, -1, dtype=np.float64)


def sink_map(attn, eps: float = 0.3, k: int = 0) -> np.ndarray:
    """Fraction of samples in which head ``(l, h)`` has ``α_k > eps``, shape ``[L, H]``."""
    eps = _check_eps(eps)
    return (sink_scores(attn)[..., k] > eps).mean(axis=0)


def sink_rate(attn, eps: float = 0.3, k: int = 0) -> float:
    """Gu et al. ``Sink_k^ε``: fraction (not %) of (sample, layer, head) with ``α_k > eps``.

    ``k`` is 0-based (Gu's "first token", k=1, is ``k=0`` here). Gu: ε = 0.3, T = 64.
    """
    return float(sink_map(attn, eps, k).mean())


def first_token_sink_rate(attn, num_sink_tokens: int, eps: float = 0.3) -> dict[str, float]:
    """Gu et al.'s sink rate on the first key and on BOS of windows that start with BOS ->
    ``{'first': rate on key 0, 'bos': rate on key num_sink_tokens}``: the same key unless the
    model prepends ``num_sink_tokens`` learnable sink tokens (then key 0 is a sink token)."""
    return {"first": sink_rate(attn, eps, k=0), "bos": sink_rate(attn, eps, k=num_sink_tokens)}


def first_token_share(attn) -> np.ndarray:
    """Mean attention on token 0 per ``[L, H]``: mean over samples and queries ``t ≥ 1`` of
    ``A[t, 0]``. Query 0 is excluded (it can only see token 0, so its share is trivially 1
    under softmax)."""
    attn = _check_attn(attn)
    if attn.shape[-1] < 2:
        raise ValueError("first_token_share needs T >= 2")
    return attn[..., 1:, 0].mean(axis=(0, -1))


class SinkPosition(NamedTuple):
    position: int  # key position k >= 1
    rate: float  # fraction of (sample, layer, head) with alpha_k > eps
    token_ids: np.ndarray  # distinct token ids found at that position across samples


class SinkTokenId(NamedTuple):
    token_id: int
    rate: float  # fraction of its (occurrence, layer, head) triples with alpha > eps
    count: int  # occurrences at positions >= 1 with enough queries


class SinkTokens(NamedTuple):
    positions: list[SinkPosition]
    token_ids: list[SinkTokenId]


def top_sink_tokens(attn, tokens, eps: float = 0.3, top: int = 5,
                    min_queries: int = 8) -> SinkTokens:
    """Sinks other than token 0 (distributed sinks, e.g. delimiters).

    Args:
      attn: ``[N, L, H, T, T]``.
      tokens: token ids ``[N, T]`` or ``[T]`` (shared by all samples).
      eps: sink threshold on ``α_k`` (see :func:`sink_scores`).
      top: how many positions / token ids to return, highest rate first (rate > 0 only).
      min_queries: skip keys seen by fewer than this many queries (``T − k < min_queries``):
        late keys' ``α`` averages few queries and flags diagonal attention as a "sink".

    Returns ``SinkTokens(positions, token_ids)``: per position ``k ≥ 1`` the rate of
    ``α_k > eps`` over (sample, layer, head); per token id the rate over its occurrences.
    """
    eps = _check_eps(eps)
    alpha = sink_scores(attn)
    n, _, _, t = alpha.shape
    tokens = np.broadcast_to(np.asarray(tokens), (n, t))
    last = t - min_queries  # keep k <= last, i.e. T - k >= min_queries
    if last < 1:
        return SinkTokens([], [])
    hits_NK = (alpha[..., 1:last + 1] > eps).mean(axis=(1, 2))  # [N, K'] rate over (l, h)
    toks_NK = tokens[:, 1:last + 1]
    pos_rate = hits_NK.mean(axis=0)
    positions = [SinkPosition(int(k + 1), float(pos_rate[k]), np.unique(toks_NK[:, k]))
                 for k in np.argsort(-pos_rate, kind="stable")[:top] if pos_rate[k] > 0]
    ids, inverse, counts = np.unique(toks_NK.ravel(), return_inverse=True, return_counts=True)
    id_rate = np.bincount(inverse, weights=hits_NK.ravel(), minlength=ids.size) / counts
    token_ids = [SinkTokenId(int(ids[i]), float(id_rate[i]), int(counts[i]))
                 for i in np.argsort(-id_rate, kind="stable")[:top] if id_rate[i] > 0]
    return SinkTokens(positions, token_ids)
