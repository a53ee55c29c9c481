"""Prefill + decode under one ``jit``: batched prompts of different lengths, any cache policy.

The decode loop is a ``lax.while_loop`` inside the compiled function, so generating N tokens
compiles once per (policy, sampling, padded prompt shape) and never per step.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lcache.cache import Dense, Policy
from lcache.sampling import Sampling, sample_logits


def pad_prompts(prompts: Sequence[Sequence[int]], multiple: int = 16,
                pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad prompts to a multiple of ``multiple`` -> ``(tokens [B, T], lengths [B])``."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    lengths = np.array([len(p) for p in prompts], np.int32)
    t = int(-(-lengths.max() // multiple) * multiple)
    tokens = np.full((len(prompts), t), pad_id, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    return tokens, lengths


def check_fits(model, policy, prompt_len: int, max_new: int) -> None:
    """Dense caches must hold the prompt, the new tokens and any sink tokens (checked up front,
    since a token past a Dense capacity cannot raise inside ``jit``)."""
    policies = (policy,) if isinstance(policy, Policy) else tuple(policy)
    need = prompt_len + max_new + model.cfg.num_sink_tokens
    for p in policies:
        p = getattr(p, "inner", p)  # storage transforms (quantized) wrap a selection policy
        if isinstance(p, Dense) and p.capacity < need:
            raise ValueError(f"Dense(max_len={p.capacity}) cannot hold {prompt_len} prompt + "
                             f"{max_new} new + {model.cfg.num_sink_tokens} sink tokens = {need}")


@functools.partial(jax.jit, static_argnames=("graphdef", "policy", "sampling"))
def _generate(graphdef, params, tokens_BT, lengths_B, rng, *, policy, sampling: Sampling):
    model = nnx.merge(graphdef, params)
    b, t = tokens_BT.shape
    steps = jnp.arange(t, dtype=jnp.int32)
    pos = jnp.where(steps[None] < lengths_B[:, None], steps[None], -1)
    caches = model.init_cache(policy, b)
    logits, caches = model.prefill(tokens_BT, pos, caches, policy)
    last = jnp.take_along_axis(logits, (lengths_B - 1)[:, None, None], axis=1)[:, 0]
    rng, sub = jax.random.split(rng)
    first = sample_logits(last, sub, sampling)
    n = sampling.max_new_tokens
    out = jnp.zeros((b, n), jnp.int32).at[:, 0].set(first)
    eos = -1 if sampling.eos_id is None else sampling.eos_id
    done = first == eos

    def cond(carry):
        i, _, _, done, _, _ = carry
        return (i < n) & ~jnp.all(done)

    def body(carry):
        i, tok, caches, done, out, rng = carry
        logits, caches = model.decode(tok, lengths_B + i - 1, caches, policy)
        rng, sub = jax.random.split(rng)
        nxt = jnp.where(done, eos, sample_logits(logits, sub, sampling))
        return i + 1, nxt, caches, done | (nxt == eos), out.at[:, i].set(nxt), rng

    carry = (jnp.int32(1), first, caches, done, out, rng)
    _, _, _, _, out, _ = jax.lax.while_loop(cond, body, carry)
    return out


def generate(model, prompts: Sequence[Sequence[int]], policy: Policy | Sequence[Policy],
             sampling: Sampling | None = None, seed: int = 0, pad_multiple: int = 16
             ) -> list[np.ndarray]:
    """Generate continuations of token-id prompts -> one int32 array per prompt.

    A row stops after its ``sampling.eos_id`` (included) or ``max_new_tokens``
    (``sampling=None``: greedy, 32 tokens).
    """
    sampling = sampling or Sampling()
    tokens, lengths = pad_prompts(prompts, pad_multiple)
    vocab = model.cfg.vocab_size
    if tokens.min() < 0 or tokens.max() >= vocab:
        bad = tokens[(tokens < 0) | (tokens >= vocab)][0]
        raise ValueError(f"token id {bad} outside the vocabulary [0, {vocab})")
    check_fits(model, policy, tokens.shape[1], sampling.max_new_tokens)
    graphdef, params = nnx.split(model)
    out = np.asarray(_generate(graphdef, params, jnp.asarray(tokens), jnp.asarray(lengths),
                               jax.random.key(seed), policy=policy, sampling=sampling))
    result = []
    for row in out:
        if sampling.eos_id is not None and (row == sampling.eos_id).any():
            row = row[: int(np.argmax(row == sampling.eos_id)) + 1]
        result.append(row)
    return result
