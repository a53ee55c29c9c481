"""The StreamingLLM comparison (Tables 2/3 of Xiao et al.): one held-out stream fed token by
token through bounded caches of one size, next to dense attention and the sliding window with
recomputation, each as per-token NLL over the same targets.

Stream layout: ``stream [N + 1]`` int32 = BOS then ``N`` tokens; step ``i`` feeds ``stream[i]``
at text position ``i`` and scores ``stream[i + 1]``, so every run is ``nll [N]`` (NaN where a
run did not score: recomputation scores every k-th target, dense may stop early).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from lcache.cache import Policy, SlidingWindow, StreamingLLM
from lcache.eval.engine import Engine
from lcache.eval.perplexity import chunk_curve, common_ppl, common_targets, ppl


@dataclasses.dataclass(frozen=True)
class Run:
    """One cache's per-token NLL over a stream: ``nll [N]``, NaN where it was not scored."""

    policy: str  # window / streaming_llm / dense / recompute / a caller's label
    num_sinks: int
    cache_size: int  # tokens the cache holds (0: unbounded dense)
    nll: np.ndarray

    @property
    def label(self) -> str:
        if self.policy == "streaming_llm":
            return f"{self.num_sinks}+{self.cache_size - self.num_sinks}"
        return self.policy

    @property
    def spec(self) -> str:
        """The registry spec of this run's cache (``streaming_llm(sinks=4)``; a caller's
        label, ``dense`` and ``recompute``, the recomputation baseline, as they are)."""
        if self.policy == "streaming_llm":
            return f"streaming_llm(sinks={self.num_sinks})"
        return self.policy


def streaming_runs(engine: Engine, stream, cache_size: int, sinks: Sequence[int] = (1, 2, 4),
                   dense_tokens: int = -1, recompute_stride: int = 0,
                   extra: Sequence[tuple[str, Policy]] = (), chunk: int = 1024,
                   recompute_batch: int = 32,
                   on_run: Callable[[Run], None] | None = None) -> list[Run]:
    """Window only (``SlidingWindow(cache_size)``), then ``s`` sinks + ``cache_size - s``
    window for each ``s`` in ``sinks`` (0 is the window row), then each ``(label, policy)`` of
    ``extra`` (e.g. H2O at the same size), dense attention over the first ``dense_tokens``
    targets (-1: all, 0: none) and the sliding window with recomputation over ``cache_size``
    tokens (the model's own sink tokens included; every ``recompute_stride``-th target, 0: none).
    ``on_run`` is called with each run as it finishes (progress).
    """
    n = len(stream) - 1
    if cache_size < 2 or any(not 0 <= s < cache_size for s in sinks):
        raise ValueError(f"cache_size={cache_size} cannot hold sinks {tuple(sinks)} plus a window")
    if recompute_stride and cache_size <= engine.cfg.num_sink_tokens:
        raise ValueError(f"cache_size={cache_size} leaves no recompute window beside the "
                         f"model's {engine.cfg.num_sink_tokens} sink tokens")
    runs = []

    def add(run: Run) -> None:
        runs.append(run)
        if on_run:
            on_run(run)

    add(Run("window", 0, cache_size,
            engine.stream_nll(stream, SlidingWindow(cache_size), chunk, "window")))
    for s in sorted(set(sinks) - {0}):
        policy = StreamingLLM(window=cache_size - s, num_sinks=s)
        add(Run("streaming_llm", s, cache_size,
                engine.stream_nll(stream, policy, chunk, f"{s} sinks")))
    for label, policy in extra:
        add(Run(label, 0, cache_size, engine.stream_nll(stream, policy, chunk, label)))
    if dense_tokens:
        m = n if dense_tokens < 0 else min(dense_tokens, n)
        nll = np.full(n, np.nan, np.float32)
        nll[:m] = engine.dense_nll(stream[:m + 1])
        add(Run("dense", 0, 0, nll))
    if recompute_stride:
        width = cache_size - engine.cfg.num_sink_tokens
        add(Run("recompute", 0, cache_size, engine.recompute_nll(
            stream, width, recompute_stride, recompute_batch)))
    return runs


def summary_rows(runs: Sequence[Run]) -> list[dict]:
    """``policy, num_sinks, cache_size, tokens, ppl, common_ppl`` per run; ``common_ppl`` is
    over the targets every bounded-cache run scored (dense, which may stop early, is left out
    of the intersection and scored on it where it can)."""
    bounded = [r.nll for r in runs if r.policy != "dense"] or [runs[0].nll]
    common = common_targets(bounded)
    return [dict(policy=r.policy, num_sinks=r.num_sinks, cache_size=r.cache_size,
                 tokens=int(np.isfinite(r.nll).sum()), ppl=ppl(r.nll),
                 common_ppl=common_ppl(r.nll, common))
            for r in runs]


def curve_rows(runs: Sequence[Run], size: int) -> list[dict]:
    """Per-chunk perplexity of every run: ``policy, num_sinks, cache_size, end_token, ppl``."""
    rows = []
    for r in runs:
        ends, vals = chunk_curve(r.nll, size)
        rows += [dict(policy=r.policy, num_sinks=r.num_sinks, cache_size=r.cache_size,
                      end_token=int(e), ppl=float(v)) for e, v in zip(ends, vals, strict=True)]
    return rows


def save_nll(path: str, groups: dict[str, Sequence[Run]]) -> None:
    """Per-token NLL of every run of every group to an ``.npz``, keys
    ``<group><policy>_<num_sinks>_<cache_size>``."""
    np.savez_compressed(path, **{f"{g}{r.policy}_{r.num_sinks}_{r.cache_size}": r.nll
                                 for g, runs in groups.items() for r in runs})
