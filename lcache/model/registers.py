"""Register tokens: MuToR-style multi-token prediction (Gerontopoulos et al., arXiv 2505.10518).

A register with offset ``d`` (one learned embedding per ``d = 1..D``, ``register_depth = D``)
follows an ordinary token, its *anchor* at text position ``a``, and predicts the token at
``a + d``. Its RoPE position is ``a + d - 1``, the position of the token before its target, so
attention sees how far ahead it looks. Masks: ordinary tokens never attend to registers (their
logits are the plain model's, so registers can be dropped at inference); a register attends to
the ordinary tokens up to and including its anchor and to itself, never to another register.

Layout: the order of tokens is irrelevant under an explicit mask, so the ``R`` registers of a
training sequence sit *after* its ``T`` ordinary tokens (``[ordinary | registers]``) rather than
interleaved; the ordinary rows then run the plain causal attention (cuDNN flash attention where
it applies) and only the ``R`` register rows need the explicit ``R x (T + R)`` mask (XLA).
Anchors are every ``every``-th token; offsets cycle ``1, 2, .., D`` over the anchors, so every
offset is trained at the same rate (``every = 1``, ``D = 1``: one register per token).

At inference (``model/speculative.py``) registers anchored at the newest token read the cache
view its decode step saw, plus themselves; they are never written to a cache.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from lcache.model.mla import MLAttention
from lcache.model.rope import apply_rope


def register_layout(seq_len: int, every: int, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Registers of a training sequence of ``seq_len`` inputs (``seq_len + 1`` tokens with the
    last target) -> ``anchors [R]`` (text index of the token each follows) and ``offsets [R]``
    (``d``; the target ``a + d`` must exist, ``a + d <= seq_len``), int32 numpy."""
    if every < 1 or depth < 1:
        raise ValueError(f"register layout needs every >= 1 and depth >= 1, got {every}, "
                         f"{depth}")
    anchors = np.arange(every - 1, seq_len, every, dtype=np.int32)
    offsets = (1 + np.arange(len(anchors)) % depth).astype(np.int32)
    keep = anchors + offsets <= seq_len
    return anchors[keep], offsets[keep]


def register_positions(anchors_R, offsets_R):
    """RoPE text positions of registers: the position of the token before their target."""
    return anchors_R + offsets_R - 1


def context_mask(anchors_R, num_keys: int, num_prefix: int = 0) -> np.ndarray:
    """``[R, S]`` bool: register ``r`` sees ordinary key ``s`` (``num_prefix`` sink tokens first,
    then text) iff ``s <= num_prefix + anchors[r]``."""
    return np.arange(num_keys)[None, :] <= num_prefix + np.asarray(anchors_R)[:, None]


def full_mask(seq_len: int, anchors_R, num_prefix: int = 0) -> np.ndarray:
    """The ``[S + R, S + R]`` mask the training forward realises over ``[ordinary | registers]``
    (``S = num_prefix + seq_len``): causal among ordinary tokens, no ordinary -> register,
    registers -> ``context_mask`` and themselves."""
    s, r = num_prefix + seq_len, len(anchors_R)
    top = np.concatenate([np.tril(np.ones((s, s), bool)), np.zeros((s, r), bool)], 1)
    bottom = np.concatenate([context_mask(anchors_R, s, num_prefix), np.eye(r, dtype=bool)], 1)
    return np.concatenate([top, bottom], 0)


# -- attention of registers over a context --------------------------------------------------------
def rotated_context(attn, x_BTD, pos_BT):
    """Keys (rotated at ``pos [B, T]``) and values of ordinary tokens in ``attn``'s cache format:
    ``[B, Hkv, T, D]`` each, or MLA's shared RoPE key ``[B, 1, T, dr]`` and latent
    ``[B, 1, T, dc]``."""
    if isinstance(attn, MLAttention):
        _, _, c, k_r = attn._project(x_BTD)
        return apply_rope(k_r, pos_BT[:, None], attn.inv_freq), c
    _, k, v = attn._qkv(x_BTD)
    return apply_rope(k, pos_BT[:, None], attn.inv_freq), v


def attend_registers(attn, r_BRD, rope_pos_BR, keys_BHSD, values_BHSE, ctx_mask_BHRS):
    """Attention of registers ``r [B, R, dim]`` (normed layer input, RoPE positions
    ``[B, R]``) over context keys/values (rotated, ``rotated_context``'s format, ``H`` cache
    heads) where ``ctx_mask [B, H or 1, R or 1, S]`` allows, and over themselves only -> the
    attention output ``[B, R, dim]``."""
    b, r = rope_pos_BR.shape
    heads, s = ctx_mask_BHRS.shape[1], ctx_mask_BHRS.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(r, dtype=bool), (b, heads, r, r))
    ctx = jnp.broadcast_to(ctx_mask_BHRS, (b, heads, r, s))
    mask = jnp.concatenate([ctx, eye], axis=-1)[:, :, None]  # [B, H, 1, R, S+R]
    if isinstance(attn, MLAttention):
        q_n, q_r, c, k_r = attn._project(r_BRD)
        q_r, k_r = (apply_rope(a, rope_pos_BR[:, None], attn.inv_freq) for a in (q_r, k_r))
        keys = jnp.concatenate([keys_BHSD.astype(k_r.dtype), k_r], axis=2)
        latent = jnp.concatenate([values_BHSE.astype(c.dtype), c], axis=2)
        out, _ = attn._attend(q_n, q_r, keys, latent, mask, attn.cfg.mla_impl)
        return attn._output(out)
    q, k, v = attn._qkv(r_BRD)
    q, k = (apply_rope(a, rope_pos_BR[:, None], attn.inv_freq) for a in (q, k))
    reps = keys_BHSD.shape[1] // k.shape[1]  # per-query-head caches store repeated KV
    k, v = jnp.repeat(k, reps, axis=1), jnp.repeat(v, reps, axis=1)
    keys = jnp.concatenate([keys_BHSD.astype(k.dtype), k], axis=2)
    values = jnp.concatenate([values_BHSE.astype(v.dtype), v], axis=2)
    out, _ = attn._attend(q, keys, values, mask)
    return attn._output(r_BRD, out)


def block_registers(block, r_BRD, rope_pos_BR, keys, values, ctx_mask_BHRS):
    """One decoder block for registers ``r [B, R, dim]`` over a context (see
    ``attend_registers``) -> ``[B, R, dim]``."""
    r = r_BRD + attend_registers(block.attn, block.attn_norm(r_BRD), rope_pos_BR, keys, values,
                                 ctx_mask_BHRS)
    return r + block.mlp(block.mlp_norm(r))


def register_embeddings(model, offsets, shape):
    """Embeddings of registers of ``offsets`` (int array), broadcast to ``shape + (dim,)`` in the
    compute dtype."""
    emb = model.register_embed[...][jnp.asarray(offsets) - 1]
    return jnp.broadcast_to(emb, tuple(shape) + emb.shape[-1:]).astype(
        jnp.dtype(model.cfg.compute_dtype))


def register_forward(model, tokens_BT, anchors_R, offsets_R):
    """Training forward with registers: ``tokens [B, T]`` and a ``register_layout`` ->
    ``logits [B, T, V]`` of the ordinary tokens (the plain model's) and ``[B, R, V]`` of the
    registers, float32."""
    if not model.cfg.register_depth:
        raise ValueError("register_forward needs a model with register_depth >= 1")
    k = model.cfg.num_sink_tokens
    x = model._with_sinks(model._embed(tokens_BT))
    b, s = x.shape[:2]
    pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    r = register_embeddings(model, offsets_R, (b, len(offsets_R)))
    r_pos = jnp.broadcast_to(jnp.asarray(register_positions(anchors_R, offsets_R) + k),
                             r.shape[:2])
    ctx_mask = jnp.asarray(context_mask(anchors_R, s, k))[None, None]
    for block in model.blocks:
        keys, values = rotated_context(block.attn, block.attn_norm(x), pos)
        r = block_registers(block, r, r_pos, keys, values, ctx_mask)
        x = block(x, pos)
    return model._logits(x)[:, k:], model._logits(r)
