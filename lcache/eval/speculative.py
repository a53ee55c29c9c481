"""Self-speculative decoding with register tokens, as one compiled program of the engine.

Each pass of a ``lax.while_loop`` feeds a block of ``J = L + 1`` ordinary tokens per row: the
pending token (exact, already emitted, not yet cached) and ``L = draft_len`` drafts of the next
positions. ``model.speculative.verify_block`` decodes the block on a copy of the caches (every
policy sees exactly the steps plain decoding would take) while registers of offsets ``2..L+1``
anchored at every block token draft the ``L`` tokens after the token that follows their anchor
(offset 1 would draft the token the model's own logits give exactly). Then, per row:

* greedy: draft ``i`` is accepted while it equals the argmax after its predecessor; the first
  mismatch is replaced by that argmax (or, all accepted, the argmax after the last draft is
  added): the output is plain greedy decoding token for token;
* sampling: draft ``g ~ q`` is accepted with probability ``min(1, p(g) / q(g))`` (``p``, ``q``:
  the target's and the register's distributions after temperature, top-k and top-p); the first
  rejection is replaced by a draw from ``max(p - q, 0)`` renormalised (all accepted: from ``p``):
  the output distribution is the plain sampler's (Leviathan et al. 2023, Chen et al. 2023).

``n`` accepted drafts emit ``n + 1`` tokens; ``model.speculative.commit`` writes the ``n + 1``
verified block tokens into the caches (rejected drafts never reach them, registers never do);
the registers anchored at the last verified token give the next drafts. The first pass has
placeholder drafts (token 0, a point-mass ``q``: still a valid speculative step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lcache.cache import layer_policies
from lcache.eval.programs import _prompt_logits
from lcache.model.speculative import commit, verify_block
from lcache.sampling import Sampling, sample_logits, sampling_logits


def check_drafting(cfg, draft_len) -> None:
    """Raise unless the model config ``cfg`` has registers to draft ``draft_len`` tokens."""
    if not cfg.register_depth:
        raise ValueError("speculative decoding drafts with register tokens, and this model was "
                         "trained without them (register_depth=0); train one with "
                         "configs/train.py:<variant>,registers=D")
    if isinstance(draft_len, bool) or not isinstance(draft_len, int) or draft_len < 1:
        raise ValueError(f"draft_len must be an int >= 1, got {draft_len!r}")
    if draft_len + 1 > cfg.register_depth:
        raise ValueError(f"draft_len={draft_len} drafts tokens t+2..t+{draft_len + 1} (the model "
                         f"itself gives t+1) and needs register offsets up to {draft_len + 1}; "
                         f"this model was trained with register_depth={cfg.register_depth}: "
                         f"use draft_len <= {cfg.register_depth - 1}")


def _probs(logits_XV, sampling: Sampling):
    """The distributions ``[..., V]`` the sampler draws from ``logits [..., V]``."""
    return jax.nn.softmax(sampling_logits(logits_XV, sampling), axis=-1)


def _take(x_BJ, index_B):
    """``x[b, index[b]]`` for ``x [B, J, ...]``."""
    return jnp.take_along_axis(x_BJ, index_B.reshape((-1, 1) + (1,) * (x_BJ.ndim - 2)),
                               axis=1)[:, 0]


def _accept(logits_BJV, drafts_BL, q_BLV, rng, sampling: Sampling):
    """-> accepted drafts ``n [B]`` and the token that follows them ``[B]``."""
    b, length = drafts_BL.shape
    if sampling.temperature == 0:
        target = jnp.argmax(logits_BJV, axis=-1).astype(jnp.int32)  # [B, J]
        n = jnp.cumprod(drafts_BL == target[:, :length], axis=1).sum(axis=1)
        return n, _take(target, n)
    p = _probs(logits_BJV, sampling)
    u_rng, c_rng = jax.random.split(rng)
    p_g, q_g = (jnp.take_along_axis(a[:, :length], drafts_BL[..., None], -1)[..., 0]
                for a in (p, q_BLV))
    accepted = jax.random.uniform(u_rng, (b, length)) * q_g < p_g
    n = jnp.cumprod(accepted, axis=1).sum(axis=1)
    p_n = _take(p, n)
    q_n = _take(jnp.concatenate([q_BLV, jnp.zeros_like(q_BLV[:, :1])], axis=1), n)
    residual = jnp.maximum(p_n - q_n, 0.0)
    mass = residual.sum(axis=-1, keepdims=True)
    dist = jnp.where(mass > 0, residual / jnp.where(mass > 0, mass, 1.0), p_n)
    return n, jax.random.categorical(c_rng, jnp.log(dist), axis=-1).astype(jnp.int32)


def _draft(draft_logits_BLV, rng, sampling: Sampling):
    """Drafts ``[B, L]`` and their distributions ``q [B, L, V]`` (greedy: a placeholder)."""
    if sampling.temperature == 0:
        return (jnp.argmax(draft_logits_BLV, axis=-1).astype(jnp.int32),
                jnp.zeros(draft_logits_BLV.shape[:2] + (1,), jnp.float32))
    q = _probs(draft_logits_BLV, sampling)
    return jax.random.categorical(rng, jnp.log(q), axis=-1).astype(jnp.int32), q


def _after_eos(out_BN, eos: int):
    """Every token after a row's first ``eos`` becomes ``eos`` (as plain generation)."""
    seen = jnp.cumsum(out_BN == eos, axis=1) - (out_BN == eos)
    return jnp.where(seen > 0, eos, out_BN)


def generate_speculative(graphdef, params, tokens_BT, lengths_B, rng_bits, *, policy, sampling,
                         draft_len: int, cache_dtype):
    """Prefill right-padded prompts ``tokens [B, T]`` of ``lengths [B]``, then decode
    ``sampling.max_new_tokens`` per row speculatively with ``draft_len`` register drafts per
    pass -> ``tokens [B, max_new_tokens]`` int32 (``eos_id`` after a row's end),
    ``accepted [B, draft_len]`` (passes in which draft ``i`` was accepted, the first pass's
    placeholders not counted) and ``passes [B]`` (passes counted)."""
    model = nnx.merge(graphdef, params)
    policies = layer_policies(policy, model.cfg.num_layers)  # per-layer caches: see commit
    last, caches = _prompt_logits(model, tokens_BT, lengths_B, None, policies, cache_dtype, None)
    rng, sub = jax.random.split(jax.random.wrap_key_data(rng_bits))
    b, n_new, length = last.shape[0], sampling.max_new_tokens, draft_len
    j = jnp.arange(length + 1, dtype=jnp.int32)
    offsets = tuple(range(2, length + 2))
    eos = -1 if sampling.eos_id is None else sampling.eos_id
    first = sample_logits(last, sub, sampling)
    out = jnp.zeros((b, n_new + length + 1), jnp.int32).at[:, 0].set(first)
    drafts = jnp.zeros((b, length), jnp.int32)
    q = jax.nn.one_hot(drafts, last.shape[-1] if sampling.temperature else 1)

    def cond(carry):
        i, done = carry[0], carry[3]
        return (i < n_new) & ~jnp.all(done)

    def body(carry):
        i, count, pending, done, drafts, q, caches, out, accepted, passes, rng = carry
        rng, acc_rng, draft_rng = jax.random.split(rng, 3)
        block = jnp.concatenate([pending[:, None], drafts], axis=1)  # [B, J]
        pos = (lengths_B + count - 1)[:, None] + j
        logits, draft_logits, inputs = verify_block(model, block, pos, caches, policies,
                                                    offsets)
        n, nxt = _accept(logits, drafts, q, acc_rng, sampling)
        active = ~done
        keep = (j <= n[:, None]) & active[:, None]
        caches = commit(model, inputs, pos, caches, policies, keep)
        emitted = jnp.where(j == n[:, None], nxt[:, None],
                            jnp.concatenate([drafts, nxt[:, None]], axis=1))
        index = jnp.where(keep, count[:, None] + j, out.shape[1])
        out = out.at[jnp.arange(b)[:, None], index].set(emitted, mode="drop")
        counted = active & (i > 0)
        accepted = accepted + ((j[:-1] < n[:, None]) & counted[:, None])
        count = count + jnp.where(active, n + 1, 0)
        done = done | (count >= n_new) | jnp.any(keep & (emitted == eos), axis=1)
        drafts, q = _draft(_take(draft_logits, n), draft_rng, sampling)
        return (i + 1, count, jnp.where(active, nxt, pending), done, drafts, q, caches, out,
                accepted, passes + counted, rng)

    ones = jnp.ones((b,), jnp.int32)
    carry = (jnp.int32(0), ones, first, (first == eos) | (n_new == 1), drafts, q, caches, out,
             jnp.zeros((b, length), jnp.int32), jnp.zeros((b,), jnp.int32), rng)
    carry = jax.lax.while_loop(cond, body, carry)
    return _after_eos(carry[7][:, :n_new], eos), carry[8], carry[9]
