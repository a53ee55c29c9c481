"""The model side of self-speculative decoding with register tokens: verify a block of ordinary
tokens on a copy of the caches while registers draft the next block, then commit the verified
tokens only.

Why verify on a copy and replay: a cache policy is a function of the exact sequence of
``append`` / ``observe`` calls (ring buffers overwrite their oldest token, H2O-style policies
evict by scores that every query updates, KIVI quantizes a group when its residual fills, SnapKV
fills a decode room). Undoing the writes of rejected drafts would need an inverse of each
policy; none exists in general. Instead, per layer, ``verify_block`` runs the policy's own
decode step (``Block.decode``: append, view, attend, observe) over the block's tokens in order
(``lax.scan``), on a copy of the layer's cache, so every block token sees exactly the cache a
plain decode step would; its states are then dropped. Once the last layer's logits say how many
drafts each row accepts, ``commit`` replays the same decode steps on the original caches for the
accepted tokens only, from the layer inputs ``verify_block`` recorded (identical inputs, so
identical states): every policy (dense, sliding window, StreamingLLM, H2O, SnapKV, quantized
storage, MLA) works unchanged, and no register ever enters a cache. The price: each block token
reads the cache once per layer in both passes (projections, MLPs and logits are batched over the
block); a policy whose chunked prefill equals its decode steps could verify a block in one
attention call instead (not done).

Registers anchored at block token ``j`` read the view that token's decode step left (the
anchor's own context) plus themselves (``registers.block_registers``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lcache.cache import layer_policies
from lcache.model.registers import block_registers, register_embeddings
from lcache.model.rope import apply_rope


def _view_context(block, state, policy):
    """The context a register anchored at the newest cached token reads: rotated keys, values,
    validity ``[B, H, 1, S]`` and the RoPE query offset ``[B]`` of ``policy.view(state)``."""
    full = policy.view(state)
    view = full.flat() if hasattr(full, "flat") else full  # segmented views: one flat frame
    keys = view.keys if view.keys_rotated else apply_rope(view.keys, view.rope_pos,
                                                          block.attn.inv_freq)
    return keys, view.values, view.valid[:, :, None, :], full.query_offset


def _time_major(x):  # [B, J, ...] -> [J, B, ...]
    return jnp.swapaxes(x, 0, 1)


def verify_block(model, tokens_BJ, pos_BJ, caches, policy, offsets: tuple[int, ...]):
    """Decode ``tokens [B, J]`` at text positions ``pos [B, J]`` on a copy of ``caches`` and
    draft with the registers of ``offsets`` anchored at every block token ->
    ``(logits [B, J, V], draft_logits [B, J, len(offsets), V], inputs)``: ``logits[:, j]``
    predicts the token after block token ``j``, ``draft_logits[:, j, i]`` the token at
    ``pos[:, j] + offsets[i]``; ``inputs`` (per layer ``[J, B, 1, dim]``) feed ``commit``.
    ``caches`` are left as they were."""
    k = model.cfg.num_sink_tokens
    policies = layer_policies(policy, model.cfg.num_layers)
    x = _time_major(model._embed(tokens_BJ))[:, :, None]  # [J, B, 1, dim]
    pos = _time_major(pos_BJ + k)  # [J, B]
    off = jnp.asarray(offsets, jnp.int32)
    r = register_embeddings(model, off, (x.shape[0], x.shape[1], len(offsets)))
    r_pos = pos[:, :, None] + off - 1  # [J, B, D]
    inputs = []
    for block, state, pol in zip(model.blocks, caches, policies, strict=True):
        inputs.append(x)

        def step(state, xs, block=block, pol=pol):
            x_j, pos_j, r_j, r_pos_j = xs
            y_j, state = block.decode(x_j, pos_j, state, pol)
            keys, values, valid, offset = _view_context(block, state, pol)
            r_j = block_registers(block, r_j, r_pos_j - offset[:, None], keys, values, valid)
            return state, (y_j, r_j)

        _, (x, r) = jax.lax.scan(step, state, (x, pos, r, r_pos))
    return (_time_major(model._logits(x)[:, :, 0]), _time_major(model._logits(r)), inputs)


def _select_rows(keep_B, new, old):
    """Per row of a cache pytree (batch axis first): ``new`` where ``keep``, else ``old``."""
    return jax.tree.map(
        lambda a, b: jnp.where(keep_B.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old)


def commit(model, inputs, pos_BJ, caches, policy, keep_BJ):
    """Replay ``verify_block``'s decode steps on ``caches`` for the block tokens ``keep [B, J]``
    marks (a prefix per row) -> the caches holding exactly the verified tokens."""
    policies = layer_policies(policy, model.cfg.num_layers)
    pos = _time_major(pos_BJ + model.cfg.num_sink_tokens)
    new = []
    for block, state, pol, x in zip(model.blocks, caches, policies, inputs, strict=True):

        def step(state, xs, block=block, pol=pol):
            x_j, pos_j, keep_j = xs
            return _select_rows(keep_j, block.decode(x_j, pos_j, state, pol)[1], state), None

        new.append(jax.lax.scan(step, state, (x, pos, _time_major(keep_BJ)))[0])
    return new
