"""The model side of self-speculative decoding with register tokens: verify a block of ordinary
tokens on a copy of the caches while registers draft the next block, then commit the verified
tokens only.

Why verify on a copy and write the verified tokens only: a cache policy is a function of the
exact sequence of writes and attention feedback it gets (ring buffers overwrite their oldest
token, H2O-style policies evict by scores that every query updates, KIVI quantizes a group when
its residual fills, SnapKV fills a decode room). Undoing the writes of rejected drafts would
need an inverse of each policy; none exists in general. So ``verify_block`` runs each layer's
block on a copy of its cache and drops the resulting state; once the last layer's logits say how
many drafts each row accepts, ``commit`` writes the accepted block tokens into the original
caches from the layer inputs ``verify_block`` recorded (identical inputs, identical states).
Registers never enter a cache. Two ways to run a layer's block:

* ``'chunk'`` (``Dense`` and the sink/window rings, whose chunked prefill equals their decode
  steps): one ``Block.prefill`` call attends every block token over the cache view plus the
  block (causal, with the policy's ``visible``); ``commit`` is one more ``Block.prefill`` with
  the rejected tokens as padding (position ``-1``: never stored). The cache is read twice per
  pass whatever the block length: where the speed-up comes from.
* ``'steps'`` (every other policy: score-based, quantized storage, decode rooms, ...): the
  policy's own decode step (``Block.decode``: append, view, attend, observe) over the block's
  tokens in order (``lax.scan``), so each token sees exactly the cache a plain decode step
  would; ``commit`` replays those steps for the accepted tokens. Exact for any policy, but it
  reads the cache once per block token in both passes: no speed-up beyond the batched
  projections, MLPs and logits.

Registers anchored at block token ``j`` read the context that token attended (its cache view,
with the block's tokens up to ``j``) plus themselves (``registers.block_registers``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lcache.cache import Dense, SlidingWindow, StreamingLLM, layer_policies
from lcache.model.registers import block_registers, register_embeddings, rotated_context
from lcache.model.rope import apply_rope

CHUNK_EXACT = (Dense, SlidingWindow, StreamingLLM)  # chunked prefill == their decode steps


def block_mode(policies) -> str:
    """``'chunk'`` if every layer's policy is one of ``CHUNK_EXACT`` (exact types: a subclass
    may change what a chunk does), else ``'steps'``."""
    return "chunk" if all(type(p) in CHUNK_EXACT for p in policies) else "steps"


def _view(block, state, policy):
    """The flat view of ``policy.view(state)`` -> rotated keys ``[B, H, S, Dk]``, values,
    validity and key positions ``[B, H, S]``, and the RoPE query offset ``[B]``."""
    full = policy.view(state)
    view = full.flat() if hasattr(full, "flat") else full  # segmented views: one flat frame
    keys = view.keys if view.keys_rotated else apply_rope(view.keys, view.rope_pos,
                                                          block.attn.inv_freq)
    return keys, view.values, view.valid, view.key_pos, full.query_offset


def _chunk_layer(block, x_BJD, pos_BJ, r_BJRD, r_pos_BJR, state, policy):
    """A layer's block in one prefill call on a copy of ``state``; registers anchored at block
    token ``j`` see the view and block tokens ``<= j`` that token saw."""
    y, _ = block.prefill(x_BJD, pos_BJ, state, policy)
    keys, values, valid, key_pos, offset = _view(block, state, policy)
    k_blk, v_blk = rotated_context(block.attn, block.attn_norm(x_BJD), pos_BJ - offset[:, None])
    reps = keys.shape[1] // k_blk.shape[1]  # per-query-head caches store repeated KV
    keys = jnp.concatenate([keys, jnp.repeat(k_blk, reps, axis=1).astype(keys.dtype)], axis=2)
    values = jnp.concatenate([values, jnp.repeat(v_blk, reps, axis=1).astype(values.dtype)],
                             axis=2)
    b, j, r, d = r_BJRD.shape
    key_pos = jnp.concatenate([key_pos, jnp.broadcast_to(pos_BJ[:, None], (b,) + key_pos.shape[
        1:2] + (j,))], axis=2)[:, :, None]  # [B, H, 1, S+J]
    key_ok = jnp.concatenate([valid, jnp.ones(valid.shape[:2] + (j,), bool)], axis=2)[:, :, None]
    anchor = jnp.repeat(pos_BJ, r, axis=1)[:, None, :, None]  # [B, 1, J*R, 1]
    mask = key_ok & (key_pos <= anchor) & policy.visible(anchor, key_pos)
    rope = (r_pos_BJR - offset[:, None, None]).reshape(b, j * r)
    out = block_registers(block, r_BJRD.reshape(b, j * r, d), rope, keys, values, mask)
    return y, out.reshape(b, j, r, d)


def _steps_layer(block, x_BJD, pos_BJ, r_BJRD, r_pos_BJR, state, policy):
    """A layer's block as the policy's decode steps (``lax.scan``) on a copy of ``state``;
    registers anchored at each token see the view its step left."""

    def step(state, xs):
        x_j, pos_j, r_j, r_pos_j = xs
        y_j, state = block.decode(x_j[:, None], pos_j, state, policy)
        keys, values, valid, _, offset = _view(block, state, policy)
        r_j = block_registers(block, r_j, r_pos_j - offset[:, None], keys, values,
                              valid[:, :, None])
        return state, (y_j[:, 0], r_j)

    xs = tuple(jnp.swapaxes(a, 0, 1) for a in (x_BJD, pos_BJ, r_BJRD, r_pos_BJR))
    _, (y, r) = jax.lax.scan(step, state, xs)
    return jnp.swapaxes(y, 0, 1), jnp.swapaxes(r, 0, 1)


def verify_block(model, tokens_BJ, pos_BJ, caches, policy, offsets: tuple[int, ...]):
    """Decode ``tokens [B, J]`` at text positions ``pos [B, J]`` on copies of ``caches`` and
    draft with the registers of ``offsets`` anchored at every block token ->
    ``(logits [B, J, V], draft_logits [B, J, len(offsets), V], inputs)``: ``logits[:, j]``
    predicts the token after block token ``j``, ``draft_logits[:, j, i]`` the token at
    ``pos[:, j] + offsets[i]``; ``inputs`` (the layer inputs ``[B, J, dim]``) feed ``commit``.
    ``caches`` are left as they were."""
    policies = layer_policies(policy, model.cfg.num_layers)
    layer = _chunk_layer if block_mode(policies) == "chunk" else _steps_layer
    x = model._embed(tokens_BJ)
    pos = pos_BJ + model.cfg.num_sink_tokens
    off = jnp.asarray(offsets, jnp.int32)
    r = register_embeddings(model, off, tokens_BJ.shape + (len(offsets),))
    r_pos = pos[:, :, None] + off - 1  # [B, J, R]
    inputs = []
    for block, state, pol in zip(model.blocks, caches, policies, strict=True):
        inputs.append(x)
        x, r = layer(block, x, pos, r, r_pos, state, pol)
    return model._logits(x), model._logits(r), inputs


def _select_rows(keep_B, new, old):
    """Per row of a cache pytree (batch axis first): ``new`` where ``keep``, else ``old``."""
    return jax.tree.map(
        lambda a, b: jnp.where(keep_B.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old)


def commit(model, inputs, pos_BJ, caches, policy, keep_BJ):
    """Write the block tokens ``keep [B, J]`` marks (a prefix per row) into ``caches`` as
    ``verify_block`` computed them -> the caches holding exactly the verified tokens."""
    policies = layer_policies(policy, model.cfg.num_layers)
    pos = pos_BJ + model.cfg.num_sink_tokens
    chunk = block_mode(policies) == "chunk"
    new = []
    for block, state, pol, x in zip(model.blocks, caches, policies, inputs, strict=True):
        if chunk:
            new.append(block.prefill(x, jnp.where(keep_BJ, pos, -1), state, pol)[1])
            continue

        def step(state, xs, block=block, pol=pol):
            x_j, pos_j, keep_j = xs
            return _select_rows(keep_j, block.decode(x_j[:, None], pos_j, state, pol)[1],
                                state), None

        xs = tuple(jnp.swapaxes(a, 0, 1) for a in (x, pos, keep_BJ))
        new.append(jax.lax.scan(step, state, xs)[0])
    return new
