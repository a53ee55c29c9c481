"""Bigram-Backcopy synthetic task (Guo et al. 2024, "Active-Dormant Attention Heads").

Sequences x_0..x_{T-1}: x_0 = BOS, x_1 from a fixed start distribution over non-trigger tokens,
then for t >= 2: if x_{t-1} is a trigger token, x_t = x_{t-2} (back-copy, exactly predictable);
otherwise x_t ~ bigram(x_{t-1}). A model trained on it grows an attention sink on BOS: heads
that do the back-copy are "dormant" (attend to BOS) whenever x_{t-1} is not a trigger.

Ids: 0..vocab_size-1 are ordinary tokens, BOS = vocab_size, so the model needs
`model_vocab_size = vocab_size + 1` embeddings. The bigram table and the triggers are fixed by
`seed`; sequences are fresh for every `sample` call, since a fixed set would be memorised.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class _Tables:
    """Sampling tables, V = vocab_size, k = num_successors.

    successors int64 [V, k], successor_cdf float64 [V, k]: the sparse bigram rows.
    start_cdf float64 [V]: distribution of x_1; last_start_id: its largest id of nonzero mass.
    is_trigger bool [V + 1]: indexed by any id, BOS included (never a trigger).
    trigger_ids int32 [num_triggers], sorted.
    """

    successors: np.ndarray
    successor_cdf: np.ndarray
    start_cdf: np.ndarray
    last_start_id: int
    is_trigger: np.ndarray
    trigger_ids: np.ndarray


@dataclass(frozen=True)
class BigramBackcopy:
    """The task's fixed distribution.

    vocab_size: ordinary tokens (ids 0..vocab_size-1).
    num_triggers: how many of them are triggers (chosen at random with `seed`).
    seed: fixes the bigram table, start distribution and triggers.
    num_successors: each bigram row puts Dirichlet(1) weights on this many random next tokens
      (sparse rows make the non-trigger positions learnable, as in natural-text bigrams).
    """

    vocab_size: int
    num_triggers: int = 3
    seed: int = 0
    num_successors: int = 4

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size={self.vocab_size} must be >= 2")
        if not 0 <= self.num_triggers <= self.vocab_size - 1:
            raise ValueError(
                f"num_triggers={self.num_triggers} must be in [0, vocab_size - 1 = "
                f"{self.vocab_size - 1}] (the start distribution needs a non-trigger token)"
            )
        if not 1 <= self.num_successors <= self.vocab_size:
            raise ValueError(
                f"num_successors={self.num_successors} must be in [1, {self.vocab_size}]"
            )
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")

    @property
    def bos_id(self) -> int:
        return self.vocab_size

    @property
    def model_vocab_size(self) -> int:
        """Embedding rows a model needs: the ordinary tokens plus BOS."""
        return self.vocab_size + 1

    @cached_property
    def _tables(self) -> _Tables:
        rng = np.random.default_rng([self.seed, 0xB16A])
        v, k = self.vocab_size, self.num_successors
        successors = np.stack([rng.choice(v, size=k, replace=False) for _ in range(v)])
        weights = rng.dirichlet(np.ones(k), size=v)
        triggers = np.sort(rng.choice(v, size=self.num_triggers, replace=False)).astype(np.int32)
        is_trigger = np.zeros(v + 1, dtype=bool)
        is_trigger[triggers] = True
        # x_1 must not be a trigger: x_2 would then copy x_0 = BOS. With x_1 a non-trigger, two
        # triggers can never be adjacent (a copy after a trigger repeats x_{t-2}, a non-trigger
        # by induction), so back-copies never chain.
        start = rng.dirichlet(np.ones(v)) * ~is_trigger[:v]
        return _Tables(
            successors=successors,
            successor_cdf=np.cumsum(weights, axis=1),
            start_cdf=np.cumsum(start / start.sum()),
            last_start_id=int(np.flatnonzero(start)[-1]),
            is_trigger=is_trigger,
            trigger_ids=triggers,
        )

    @property
    def trigger_ids(self) -> np.ndarray:
        """int32 [num_triggers], sorted."""
        return self._tables.trigger_ids.copy()

    @property
    def bigram_matrix(self) -> np.ndarray:
        """Dense transition probabilities float64 [vocab_size, vocab_size] (rows sum to 1)."""
        t = self._tables
        probs = np.diff(t.successor_cdf, axis=1, prepend=0.0)
        dense = np.zeros((self.vocab_size, self.vocab_size))
        np.put_along_axis(dense, t.successors, probs, axis=1)
        return dense

    def sample(self, rng: np.random.Generator, batch: int, seq_len: int) -> np.ndarray:
        """Fresh sequences -> int32 [batch, seq_len], column 0 = BOS."""
        if batch < 1:
            raise ValueError(f"batch={batch} must be >= 1")
        if seq_len < 1:
            raise ValueError(f"seq_len={seq_len} must be >= 1")
        t = self._tables
        out = np.empty((batch, seq_len), dtype=np.int32)
        out[:, 0] = self.bos_id
        if seq_len > 1:
            first = np.searchsorted(t.start_cdf, rng.random(batch), side="right")
            # u can exceed a float cdf that ends just below 1; fall back to the last allowed id.
            out[:, 1] = np.minimum(first, t.last_start_id)
        last = self.num_successors - 1  # clip: float cdf may end just below 1
        for pos in range(2, seq_len):
            prev = out[:, pos - 1]
            u = rng.random(batch)
            choice = np.minimum((t.successor_cdf[prev] <= u[:, None]).sum(axis=1), last)
            bigram_next = t.successors[prev, choice]
            out[:, pos] = np.where(t.is_trigger[prev], out[:, pos - 2], bigram_next)
        return out

    def backcopy_positions(self, tokens: np.ndarray) -> np.ndarray:
        """bool [B, T]: True at t where tokens[:, t] is a back-copy (tokens[:, t - 1] a trigger).

        For next-token loss on inputs tokens[:, :-1] and targets tokens[:, 1:], the mask of the
        targets is `backcopy_positions(tokens)[:, 1:]`.
        """
        tokens = np.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, seq_len], got shape {tokens.shape}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.model_vocab_size):
            raise ValueError(
                f"token ids span [{tokens.min()}, {tokens.max()}], outside "
                f"[0, {self.model_vocab_size})"
            )
        mask = np.zeros(tokens.shape, dtype=bool)
        mask[:, 1:] = self._tables.is_trigger[tokens[:, :-1]]
        return mask
