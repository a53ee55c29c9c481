"""DuoAttention's gate optimisation (Xiao et al., 2025; algorithms.md §9a; ``duo_attn/train.py``).

One trainable gate ``alpha`` per (layer, KV head), started at 1 and clamped to ``[0, 1]`` after
every step; each head's output mixes full attention and streaming attention (``sink`` first
tokens + ``recent`` newest):

    out_h = alpha_h * full_h + (1 - alpha_h) * streaming_h

The loss distils the full model's last hidden states on the answer tokens (MSE) plus
``l1 * mean |alpha|``; AdamW, warmup and decay over a fifth of the steps each (the paper: lr
0.02, l1 0.05, sink 128 + recent 256, 2000 steps on synthetic passkey data). The model's
weights stay frozen. The gates go to ``lcache.cache.duo`` (``save_gates``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lcache.model.rope import apply_rope


def _hidden(model, tokens_BT, gates_LH, sink: int, recent: int):
    """Last hidden states ``[B, T, dim]`` with each head mixed by its gate."""
    x = model._with_sinks(model._embed(tokens_BT))
    b, t = x.shape[:2]
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    q_pos, k_pos = pos[:, :, None], pos[:, None, :]
    causal = (k_pos <= q_pos)[:, None, None]  # [B, 1, 1, T, S]
    stream = causal & ((k_pos < sink) | (k_pos > q_pos - recent))[:, None, None]
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        h = block.attn_norm(x)
        q, k, v = attn._qkv(h)
        q, k = (apply_rope(a, pos[:, None], attn.inv_freq) for a in (q, k))
        window = jnp.broadcast_to(attn._in_window(q_pos, k_pos), (b, t, t))[:, None, None]
        full, _ = attn._attend(q, k, v, causal & window)
        part, _ = attn._attend(q, k, v, stream & window)
        g = gates_LH[layer][None, :, None, None, None].astype(full.dtype)  # [1, H, 1, 1, 1]
        x = x + attn._output(h, g * full + (1 - g) * part)
        x = x + block.mlp(block.mlp_norm(x))
    return x[:, model.cfg.num_sink_tokens:]


def optimise_duo_gates(model, tokens_BT, answer_BT, *, sink: int = 128, recent: int = 256,
                       steps: int = 2000, lr: float = 0.02, l1: float = 0.05):
    """Gates ``[L, Hkv]`` in ``[0, 1]`` and the loss per step, from ``tokens [N, T]`` and
    ``answer [N, T]`` bool (the tokens whose hidden states are distilled), one row per step."""
    cfg = model.cfg
    if cfg.use_mla:
        raise ValueError("DuoAttention gates are per KV head; an MLA cache has one latent head")
    tokens = jnp.asarray(tokens_BT, jnp.int32)
    answer = jnp.asarray(answer_BT, bool)
    if tokens.ndim != 2 or answer.shape != tokens.shape or not answer.any(axis=1).all():
        raise ValueError(f"tokens [N, T] and answer [N, T] bool with answer tokens in every "
                         f"row, got {tokens.shape} and {answer.shape}")
    graphdef, params = nnx.split(model)
    warm = max(1, steps // 5)
    schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, warm),
                                     optax.constant_schedule(lr),
                                     optax.linear_schedule(lr, 0.0, warm)],
                                    [warm, max(warm, steps - warm)])
    opt = optax.adamw(schedule, weight_decay=0.0)
    gates = jnp.ones((cfg.num_layers, cfg.num_kv_heads), jnp.float32)
    state = opt.init(gates)

    def loss_fn(gates, tok, ans):
        m = nnx.merge(graphdef, params)
        want = jax.lax.stop_gradient(_hidden(m, tok, jnp.ones_like(gates), sink, recent))
        got = _hidden(m, tok, gates, sink, recent)
        err = jnp.sum(((got - want) ** 2).mean(-1) * ans) / jnp.maximum(ans.sum(), 1)
        return err + l1 * jnp.abs(gates).mean()

    @jax.jit
    def step(gates, state, tok, ans):
        loss, grad = jax.value_and_grad(loss_fn)(gates, tok, ans)
        update, state = opt.update(grad, state, gates)
        return jnp.clip(optax.apply_updates(gates, update), 0.0, 1.0), state, loss

    losses = []
    for i in range(steps):
        row = i % tokens.shape[0]
        gates, state, loss = step(gates, state, tokens[row:row + 1], answer[row:row + 1])
        losses.append(float(loss))
    return np.asarray(gates), np.asarray(losses)
