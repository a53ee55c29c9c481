"""The decoder LM: training forward, cached prefill/decode, and analysis taps."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lcache.cache import KVState, Policy, layer_policies
from lcache.cache import validate as v
from lcache.model.config import ModelConfig
from lcache.model.layer_stack import LayerStack, scan_blocks, uniform_policy
from lcache.model.layers import INIT_STD, Attention, RMSNorm, SwiGLU
from lcache.model.mla import MLAttention
from lcache.model.mtp import MTPModule


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = MLAttention(cfg, rngs) if cfg.use_mla else Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg, rngs)

    def __call__(self, x, pos, taps=None):
        x = x + self.attn(self.attn_norm(x), pos, taps)
        return x + self.mlp(self.mlp_norm(x))

    def prefill(self, x, pos, state, policy):
        h, state = self.attn.prefill(self.attn_norm(x), pos, state, policy)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), state

    def decode(self, x, pos, state, policy):
        h, state = self.attn.decode(self.attn_norm(x), pos, state, policy)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), state


def _check_caches(caches, num_layers: int) -> None:
    if isinstance(caches, LayerStack):
        layers = jax.tree.leaves(caches.caches)[0].shape[0]
        if layers != num_layers:
            raise ValueError(f"caches: a LayerStack of {layers} layers for {num_layers} layers")
        return
    if not isinstance(caches, Sequence) or len(caches) != num_layers:
        raise ValueError(f"caches must be the list of {num_layers} per-layer states from "
                         f"init_cache, got {type(caches).__name__} of "
                         f"{len(caches) if isinstance(caches, Sequence) else '?'}")


class Transformer(nnx.Module):
    """Llama-style decoder LM.

    Token positions given to ``prefill``/``decode`` count text tokens from 0; with
    ``num_sink_tokens = K`` the learnable sink tokens occupy positions ``0..K-1`` and text token
    ``p`` sits at ``p + K`` (``init_cache`` prefills the sinks).
    """

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Embed(cfg.vocab_size, cfg.dim, embedding_init=nnx.initializers.normal(
            INIT_STD), rngs=rngs)
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        if not cfg.tie_embeddings:
            self.lm_head = nnx.Linear(cfg.dim, cfg.vocab_size, use_bias=False,
                                      kernel_init=nnx.initializers.normal(INIT_STD), rngs=rngs)
        if cfg.num_sink_tokens:
            self.sink_tokens = nnx.Param(
                INIT_STD * jax.random.normal(rngs.params(), (cfg.num_sink_tokens, cfg.dim)))
        if cfg.register_depth:  # one learned register per offset d = 1..D (model/registers.py)
            self.register_embed = nnx.Param(
                INIT_STD * jax.random.normal(rngs.params(), (cfg.register_depth, cfg.dim)))
        if cfg.mtp_depth:  # DeepSeek-style MTP modules, one extra block each (model/mtp.py)
            self.mtp = nnx.List([MTPModule(cfg, Block(cfg, rngs), rngs)
                                 for _ in range(cfg.mtp_depth)])

    # -- pieces --------------------------------------------------------------------------------
    def _check_ids(self, where: str, tokens) -> None:
        """Concrete (eager) token ids must be in the vocabulary; traced ones are checked on the
        host by the callers (``generate``, the engine)."""
        ids = v.concrete(tokens)
        bad = None if ids is None else ids[(ids < 0) | (ids >= self.cfg.vocab_size)]
        if bad is not None and bad.size:
            raise ValueError(f"{where}: token id {int(bad.flat[0])} outside the vocabulary "
                             f"[0, {self.cfg.vocab_size})")

    def _embed(self, tokens):
        bad = (tokens < 0) | (tokens >= self.cfg.vocab_size)
        tokens = jnp.where(bad, 0, tokens)  # ids are validated on the host by the callers
        return self.embed(tokens).astype(jnp.dtype(self.cfg.compute_dtype))

    def _logits(self, x):
        x = self.norm(x)
        if self.cfg.tie_embeddings:
            return self.embed.attend(x.astype(jnp.float32))
        return self.lm_head(x).astype(jnp.float32)

    def _with_sinks(self, x_BTD):
        k = self.cfg.num_sink_tokens
        if not k:
            return x_BTD
        sinks = jnp.broadcast_to(self.sink_tokens[...].astype(x_BTD.dtype),
                                 (x_BTD.shape[0], k, x_BTD.shape[-1]))
        return jnp.concatenate([sinks, x_BTD], axis=1)

    # -- training ------------------------------------------------------------------------------
    def __call__(self, tokens_BT, return_hidden=False):
        """``tokens [B, T]`` -> ``logits [B, T, V]`` float32 (sink tokens stripped).

        With ``return_hidden`` also returns the residual stream ``[L+1, B, T, dim]``.
        """
        k = self.cfg.num_sink_tokens
        x = self._with_sinks(self._embed(tokens_BT))
        b, t = x.shape[:2]
        pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        hidden = [x]
        for block in self.blocks:
            x = block(x, pos)
            hidden.append(x)
        logits = self._logits(x)[:, k:]
        if return_hidden:
            return logits, jnp.stack(hidden)[:, :, k:]
        return logits

    def analyze(self, tokens_BT) -> dict:
        """Everything the sink analysis reads, sink tokens included (they are tokens too):

        ``logits [B, T, V]``, ``hidden [L+1, B, K+T, dim]`` residual stream,
        ``weights [L, B, Hq, K+T, K+T]`` attention weights (float32, the variant's own weights,
        not renormalised), ``values [L, B, Hkv, K+T, D]``, and ``num_sink_tokens`` K.
        """
        k = self.cfg.num_sink_tokens
        x = self._with_sinks(self._embed(tokens_BT))
        b, t = x.shape[:2]
        pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        hidden, weights, values = [x], [], []
        for block in self.blocks:
            taps = {}
            x = block(x, pos, taps)
            hidden.append(x)
            weights.append(taps["weights"])
            values.append(taps["values"])
        return dict(logits=self._logits(x)[:, k:], hidden=jnp.stack(hidden),
                    weights=jnp.stack(weights), values=jnp.stack(values), num_sink_tokens=k)

    # -- cached inference ----------------------------------------------------------------------
    def init_cache(self, policy: Policy | Sequence[Policy], batch: int,
                   dtype=None, stacked: bool = False) -> list[KVState] | LayerStack:
        """Empty per-layer caches; with sink tokens, already holding them. ``stacked``: one
        ``LayerStack`` (one policy in every layer), which ``prefill`` and ``decode`` run as a
        ``lax.scan`` over the blocks (``L`` times less to trace and compile)."""
        cfg = self.cfg
        dtype = dtype or jnp.dtype(cfg.compute_dtype)
        policies = layer_policies(policy, cfg.num_layers)
        kv_heads, q_heads, key_dim, value_dim = cfg.cache_dims
        caches = [p.init(batch, p.cache_heads(kv_heads, q_heads), key_dim, dtype, value_dim)
                  for p in policies]
        if stacked:
            uniform_policy(policies)
            caches = LayerStack.of(caches)
        if cfg.num_sink_tokens:
            x = self._with_sinks(jnp.zeros((batch, 0, cfg.dim), dtype))
            pos = jnp.broadcast_to(jnp.arange(cfg.num_sink_tokens, dtype=jnp.int32),
                                   x.shape[:2])
            _, caches = self._prefill_embedded(x, pos, caches, policies)
        return caches

    def _prefill_embedded(self, x, pos, caches, policies):
        return self._blocks(x, caches, policies,
                            lambda block, x, state, policy: block.prefill(x, pos, state, policy))

    def _blocks(self, x, caches, policies, step):
        """``x, cache = step(block, x, cache, policy)`` through every block: a Python loop over
        per-layer caches, or one ``lax.scan`` over a ``LayerStack``."""
        if isinstance(caches, LayerStack):
            policy = uniform_policy(policies)
            return scan_blocks(self.blocks, x, caches,
                               lambda block, x, state: step(block, x, state, policy))
        new = []
        for block, state, policy in zip(self.blocks, caches, policies, strict=True):
            x, state = step(block, x, state, policy)
            new.append(state)
        return x, new

    def prefill(self, tokens_BT, pos_BT, caches, policy):
        """A chunk of tokens at text positions ``pos [B, T]`` (``-1`` = padding).

        Returns ``logits [B, T, V]`` and the updated caches.
        """
        policies = layer_policies(policy, self.cfg.num_layers)
        _check_caches(caches, self.cfg.num_layers)
        shape = v.check_array("Transformer.prefill", "tokens", tokens_BT, "B T", (None, None),
                              "int")
        v.check_array("Transformer.prefill", "pos", pos_BT, "B T", shape, "int")
        self._check_ids("Transformer.prefill", tokens_BT)
        k = self.cfg.num_sink_tokens
        pos = jnp.where(pos_BT >= 0, pos_BT + k, -1)
        x, caches = self._prefill_embedded(self._embed(tokens_BT), pos, caches, policies)
        return self._logits(x), caches

    def decode(self, token_B, pos_B, caches, policy):
        """One token per row at text position ``pos [B]`` -> ``logits [B, V]``, caches."""
        policies = layer_policies(policy, self.cfg.num_layers)
        _check_caches(caches, self.cfg.num_layers)
        shape = v.check_array("Transformer.decode", "token", token_B, "B", (None,), "int")
        v.check_array("Transformer.decode", "pos", pos_B, "B", shape, "int")
        self._check_ids("Transformer.decode", token_B)
        x = self._embed(token_B[:, None])
        pos = pos_B + self.cfg.num_sink_tokens
        x, caches = self._blocks(x, caches, policies,
                                 lambda block, x, state, pol: block.decode(x, pos, state, pol))
        return self._logits(x)[:, 0], caches
