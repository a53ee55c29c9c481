"""Observation-window attention: the last queries of a prompt vote for the keys to keep.

The scoring primitive shared by SnapKV, PyramidKV, DynamicKV (``window`` last queries, pooled)
and TOVA (the last query), algorithms.md §0:

    A = softmax(Q[-w:] K^T / sqrt(d) + causal mask)        # over every key the queries see
    s = pool1d(mean over the w queries of A[:, :, :, prefix], kernel, pad=kernel // 2)

Candidates are the cache slots followed by the chunk's tokens, each with its original position;
pooling runs along positions (slots are unordered), so a prefix with eviction gaps pools its
neighbours across the gaps.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

POOLINGS = ("avg", "max")


def observers(queries_BHqTD, pos_BT, num: int):
    """The ``num`` queries with the largest positions (any padding side) and their positions:
    ``[B, Hq, num, D]``, ``[B, num]`` (``-1`` where a row has fewer real tokens)."""
    num = min(num, pos_BT.shape[-1])
    q_pos, idx = jax.lax.top_k(pos_BT, num)
    q = jnp.take_along_axis(queries_BHqTD, idx[:, None, :, None], axis=2)
    return q, q_pos


def candidates(state, keys_BHTD, pos_BT):
    """Cache slots then chunk tokens: ``keys [B, H, C + T, D]``, ``pos [B, H, C + T]``."""
    keys = jnp.concatenate([state.keys.astype(keys_BHTD.dtype), keys_BHTD], axis=2)
    pos = jnp.concatenate([state.pos, jnp.broadcast_to(pos_BT[:, None], keys_BHTD.shape[:3])], 2)
    return keys, pos


def observer_probs(q_BHqWD, q_pos_BW, keys_BHND, k_pos_BHN):
    """``[B, H, G, W, N]`` float32 softmax of each observer over the keys it may see (valid,
    ``k_pos <= q_pos``), scaled by ``1/sqrt(D)``; rows of padding observers are zero."""
    b, hq, w, d = q_BHqWD.shape
    h = keys_BHND.shape[1]
    q = q_BHqWD.reshape(b, h, hq // h, w, d)
    logits = jnp.einsum("bhgwd,bhnd->bhgwn", q, keys_BHND.astype(q.dtype),
                        preferred_element_type=jnp.float32) * d**-0.5
    qp = q_pos_BW[:, None, None, :, None]
    kp = k_pos_BHN[:, :, None, None, :]
    seen = (kp >= 0) & (kp <= qp) & (qp >= 0)
    logits = jnp.where(seen, logits, -jnp.inf)
    top = jnp.max(logits, axis=-1, keepdims=True)
    e = jnp.where(seen, jnp.exp(logits - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
    return e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), 1e-30)


def observed_sum(queries_BHqTD, pos_BT, num: int, keys_BHND, k_pos_BHN):
    """``[B, Hq, N]`` float32: the ``observer_probs`` of the ``num`` newest queries
    (``observers``) summed over them, per query head (``PrefillMass.votes``)."""
    q, q_pos = observers(queries_BHqTD, pos_BT, num)
    probs = observer_probs(q, q_pos, keys_BHND, k_pos_BHN)
    b, h, g, _, n = probs.shape
    return probs.sum(axis=3).reshape(b, h * g, n)


def observer_count(pos_BT, num: int):
    """``[B]`` float32: real observers among the ``num`` newest queries (at least 1)."""
    q_pos = jax.lax.top_k(pos_BT, min(num, pos_BT.shape[-1]))[0]
    return jnp.maximum((q_pos >= 0).sum(-1), 1).astype(jnp.float32)


def window_vote(probs_BHGWN, q_pos_BW):
    """``[B, H, G, N]`` mean attention over the real observers."""
    real = (q_pos_BW >= 0).astype(jnp.float32)
    count = jnp.maximum(real.sum(-1), 1.0)[:, None, None, None]
    return jnp.sum(probs_BHGWN * real[:, None, None, :, None], axis=3) / count


def pool_by_position(score_BHGN, pos_BHN, member_BHN, kernel: int, pooling: str):
    """1-D pooling (stride 1, padding ``kernel // 2``) along positions over the ``member``
    entries. Non-members count as padding: zero for 'avg' (divided by ``kernel`` regardless, as
    ``avg_pool1d(count_include_pad=True)``), ``-inf`` for 'max'."""
    if kernel == 1:
        return score_BHGN
    fill = 0.0 if pooling == "avg" else -jnp.inf
    order = jnp.argsort(jnp.where(member_BHN, pos_BHN, -1), axis=-1)  # non-members first
    undo = jnp.argsort(order, axis=-1)
    x = jnp.take_along_axis(jnp.where(member_BHN[:, :, None], score_BHGN, fill),
                            jnp.broadcast_to(order[:, :, None], score_BHGN.shape), axis=-1)
    r, n = kernel // 2, x.shape[-1]
    x = jnp.pad(x, ((0, 0),) * 3 + ((r, r),), constant_values=fill)
    shifted = [x[..., i: i + n] for i in range(kernel)]
    pooled = sum(shifted) / kernel if pooling == "avg" else functools.reduce(jnp.maximum, shifted)
    return jnp.take_along_axis(pooled, jnp.broadcast_to(undo[:, :, None], pooled.shape), axis=-1)
