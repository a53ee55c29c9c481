"""DeepSeek-V3-style multi-token prediction (MTP): the comparison baseline of register tokens.

Depth ``k`` combines the previous depth's hidden state at position ``i`` (depth 0: the main
model's last residual stream) with the embedding of token ``i + k``:
``h_k = Block_k(W_k [RMSNorm(h_{k-1}); RMSNorm(Emb(x_{i+k}))])``, and the shared output head
reads ``h_k`` to predict token ``i + k + 1``. One extra decoder block per depth; the embedding
and the head are the main model's.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from lcache.model.config import ModelConfig
from lcache.model.layers import RMSNorm, dense


class MTPModule(nnx.Module):
    """One MTP depth: two norms, the ``[2 dim -> dim]`` projection and its own ``block``."""

    def __init__(self, cfg: ModelConfig, block: nnx.Module, rngs: nnx.Rngs):
        self.hidden_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.embed_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.proj = dense(rngs, 2 * cfg.dim, cfg.dim, cfg)
        self.block = block

    def __call__(self, h_BTD, emb_BTD, pos_BT):
        x = jnp.concatenate([self.hidden_norm(h_BTD), self.embed_norm(emb_BTD)], axis=-1)
        return self.block(self.proj(x), pos_BT)


def mtp_logits(model, tokens_BT1):
    """``tokens [B, T+1]`` -> the main ``logits [B, T, V]`` and, per depth ``k = 1..D``,
    ``[B, T-k, V]`` predicting ``tokens[:, k+1:]`` (float32)."""
    if not model.cfg.mtp_depth:
        raise ValueError("mtp_logits needs a model with mtp_depth >= 1")
    t = tokens_BT1.shape[1] - 1
    logits, hidden = model(tokens_BT1[:, :-1], return_hidden=True)
    h, out = hidden[-1], []
    for k, module in enumerate(model.mtp, start=1):
        pos = jnp.broadcast_to(jnp.arange(t - k, dtype=jnp.int32), (h.shape[0], t - k))
        h = module(h[:, : t - k], model._embed(tokens_BT1[:, k:t]), pos)
        out.append(model._logits(h))
    return logits, out
