"""Token sampling: greedy, temperature, top-k and top-p (nucleus), as one pure function."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lcache.cache import validate as v


@dataclasses.dataclass(frozen=True)
class Sampling:
    """``temperature == 0`` is greedy. ``top_k == 0`` and ``top_p == 1`` disable those filters.
    ``eos_id`` (or None) stops a row; ``max_new_tokens`` bounds every row. Every field is checked
    here (types, ranges, finite numbers); ``generate`` checks ``top_k`` and ``eos_id`` against
    the model's vocabulary."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    eos_id: int | None = None

    def __post_init__(self):
        v.check_fields(self, max_new_tokens=v.integer(1), temperature=v.real(0),
                       top_k=v.integer(0), top_p=v.real(0, 1, lo_open=True),
                       eos_id=v.optional(v.integer(0)))

    def check_vocab(self, vocab_size: int) -> None:
        """Raise if ``top_k`` or ``eos_id`` do not fit a vocabulary of ``vocab_size``."""
        if self.top_k > vocab_size:
            raise ValueError(f"Sampling.top_k={self.top_k} exceeds the vocabulary of "
                             f"{vocab_size} tokens")
        if self.eos_id is not None and self.eos_id >= vocab_size:
            raise ValueError(f"Sampling.eos_id={self.eos_id} is outside the vocabulary "
                             f"[0, {vocab_size}): no row would ever stop on it")


def sample_logits(logits_BV, rng, s: Sampling):
    """Draw one token per row from ``logits [B, V]`` (float32) -> ``[B]`` int32."""
    s.check_vocab(logits_BV.shape[-1])  # static: checked while tracing
    if s.temperature == 0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, sampling_logits(logits_BV, s), axis=-1).astype(jnp.int32)


def sampling_logits(logits_BV, s: Sampling):
    """The logits ``[..., V]`` float32 that sampling (``temperature > 0``) draws from: tempered,
    ``-inf`` outside the top-k and the nucleus (speculative decoding compares the
    distributions: ``softmax`` of these)."""
    logits = logits_BV.astype(jnp.float32) / s.temperature
    if s.top_k:
        kth = jax.lax.top_k(logits, s.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if s.top_p < 1:
        sorted_desc = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        before = jnp.cumsum(probs, axis=-1) - probs
        cutoff = jnp.min(jnp.where(before < s.top_p, sorted_desc, jnp.inf), axis=-1,
                         keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits
