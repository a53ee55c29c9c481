"""Expected Attention (kvpress 0.5.5 ``ExpectedAttentionPress``, arXiv 2510.00636): score each
prompt token by the attention future queries are expected to pay it, in closed form from the
statistics of the prompt's own queries (nothing downloaded), stored like AdaKV.

Per KV head, from the chunk's pre-RoPE queries after the first ``sinks`` tokens: mean ``mu``
and covariance ``S`` per query head; RoPE averaged over the next ``n_future`` positions,
``R = mean_p [cos_p I + sin_p P]`` (rotate-half), gives ``mu' = R mu``, ``S' = R S R^T``; then

    s_j = softmax_j( k_j . mu' / sqrt(d) + k_j^T S' k_j / (2 d) )      (keys after the sinks)
    s_j = (mean over the query group of s_j + epsilon) * ||v_j||

and the sinks score ``max + 1``. ``kernel > 1`` pools the scores along positions (SnapKV's
1-D pooling, 'max' or 'avg'; not in kvpress): with byte tokens a needle spans many entries, and
unpooled top-k keeps scattered bytes of it (measured: passkeys cut to their first digits).
Query-agnostic: no question is needed, so one compressed
cache serves several questions. ``alpha=1`` keeps each head's own top ``budget`` (the press
alone); ``alpha=0.2`` is kvpress's leaderboard ``AdaKVPress(ExpectedAttentionPress)``.

Queries reach a policy rotated; they are un-rotated here with plain RoPE of ``rope_theta``
(the model's: scaled RoPE variants are not modelled).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from lcache.cache import validate as v
from lcache.cache.adakv import AdaKV, protect, ring_arg
from lcache.cache.registry import Arg, register
from lcache.cache.voting import POOLINGS, pool_by_position
from pallas_kernels.decode.reference import HIGHEST, rope_rotate


@dataclasses.dataclass(frozen=True)
class ExpectedScores:
    """The closed-form score above; ``protected``: the sinks every head keeps."""

    n_future: int = 512
    sinks: int = 4
    epsilon: float = 0.0
    covariance: bool = True
    vnorm: bool = True
    rope_theta: float = 10000.0
    kernel: int = 1
    pooling: str = "max"

    def __post_init__(self):
        v.check_fields(self, n_future=v.integer(1), sinks=v.integer(0), kernel=v.integer(1),
                       pooling=v.one_of(POOLINGS))
        if self.epsilon < 0 or self.rope_theta <= 0:
            raise ValueError(f"ExpectedScores: epsilon >= 0 and rope_theta > 0, got {self!r}")

    @property
    def protected(self) -> int:
        return self.sinks

    def future_rope(self, start_B, d: int):
        """``R [B, D, D]``: RoPE averaged over positions ``start .. start + n_future - 1``."""
        inv_freq = self.rope_theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
        p = start_B[:, None].astype(jnp.float32) + jnp.arange(self.n_future, dtype=jnp.float32)
        ang = p[..., None] * inv_freq  # [B, F, D/2]
        cos, sin = jnp.cos(ang).mean(1), jnp.sin(ang).mean(1)  # [B, D/2]
        c, s = jnp.concatenate([cos, cos], -1), jnp.concatenate([sin, sin], -1)
        half = d // 2
        eye = jnp.eye(d, dtype=jnp.float32)
        swap = jnp.zeros((d, d), jnp.float32).at[half:, :half].set(jnp.eye(half)).at[
            :half, half:].set(-jnp.eye(half))
        # kvpress scales columns; cos/sin of paired channels are equal, so rows do the same
        return c[:, :, None] * eye + s[:, :, None] * swap

    def scores(self, keys_BHTD, values_BHTD, pos_BT, queries_BHqTD):
        """``[B, H, T]`` (padding ``-inf``, sinks ``max + 1``)."""
        b, h, t, d = keys_BHTD.shape
        hq = queries_BHqTD.shape[1]
        inv_freq = self.rope_theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
        q = rope_rotate(queries_BHqTD, -jnp.broadcast_to(pos_BT[:, None], (b, hq, t)),
                        inv_freq)  # pre-RoPE, f32
        stat = ((pos_BT >= self.sinks) & (pos_BT >= 0))[:, None, :, None]  # [B, 1, T, 1]
        count = jnp.maximum(stat.sum(axis=2), 1)  # [B, 1, 1]
        mu0 = jnp.where(stat, q, 0.0).sum(axis=2) / count  # [B, Hq, D]
        rot = self.future_rope(jnp.max(pos_BT, axis=-1) + 1, d)  # [B, D, D]
        mu = jnp.einsum("bij,bhj->bhi", rot, mu0, precision=HIGHEST)
        k = jnp.repeat(keys_BHTD.astype(jnp.float32), hq // h, axis=1)  # [B, Hq, T, D]
        logits = jnp.einsum("bhtd,bhd->bht", k, mu, precision=HIGHEST) / d ** 0.5
        if self.covariance:
            centred = jnp.where(stat, q - mu0[:, :, None], 0.0)
            cov = jnp.einsum("bhti,bhtj->bhij", centred, centred,
                             precision=HIGHEST) / count[..., None]
            cov = jnp.einsum("bij,bhjk,blk->bhil", rot, cov, rot, precision=HIGHEST)
            logits += jnp.einsum("bhti,bhij,bhtj->bht", k, cov, k, precision=HIGHEST) / d / 2
        scored = stat[:, :, :, 0]  # [B, 1, T]
        logits = jnp.where(scored, logits, -jnp.inf)
        w = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
        w = jnp.where(scored, w, 0.0)
        w = w / jnp.maximum(w.sum(-1, keepdims=True), 1e-30)
        score = w.reshape(b, h, hq // h, t).mean(axis=2)
        if self.vnorm:
            score = (score + self.epsilon) * jnp.linalg.norm(values_BHTD.astype(jnp.float32),
                                                             axis=-1)
        if self.kernel > 1:
            pos_bht = jnp.broadcast_to(pos_BT[:, None], (b, h, t))
            score = pool_by_position(score[:, :, None], pos_bht,
                                     jnp.broadcast_to(scored, (b, h, t)), self.kernel,
                                     self.pooling)[:, :, 0]
        return protect(score, jnp.broadcast_to(scored, (b, h, t)),
                       jnp.broadcast_to((pos_BT >= 0)[:, None], (b, h, t)))


@dataclasses.dataclass(frozen=True)
class ExpectedAttention(AdaKV):
    """AdaKV storage over ``ExpectedScores`` (defaults: each head its own top ``budget``)."""

    scorer: Any = ExpectedScores()
    alpha: float = 1.0


register("expected_attention", ExpectedAttention,
         split="H * budget prompt tokens per layer by expected attention from the prompt's "
               "query statistics (the sinks first), each head its top budget (alpha=1) or one "
               "top-k across the heads with an alpha * budget safeguard (AdaKV); plus decode "
               "ring slots per head",
         args=dict(n_future=Arg(512, "future positions RoPE is averaged over", low=1),
                   sinks=Arg(4, "first tokens always kept", low=0),
                   epsilon=Arg(0.0, "added to the scores before the value norm", low=0.0),
                   alpha=Arg(1.0, "safeguard (1: per-head top-k)", low=0.0, high=1.0),
                   kernel=Arg(1, "pooling of the scores along positions (1: none, kvpress)",
                              low=1),
                   pool=Arg("max", "pooling of the scores", choices=POOLINGS),
                   decode=ring_arg()),
         make=lambda budget, ctx, n_future, sinks, epsilon, alpha, kernel, pool, decode:
         ExpectedAttention(budget, ExpectedScores(n_future, sinks, epsilon, kernel=kernel,
                                                  pooling=pool), alpha, decode),
         args_of=lambda p: dict(n_future=p.scorer.n_future, sinks=p.scorer.sinks,
                                epsilon=p.scorer.epsilon, alpha=p.alpha, kernel=p.scorer.kernel,
                                pool=p.scorer.pooling, decode=p.decode_capacity),
         least=lambda sinks, **_: (max(sinks, 1), f"{sinks} sinks"),
         compresses=True)
