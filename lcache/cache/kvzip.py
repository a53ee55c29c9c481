"""KVzip (Kim et al., NeurIPS 2025; arXiv 2505.23416; kvpress 0.5.5 ``KVzipPress``):
query-agnostic compression by context reconstruction.

The model reads ``context + repeat_prompt + context`` (teacher-forced reconstruction); each
context token's score per (layer, KV head) is the largest attention any query after the
context (prompt and copy) of the head's group pays it (kvpress ``score_kvzip``, one chunk).
The first ``sinks`` tokens score ``max + 1``; ``int(ratio * L * B * H * T)`` lowest (layer,
row, head, token) scores of the whole model are dropped (``layerwise=False``: layers keep
different totals), each layer's share taken as its lowest across heads (kvpress
``compress_post``).

The kept pairs are stored in AdaKV pools (ragged per head, each layer at its own size), built
once per context: no question is seen, so one compressed cache serves every question
(prefill each question from the same caches; they are immutable pytrees).
"""

from __future__ import annotations

import numpy as np

from lcache.cache.adakv import AdaKV, SnapVote


def kvzip_scores(weights_LBHqSS, context_len: int, num_kv_heads: int) -> np.ndarray:
    """``[L, B, Hkv, T]``: max attention of the reconstruction queries (every position after
    the context: the repeat prompt and the copy) on the context (the first ``context_len``),
    over each KV head's query group. ``weights`` of ``context + prompt + context`` (no model
    sink tokens)."""
    w = np.asarray(weights_LBHqSS, np.float64)
    layers, b, hq = w.shape[:3]
    rec = w[..., context_len:, :context_len]  # [L, B, Hq, R + T, T]
    return rec.max(-2).reshape(layers, b, num_kv_heads, hq // num_kv_heads,
                               context_len).max(3)


def kvzip_keep(scores_LBHT, ratio: float, sinks: int) -> np.ndarray:
    """``[L, B, H, T]`` bool kept pairs (kvpress ``compress_post``, ``layerwise=False``)."""
    s = np.array(scores_LBHT, np.float64)
    s[..., :sinks] = s.max() + 1.0
    layers, b, h, t = s.shape
    keep = np.ones(s.shape, bool)
    n_pruned = int(s.size * ratio)
    if not n_pruned:
        return keep
    pruned = np.argsort(s.reshape(-1), kind="stable")[:n_pruned]
    per_layer = np.bincount(pruned // (b * h * t), minlength=layers)
    for layer in range(layers):
        flat = s[layer].reshape(b, h * t)
        for row in range(b):
            drop = np.argsort(flat[row], kind="stable")[:per_layer[layer]]
            keep[layer, row].reshape(-1)[drop] = False
    return keep


def kvzip_compress(model, context_BT, repeat_BR, *, ratio: float, sinks: int = 4,
                   decode: int = 64):
    """``(policies, caches)``: per-layer ``AdaKV`` pools holding KVzip's kept pairs of
    ``context [B, T]`` (``repeat`` is the reconstruction prompt's token ids ``[B, R]``), with
    ``decode`` ring slots per head for a question and its answer. Raises before any work on a
    model with learnable sink tokens or an MLA cache (one latent head)."""
    import jax.numpy as jnp

    from lcache.cache.base import Dense

    cfg = model.cfg
    if cfg.num_sink_tokens or cfg.use_mla:
        raise ValueError("kvzip_compress: models with learnable sink tokens or MLA caches are "
                         "not supported (per-KV-head pools of plain context tokens)")
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"kvzip_compress: ratio must be in [0, 1), got {ratio}")
    context = jnp.asarray(context_BT, jnp.int32)
    b, t = context.shape
    seq = jnp.concatenate([context, jnp.asarray(repeat_BR, jnp.int32), context], axis=1)
    scores = kvzip_scores(model.analyze(seq)["weights"], t, cfg.num_kv_heads)
    keep = kvzip_keep(scores, ratio, sinks)
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    full = model.prefill(context, pos, model.init_cache(Dense(t), b), Dense(t))[1]
    policies, caches = [], []
    for layer, dense in enumerate(full):
        budget = max(1, -(-int(keep[layer].sum((1, 2)).max()) // cfg.num_kv_heads))
        policy = AdaKV(budget, SnapVote(window=1, kernel=1), alpha=0.0, decode_capacity=decode)
        score = jnp.where(jnp.asarray(keep[layer]), jnp.asarray(scores[layer], jnp.float32),
                          -jnp.inf)
        state = policy.init(b, cfg.num_kv_heads, dense.key_dim, dense.keys.dtype,
                            dense.value_dim)
        caches.append(policy.select(state, dense.keys, dense.values, pos, score))
        policies.append(policy)
    return tuple(policies), caches
