"""Prompts as fixed-shape batches: right padding to one length, fixed micro-batches, and the
checks that must run on the host before any work (inside ``jit`` nothing can raise).

A program compiles once per shape, so prompts of any length share one program when they are
padded to the same ``pad_to`` and split into micro-batches of the same ``batch`` rows (the last
micro-batch is filled with copies of its last row, dropped from the results).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from lcache.cache import Dense, Policy


def pad_prompts(prompts: Sequence[Sequence[int]], multiple: int = 16, pad_id: int = 0,
                pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad prompts -> ``(tokens [N, T], lengths [N])`` int32, ``T = pad_to`` or the longest
    prompt rounded up to a multiple of ``multiple``."""
    if len(prompts) == 0 or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if multiple < 1:
        raise ValueError(f"pad multiple must be >= 1, got {multiple}")
    lengths = np.array([len(p) for p in prompts], np.int32)
    if pad_to is None:
        t = int(-(-lengths.max() // multiple) * multiple)
    elif pad_to < lengths.max():
        raise ValueError(f"pad_to={pad_to} is shorter than the longest prompt "
                         f"({lengths.max()} tokens)")
    else:
        t = int(pad_to)
    tokens = np.full((len(prompts), t), pad_id, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    return tokens, lengths


def check_tokens(tokens, vocab_size: int) -> None:
    """Raise ValueError naming the first token id outside ``[0, vocab_size)``."""
    tokens = np.asarray(tokens)
    bad = (tokens < 0) | (tokens >= vocab_size)
    if bad.any():
        raise ValueError(f"token id {tokens[bad][0]} outside the vocabulary [0, {vocab_size})")


def check_fits(cfg, policy: Policy | Sequence[Policy], prompt_len: int, max_new: int) -> None:
    """Dense caches must hold the prompt, the new tokens and the model config ``cfg``'s sink
    tokens (checked up front: a token past a Dense capacity cannot raise inside ``jit``)."""
    policies = (policy,) if isinstance(policy, Policy) else tuple(policy)
    need = prompt_len + max_new + cfg.num_sink_tokens
    for p in policies:
        p = getattr(p, "inner", p)  # storage transforms (quantized) wrap a selection policy
        if isinstance(p, Dense) and p.capacity < need:
            raise ValueError(f"Dense(max_len={p.capacity}) cannot hold {prompt_len} prompt + "
                             f"{max_new} new + {cfg.num_sink_tokens} sink tokens = {need}")


def micro_batches(num_rows: int, batch: int | None) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive micro-batches of ``batch`` rows (None: one batch)."""
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    size = num_rows if batch is None else batch
    for start in range(0, num_rows, size):
        yield start, min(start + size, num_rows)


def fill_rows(x, rows: int) -> np.ndarray:
    """``x [n, ...]`` with its last row repeated up to ``rows`` rows (dummy rows that run like
    a real one and are dropped afterwards)."""
    x = np.asarray(x)
    return np.concatenate([x, np.repeat(x[-1:], rows - len(x), axis=0)])
