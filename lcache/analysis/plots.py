"""PNG plots for sink analysis and experiment curves (matplotlib, Agg canvas, no pyplot).

Every function writes a PNG to ``path`` (parent folders created) and returns ``str(path)``.
Figures are built with ``matplotlib.figure.Figure`` + the Agg canvas, so no global backend is
touched and nothing is shown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _new(figsize=(6.0, 4.0)):
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return str(path)


def plot_sink_map(map_LH, path, title: str = "sink rate") -> str:
    """Heatmap of a per-(layer, head) fraction in [0, 1] (e.g. :func:`sinks.sink_map`)."""
    map_LH = np.asarray(map_LH, float)
    fig, ax = _new((max(4.0, 0.35 * map_LH.shape[1] + 2), max(3.0, 0.3 * map_LH.shape[0] + 1.5)))
    im = ax.imshow(map_LH, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", origin="lower")
    fig.colorbar(im, ax=ax)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    return _save(fig, path)


def plot_lines(x, ys: Mapping[str, Sequence[float]], path, xlabel: str = "", ylabel: str = "",
               title: str = "", logy: bool = False) -> str:
    """One line per ``label -> y`` over a shared ``x`` (experiment curves)."""
    fig, ax = _new()
    for label, y in ys.items():
        ax.plot(np.asarray(x), np.asarray(y, float), marker="o", markersize=3, label=label)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ys:
        ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_first_token_share(shares: Mapping[str, Sequence[float]], path,
                           title: str = "attention on token 0") -> str:
    """Per-layer first-token share ``{variant: [L]}`` (e.g. :func:`sinks.first_token_share`
    averaged over heads)."""
    n_layers = max((len(v) for v in shares.values()), default=0)
    return plot_lines(np.arange(n_layers), shares, path, "layer", "mean A[t, 0], t ≥ 1", title)


def plot_value_norms(sink_norm_LH, other_norm_LH, path,
                     title: str = "value norm: sink vs other tokens") -> str:
    """Per-layer mean over heads of ‖v‖ at sink vs other tokens (:func:`value_drain`); the
    per-head values are drawn as faint points."""
    sink, other = np.asarray(sink_norm_LH, float), np.asarray(other_norm_LH, float)
    layers = np.arange(sink.shape[0])
    fig, ax = _new()
    for arr, label in ((sink, "sink tokens"), (other, "other tokens")):
        line = ax.plot(layers, np.nanmean(arr, axis=1), marker="o", label=label)[0]
        ax.scatter(np.repeat(layers, arr.shape[1]), arr.ravel(), s=6, alpha=0.3,
                   color=line.get_color())
    ax.set_xlabel("layer")
    ax.set_ylabel("mean ‖v‖₂")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_massive_activations(top_abs_LK, median_abs_L, path, title: str = "massive activations",
                             logy: bool = True) -> str:
    """Sun et al.-style per-layer curves: top-1..k |h| and the median |h|
    (:func:`massive.massive_activations` ``top_abs``, ``median_abs``)."""
    top = np.asarray(top_abs_LK, float).reshape(len(median_abs_L), -1)
    ys = {f"top {i + 1}": top[:, i] for i in range(top.shape[1])}
    ys["median"] = np.asarray(median_abs_L, float)
    return plot_lines(np.arange(top.shape[0]), ys, path, "layer", "|h|", title, logy=logy)
