"""Head patterns from a model's attention: DuoAttention gates from a cheap calibration proxy
(no optimisation) and RazorAttention's induction / echo scores.

kvpress 0.5.5's ``duo_attention_on_the_fly``: per layer and head, average the (pre-RoPE)
queries and keys of a calibration text over its tokens, repeat the means at positions
``0..q_len-1`` with RoPE, take the softmax of the last query over the ``q_len`` keys, and score
the head by the area under the cumulative attention curve, ``mean_j sum_{i<=j} w_i``: a head
whose attention (through RoPE alone) reaches far back scores high (retrieval), one that looks
at recent positions scores low (streaming). Query heads are averaged per KV head, samples
averaged. Our texts are our own calibration data, never downloaded.
"""

from __future__ import annotations

import numpy as np


def rope_np(x_TD, pos_T, inv_freq):
    """Rotate-half RoPE in float64: ``x [..., T, D]`` at positions ``pos [T]``."""
    angle = np.asarray(pos_T, np.float64)[:, None] * np.asarray(inv_freq, np.float64)
    cos, sin = np.cos(angle), np.sin(angle)
    x1, x2 = np.split(np.asarray(x_TD, np.float64), 2, axis=-1)
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def proxy_scores(q_mean_HqD, k_mean_HkvD, inv_freq, q_len: int = 500) -> np.ndarray:
    """``[Hkv]`` area-under-cumulative-attention scores of one layer from mean queries
    ``[Hq, D]`` and mean keys ``[Hkv, D]`` (pre-RoPE)."""
    hq, d = q_mean_HqD.shape
    hkv = k_mean_HkvD.shape[0]
    pos = np.arange(q_len)
    q_last = rope_np(np.asarray(q_mean_HqD)[:, None], pos[-1:], inv_freq)[:, 0]  # [Hq, D]
    k = rope_np(np.broadcast_to(np.asarray(k_mean_HkvD)[:, None], (hkv, q_len, d)), pos,
                inv_freq)  # [Hkv, q_len, D]
    k = np.repeat(k, hq // hkv, axis=0)
    logits = np.einsum("hd,htd->ht", q_last, k) / np.sqrt(d)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    area = np.cumsum(w, axis=-1).mean(-1)  # [Hq]
    return area.reshape(hkv, hq // hkv).mean(-1)


def mean_queries_keys(model, tokens_BT) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer ``(q_mean [B, Hq, D], k_mean [B, Hkv, D])`` pre-RoPE, averaged over each
    row's tokens (the model's own sink tokens included), from one forward pass."""
    import jax.numpy as jnp

    if model.cfg.use_mla:
        raise ValueError("duo proxy gates need per-head keys: MLA models store one latent head")
    x = model._with_sinks(model._embed(jnp.asarray(tokens_BT)))
    b, t = x.shape[:2]
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    out = []
    for block in model.blocks:
        q, k, _ = block.attn._qkv(block.attn_norm(x))  # [B, H, T, D]
        out.append((np.asarray(q.mean(axis=2), np.float64),
                    np.asarray(k.mean(axis=2), np.float64)))
        x = block(x, pos)
    return out


def duo_proxy_gates(model, tokens_BT, q_len: int = 500) -> np.ndarray:
    """Gates ``[L, Hkv]`` for ``lcache.cache.duo``: ``proxy_scores`` per layer, averaged
    over the rows of ``tokens [B, T]`` (one calibration text per row)."""
    from lcache.model.rope import model_inv_freq

    inv_freq = model_inv_freq(model.cfg)
    return np.stack([
        np.mean([proxy_scores(q[i], k[i], inv_freq, q_len) for i in range(q.shape[0])], axis=0)
        for q, k in mean_queries_keys(model, tokens_BT)])


def razor_scores(weights_LBHqTT, period: int, num_kv_heads: int, offset: int = 0):
    """RazorAttention's head scores from attention on a sequence that repeats a random block of
    ``period`` tokens (after ``offset`` model sink tokens): ``(induction [L, Hkv],
    echo [L, Hkv])``, the mean attention a query at ``i >= period`` pays to the token after
    ``i``'s previous occurrence (``i - period + 1``) and to that occurrence (``i - period``),
    max over each KV head's query group."""
    w = np.asarray(weights_LBHqTT, np.float64)[..., offset:, offset:]
    t = w.shape[-1]
    i = np.arange(period, t)
    induction = w[..., i, i - period + 1].mean(axis=(1, -1))  # [L, Hq]
    echo = w[..., i, i - period].mean(axis=(1, -1))
    layers, hq = induction.shape
    return tuple(x.reshape(layers, num_kv_heads, hq // num_kv_heads).max(-1)
                 for x in (induction, echo))


def razor_head_scores(model, period: int = 64, repeats: int = 4, batch: int = 4,
                      seed: int = 0):
    """``razor_scores`` of ``model`` on ``batch`` random blocks repeated ``repeats`` times."""
    rng = np.random.default_rng(seed)
    block = rng.integers(0, model.cfg.vocab_size, (batch, period))
    out = model.analyze(np.tile(block, (1, repeats)))
    return razor_scores(out["weights"], period, model.cfg.num_kv_heads, out["num_sink_tokens"])
