"""DuoAttention (Xiao et al., ICLR 2025; algorithms.md §9a) with given head gates.

Retrieval heads keep the full cache, streaming heads keep ``sinks`` first tokens plus a ring
of recent ones. Each layer is a ``HeadGroups`` of two groups, so a streaming head's state is
``sinks + recent`` slots and a retrieval head's the full length: memory scales with what each
head keeps (kvpress's ``DuoAttentionPress`` masks a full cache instead).

Gates ``[L, Hkv]`` (larger = more of a retrieval head) come from the paper's optimisation or
from a cheap calibration proxy (``lcache.analysis.head_patterns.duo_proxy_gates``); they are
saved per model (``save_gates``), loaded against its shape (``load_gates``) and handed to the
``duo`` spec as the build context's ``head_scores``. The
``round(sparsity * L * Hkv)`` lowest gates over the whole model become streaming heads (a
stable sort: on ties the earlier layer and head), as kvpress does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lcache.cache.base import Dense, Policy
from lcache.cache.head_groups import HeadGroups
from lcache.cache.registry import Arg, register
from lcache.cache.window import StreamingLLM


def save_gates(path, gates_LH, *, source: str) -> None:
    """Write gates ``[L, Hkv]`` (float) to a JSON file with their shape and ``source``."""
    g = np.asarray(gates_LH, np.float64)
    if g.ndim != 2 or not np.isfinite(g).all():
        raise ValueError(f"gates must be finite [L, Hkv], got shape {g.shape}")
    Path(path).write_text(json.dumps(dict(num_layers=g.shape[0], num_kv_heads=g.shape[1],
                                          source=source, gates=g.tolist())))


def load_gates(path, *, num_layers: int, num_kv_heads: int) -> np.ndarray:
    """Gates ``[L, Hkv]`` from ``save_gates``'s file, checked against the model's shape."""
    try:
        meta = json.loads(Path(path).read_text())
        g = np.asarray(meta["gates"], np.float64)
        shape = (int(meta["num_layers"]), int(meta["num_kv_heads"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a head-gate file from duo.save_gates ({err})") from None
    if g.shape != shape or not np.isfinite(g).all():
        raise ValueError(f"{path}: gates of shape {g.shape} do not match their header {shape}")
    if shape != (num_layers, num_kv_heads):
        raise ValueError(f"{path}: gates for {shape[0]} layers x {shape[1]} KV heads, the model "
                         f"has {num_layers} x {num_kv_heads} (a gate file of another model?)")
    return g


def streaming_heads(gates_LH, sparsity: float) -> np.ndarray:
    """``[L, Hkv]`` bool: the ``round(sparsity * L * Hkv)`` lowest gates (stable order)."""
    g = np.asarray(gates_LH)
    n = round(g.size * sparsity)
    out = np.zeros(g.size, bool)
    out[np.argsort(g, axis=None, kind="stable")[:n]] = True
    return out.reshape(g.shape)


def duo_layers(gates_LH, sparsity: float, sinks: int, recent: int,
               retrieval: Policy) -> tuple[HeadGroups, ...]:
    """One ``HeadGroups`` per layer: ``retrieval`` for the retrieval heads, sinks + a ring of
    ``recent`` (original positions) for the streaming heads."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    streaming = StreamingLLM(window=recent, num_sinks=sinks, positions="original")
    layers = []
    for row in streaming_heads(gates_LH, sparsity):
        groups = [(tuple(int(h) for h in np.flatnonzero(want)), p)
                  for want, p in ((~row, retrieval), (row, streaming))]
        layers.append(HeadGroups(tuple((h, p) for h, p in groups if h)))
    return tuple(layers)


def _duo(budget, ctx, sparsity, sinks):
    g = np.asarray(ctx.head_scores, np.float64)
    if g.ndim != 2 or g.shape[0] != ctx.num_layers:
        raise ValueError(f"duo: head_scores of shape {g.shape} are not [L={ctx.num_layers}, "
                         "Hkv] (gates of another model?)")
    full = Dense(ctx.prompt_len + ctx.max_new + ctx.num_model_sinks)
    return duo_layers(g, sparsity, sinks, budget - sinks, full)


register("duo", None,
         split="streaming heads (the sparsity lowest head_scores of the model) keep sinks + "
               "budget - sinks recent tokens; retrieval heads keep everything (prompt_len + "
               "max_new + num_model_sinks)",
         args=dict(sparsity=Arg(0.5, "fraction of streaming heads", low=0.0, high=1.0),
                   sinks=Arg(4, "first tokens kept by streaming heads", low=0)),
         make=_duo, least=lambda sinks, **_: (sinks + 1, f"{sinks} sinks + one recent token"),
         needs=("num_layers", "head_scores"))
