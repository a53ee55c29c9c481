"""Independent NumPy oracles of the cache policies: plain Python over token positions.

Each oracle simulates a stream token by token (or prompt at once) with sets and dicts, never
slots, so it shares no code or data layout with ``lcache.cache``.
"""

from __future__ import annotations

import numpy as np


def ring_kept(n_seen: int, num_sinks: int, window: int) -> set[int]:
    """Positions StreamingLLM / a sliding window holds after tokens ``0..n_seen-1``."""
    return {p for p in range(n_seen) if p < num_sinks or p >= n_seen - window}


def ring_rank(p: int, n_seen: int, num_sinks: int, window: int) -> int:
    """StreamingLLM pos-shift: the index of ``p`` in the cache listed in position order."""
    return sorted(ring_kept(n_seen, num_sinks, window)).index(p)


class TopOracle:
    """Score-based selection on one head: ``{pos: score}``, at most ``capacity`` tokens, the
    ``recent`` newest positions protected. ``rank(pos, score, seen)`` orders eviction."""

    def __init__(self, capacity: int, recent: int, rank=None):
        self.capacity, self.recent = capacity, recent
        self.rank_fn = rank or (lambda p, s, seen: s)
        self.score: dict[int, np.float32] = {}
        self.seen = 0

    def rank(self, p):
        return self.rank_fn(p, self.score[p], self.seen)

    def prefill(self, cache_scores: dict[int, np.float32], chunk_scores: dict[int, np.float32]):
        """A chunk: cached tokens take ``cache_scores``, the chunk's tokens ``chunk_scores``;
        the best ``capacity`` stay at once (protected first). An empty chunk changes nothing."""
        if not chunk_scores:
            return
        self.score = {p: np.float32(cache_scores[p]) for p in self.score}
        self.score.update({p: np.float32(m) for p, m in chunk_scores.items()})
        newest = max(chunk_scores)
        self.seen = max(self.seen, newest + 1)
        protected = sorted(p for p in self.score if p > newest - self.recent)
        others = sorted((p for p in self.score if p <= newest - self.recent),
                        key=lambda p: (-self.rank(p), p))  # exact ties: the older stays
        keep = set(protected[-self.capacity:])
        keep |= set(others[:max(self.capacity - len(protected), 0)])
        self.score = {p: s for p, s in self.score.items() if p in keep}

    def append(self, p: int, score=0.0):
        """A decode token: when full, the lowest-ranked token outside the recent window goes
        (``p`` itself is always stored)."""
        self.seen = p + 1
        if len(self.score) == self.capacity:
            candidates = [q for q in self.score if q <= p - self.recent]
            del self.score[min(candidates, key=lambda q: (self.rank(q), -q))]  # ties: newer goes
        self.score[p] = np.float32(score)


def softmax_rows(logits, mask):
    logits = np.where(mask, logits, -np.inf)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    e = np.where(mask, e, 0.0)
    return e / e.sum(-1, keepdims=True)


def snapkv_scores(q_HqTD, k_HTD, window, kernel, pooling, gqa):
    """SnapKV vote of a whole prompt (algorithms.md §0), float64: ``[H', T - window]`` where
    ``H'`` is the KV heads (gqa 'mean'/'max') or the query heads ('per_query_head')."""
    hq, t, d = q_HqTD.shape
    h = k_HTD.shape[0]
    g = hq // h
    k_rep = np.repeat(k_HTD.astype(np.float64), g, axis=0)
    q = q_HqTD[:, t - window:].astype(np.float64)
    logits = np.einsum("hwd,htd->hwt", q, k_rep) / np.sqrt(d)
    causal = np.arange(t)[None, :] <= np.arange(t - window, t)[:, None]
    a = softmax_rows(logits, causal[None]).mean(1)[:, : t - window]
    r = kernel // 2
    padded = np.pad(a, ((0, 0), (r, r)), constant_values=0.0 if pooling == "avg" else -np.inf)
    stack = np.stack([padded[:, i: i + t - window] for i in range(kernel)])
    pooled = stack.sum(0) / kernel if pooling == "avg" else stack.max(0)
    if gqa == "per_query_head":
        return pooled
    pooled = pooled.reshape(h, g, -1)
    return pooled.mean(1) if gqa == "mean" else pooled.max(1)


def top_positions(score_N, n, forced=()):
    """Positions of the ``n`` best scores, ``forced`` first."""
    forced = list(forced)
    rest = [int(i) for i in np.argsort(-score_N, kind="stable") if int(i) not in forced]
    return set(forced[:n]) | set(rest[: max(n - len(forced), 0)])


def assert_valid_topk(kept: set[int], score_by_pos: dict[int, float], n: int, forced=(),
                      rtol=1e-5):
    """``kept`` is a top-``n`` of the scores (forced positions in), up to float rounding: no
    dropped candidate beats a kept unforced one by more than ``rtol``."""
    forced = set(forced)
    assert forced <= kept, f"forced {sorted(forced - kept)} were evicted"
    assert len(kept) == min(n, len(score_by_pos)), (len(kept), n)
    free = [score_by_pos[p] for p in kept - forced]
    dropped = [score_by_pos[p] for p in set(score_by_pos) - kept]
    if free and dropped:
        scale = max(abs(v) for v in score_by_pos.values()) or 1.0
        assert min(free) >= max(dropped) - rtol * scale, (min(free), max(dropped))


def near_tie(scores, k: int, rtol: float = 1e-5, below=np.inf) -> bool:
    """Whether the ``k``-th and ``(k+1)``-th largest of ``scores`` differ by less than ``rtol``
    of the largest finite ``|score| < below`` (a top-``k`` float32 rounding could flip), ties
    at or above ``below`` (forced entries, kept whatever their order) aside."""
    s = np.sort(np.asarray(scores, np.float64).ravel())[::-1]
    if not 0 < k < s.size or s[k] >= below or not np.isfinite(s[k]):
        return False
    small = np.abs(s[np.isfinite(s) & (s < below)])
    return bool(s[k - 1] - s[k] < rtol * (small.max() if small.size else 1.0))
