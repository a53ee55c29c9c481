"""Figures of the RULER-style suite (``lcache.eval.suite`` rows): accuracy heatmaps (depth x
context per policy at one budget) and accuracy vs cache bytes per task with its Pareto front."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter


def _figure(panels: int, cols: int, size=(2.6, 2.3)):
    n_rows = -(-panels // cols)
    fig = Figure(figsize=(size[0] * cols + 1, size[1] * n_rows + 0.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, cols, squeeze=False, gridspec_kw=dict(hspace=0.6)).ravel()
    for ax in axes[panels:]:
        ax.set_axis_off()
    return fig, axes


def heatmaps(rows: Sequence[dict], budget_frac: float, path: str, cols: int = 5,
             tasks: Sequence[str] | None = None) -> str:
    """One panel per policy: mean accuracy over ``tasks`` (default: every depth-graded task),
    depth x context, at ``budget_frac`` (full-cache policies at 1)."""
    rows = [r for r in rows if r["task"] != "cwe" and (tasks is None or r["task"] in tasks)
            and r["budget_frac"] in (budget_frac, 1.0) and (r["budget_frac"] == budget_frac
                                                            or r["policy"].startswith("dense"))]
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    depths = sorted({r["depth"] for r in rows})
    contexts = sorted({r["context"] for r in rows})
    fig, axes = _figure(len(policies), cols, size=(2.6, 2.5))
    im = None
    for ax, policy in zip(axes, policies, strict=False):
        grid = np.full((len(depths), len(contexts)), np.nan)
        for i, d in enumerate(depths):
            for j, n in enumerate(contexts):
                acc = [r["accuracy"] for r in rows if r["policy"] == policy
                       and r["depth"] == d and r["context"] == n]
                grid[i, j] = np.mean(acc) if acc else np.nan
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
        for (i, j), a in np.ndenumerate(grid):
            if not np.isnan(a):
                ax.text(j, i, f"{a:.2f}", ha="center", va="center", fontsize=7,
                        color="w" if a < 0.5 else "k")
        ax.set_xticks(range(len(contexts)), [str(n) for n in contexts], fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
        ax.set_title(policy.replace("(", "\n("), fontsize=7)
    if im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.6, label="accuracy")
    which = ", ".join(tasks) if tasks else "needle tasks averaged"
    fig.suptitle(f"accuracy ({which}), budget {budget_frac:g} of the context")
    fig.supxlabel("context (bytes)")
    fig.supylabel("depth")
    fig.savefig(path, format="png")
    return path


def pareto_front(x, y) -> np.ndarray:
    """Indices of the points no other point beats (fewer or equal bytes and higher or equal
    accuracy, one strictly), sorted by bytes."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = [i for i in range(x.size) if not np.any(
        (x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i])))]
    return np.array(sorted(keep, key=lambda i: x[i]), int)


def pareto(rows: Sequence[dict], context: int, path: str, cols: int = 3) -> str:
    """One panel per task at ``context``: accuracy (mean over depths) vs cache bytes of every
    (policy, budget) point, the Pareto front drawn as a line and labelled."""
    rows = [r for r in rows if r["context"] == context]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = _figure(len(tasks), cols, size=(4.2, 3.4))
    for ax, task in zip(axes, tasks, strict=False):
        points: dict[tuple, list] = {}
        for r in rows:
            if r["task"] == task:
                points.setdefault((r["policy"], r["budget_frac"], r["cache_bytes"]),
                                  []).append(r["accuracy"])
        keys = list(points)
        x = np.array([k[2] for k in keys], float) / 2**20
        y = np.array([np.mean(points[k]) for k in keys])
        ax.scatter(x, y, s=10, c="0.6")
        front = pareto_front(x, y)
        ax.plot(x[front], y[front], "-o", ms=3, c="C3")
        for i in front:
            ax.annotate(f"{keys[i][0].split('(')[0]} {keys[i][1]:g}", (x[i], y[i]), fontsize=6,
                        xytext=(2, -8), textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(labelsize=7)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("cache MiB per sequence", fontsize=7)
        ax.set_ylabel("accuracy", fontsize=7)
    fig.suptitle(f"accuracy vs cache bytes at context {context} (red: Pareto front)")
    fig.savefig(path, format="png")
    return path
