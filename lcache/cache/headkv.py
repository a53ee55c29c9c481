"""HeadKV (Fu et al., ICLR 2025; arXiv 2410.19258): per-head budgets from head importance
scores under one layer total, each head selecting its tokens with SnapKV.

Every head keeps its observation ``window`` plus ``base`` of the rest of an average head's
budget; the remaining ``H * budget`` tokens of the layer are shared in proportion to the
heads' scores (retrieval-reasoning scores in the paper; any ``[L, Hkv]`` importance, e.g. the
DuoAttention proxy, here), rounded by largest remainder so the layer total is exact. Heads
with the same budget share one ``HeadGroups`` group of that capacity: memory is the layer
total, spread unevenly.
"""

from __future__ import annotations

import numpy as np

from lcache.cache.head_groups import HeadGroups
from lcache.cache.registry import Arg, register
from lcache.cache.snapkv import DECODE_ARG, SNAP_ARGS, snap_from_args, snap_least


def head_budgets(scores_H, total: int, floor: int) -> tuple[int, ...]:
    """Per-head budgets summing to ``total``: ``floor`` each, the rest in proportion to
    ``scores`` (>= 0; all zero: evenly), largest remainder (ties: the lower head)."""
    s = np.asarray(scores_H, np.float64)
    if s.ndim != 1 or (s < 0).any() or not np.isfinite(s).all():
        raise ValueError(f"head scores must be finite and >= 0 [H], got {s}")
    rest = total - floor * s.size
    if rest < 0:
        raise ValueError(f"a layer total of {total} cannot give {s.size} heads {floor} each")
    share = s / s.sum() * rest if s.sum() > 0 else np.full(s.size, rest / s.size)
    out = np.floor(share).astype(int)
    extra = rest - out.sum()
    out[np.argsort(-(share - out), kind="stable")[:extra]] += 1
    return tuple(int(floor + x) for x in out)


def headkv_layer(budgets_H, total: int, *, window: int, kernel: int, pool: str,
                 decode: int | None) -> HeadGroups:
    """One layer: head ``h`` keeps ``budgets[h]`` prompt tokens (SnapKV) plus ``decode`` slots;
    the budgets must sum to ``total`` and each hold the window."""
    budgets = tuple(int(b) for b in budgets_H)
    if sum(budgets) != total:
        raise ValueError(f"head budgets {budgets} sum to {sum(budgets)}, not the layer total "
                         f"{total}")
    if min(budgets) <= window:
        raise ValueError(f"head budgets {budgets}: each must exceed the window {window}")
    by_budget: dict[int, list[int]] = {}
    for h, b in enumerate(budgets):
        by_budget.setdefault(b, []).append(h)
    return HeadGroups(tuple(
        (tuple(heads), snap_from_args(b, decode, window=window, kernel=kernel, pool=pool,
                                      gqa="mean"))
        for b, heads in by_budget.items()))


def headkv_layers(scores_LH, budget: int, base: float, **snap) -> tuple[HeadGroups, ...]:
    """Per layer: ``head_budgets`` of ``H * budget`` with a floor of ``window + 1 +
    round(base * (budget - window - 1))``, then ``headkv_layer``."""
    s = np.asarray(scores_LH, np.float64)
    window = snap["window"]
    floor = window + 1 + round(base * (budget - window - 1))
    return tuple(headkv_layer(head_budgets(row, budget * row.size, floor), budget * row.size,
                              **snap) for row in s)


def _headkv(budget, ctx, decode, base, **a):
    s = np.asarray(ctx.head_scores, np.float64)
    if s.ndim != 2 or s.shape[0] != ctx.num_layers:
        raise ValueError(f"headkv: head_scores of shape {s.shape} are not [L={ctx.num_layers}, "
                         "Hkv] (scores of another model?)")
    return headkv_layers(s, budget, base, decode=decode, **a)


register("headkv", None,
         split="H * budget prompt tokens per layer: every head its window + 1 + base of the "
               "rest of budget, the remainder shared in proportion to head_scores; each head "
               "selects by snapkv (group mean); plus decode slots per head",
         args=dict({k: SNAP_ARGS[k] for k in ("window", "kernel", "pool")}, decode=DECODE_ARG,
                   base=Arg(0.2, "share of a head's budget it keeps whatever its score",
                            low=0.0, high=1.0)),
         make=_headkv, least=snap_least, compresses=True, needs=("num_layers", "head_scores"))
