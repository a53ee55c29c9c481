"""Batches of token windows for language-model training and evaluation.

Layout of every batch: int32 [b, seq_len + 1] whose column 0 is BOS and columns 1.. are seq_len
consecutive corpus tokens, so `inputs = out[:, :-1]` and `targets = out[:, 1:]`. BOS starts every
sample because attention sinks form on the first position; a fixed first token keeps that
position the same across samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np


def _check_tokens(tokens: np.ndarray, seq_len: int) -> None:
    if not isinstance(tokens, np.ndarray) or tokens.ndim != 1:
        shape = getattr(tokens, "shape", None)
        raise ValueError(f"tokens must be a 1-D numpy array, got shape {shape}")
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be >= 1")
    if tokens.size < seq_len:
        raise ValueError(f"corpus has {tokens.size} tokens, fewer than seq_len={seq_len}")


def _with_bos(windows: np.ndarray, bos_id: int) -> np.ndarray:
    """[b, seq_len] windows -> int32 [b, seq_len + 1] with BOS in column 0."""
    out = np.empty((windows.shape[0], windows.shape[1] + 1), dtype=np.int32)
    out[:, 0] = bos_id
    out[:, 1:] = windows
    return out


def sample_batch(
    tokens: np.ndarray, batch: int, seq_len: int, rng: np.random.Generator, bos_id: int
) -> np.ndarray:
    """Random windows -> int32 [batch, seq_len + 1]: BOS, then seq_len consecutive tokens.

    Window starts are uniform over [0, len(tokens) - seq_len], drawn independently.
    """
    if batch < 1:
        raise ValueError(f"batch={batch} must be >= 1")
    _check_tokens(tokens, seq_len)
    starts = rng.integers(0, tokens.size - seq_len + 1, size=batch)
    windows = tokens[starts[:, None] + np.arange(seq_len)[None, :]]
    return _with_bos(windows, bos_id)


def eval_batches(
    tokens: np.ndarray,
    batch: int,
    seq_len: int,
    bos_id: int,
    max_batches: int | None = None,
) -> Iterator[np.ndarray]:
    """Non-overlapping windows in order -> int32 [b, seq_len + 1] each, b <= batch.

    Window i covers tokens[i * seq_len : (i + 1) * seq_len]; a trailing partial window is dropped,
    so every token is scored at most once. Only the last batch may have b < batch.
    """
    if batch < 1:
        raise ValueError(f"batch={batch} must be >= 1")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches={max_batches} must be >= 1 or None")
    _check_tokens(tokens, seq_len)
    num_windows = tokens.size // seq_len
    windows = tokens[: num_windows * seq_len].reshape(num_windows, seq_len)
    num_batches = -(-num_windows // batch)
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    for i in range(num_batches):
        yield _with_bos(windows[i * batch : (i + 1) * batch], bos_id)


@dataclass
class TrainStream:
    """Resumable stream of training batches: the batch of a step depends only on (seed, step).

    `batch_at(step)` uses `np.random.default_rng([seed, step])`, so restarting from a checkpoint
    at step s with the same seed continues bit-identically. `next_batch()` returns the batch of
    `step` and advances `step`; save `step` in the checkpoint.
    """

    tokens: np.ndarray = field(repr=False)
    batch: int
    seq_len: int
    bos_id: int
    seed: int = 0
    step: int = 0

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch={self.batch} must be >= 1")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")
        if self.step < 0:
            raise ValueError(f"step={self.step} must be >= 0")
        _check_tokens(self.tokens, self.seq_len)

    def batch_at(self, step: int) -> np.ndarray:
        """The batch of `step` -> int32 [batch, seq_len + 1]; does not change `self.step`."""
        if step < 0:
            raise ValueError(f"step={step} must be >= 0")
        rng = np.random.default_rng([self.seed, step])
        return sample_batch(self.tokens, self.batch, self.seq_len, rng, self.bos_id)

    def next_batch(self) -> np.ndarray:
        """The batch of the current step; then step += 1."""
        out = self.batch_at(self.step)
        self.step += 1
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield self.next_batch()
