"""Prompts as fixed-shape batches: right padding to one length, fixed micro-batches, and the
checks that must run on the host before any work (inside ``jit`` nothing can raise).

A program compiles once per shape, so prompts of any length share one program when they are
padded to the same ``pad_to`` and split into micro-batches of the same ``batch`` rows (the last
micro-batch is filled with copies of its last row, dropped from the results).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from lcache.cache import Dense, Policy, ScoredPolicy, layer_policies, reserve_decode_room
from lcache.sampling import Sampling


def pad_prompts(prompts: Sequence[Sequence[int]], multiple: int = 16, pad_id: int = 0,
                pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad prompts -> ``(tokens [N, T], lengths [N])`` int32, ``T = pad_to`` or the longest
    prompt rounded up to a multiple of ``multiple``."""
    if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence | np.ndarray):
        raise TypeError(f"prompts must be a sequence of token-id sequences, got "
                        f"{type(prompts).__name__}")
    if len(prompts) == 0 or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    for i, p in enumerate(prompts):
        ids = np.asarray(p)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"prompt {i} must be a flat sequence of integer token ids, got "
                            f"{ids.dtype.name} values of shape {ids.shape}")
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


def split_questions(prompts: Sequence[Sequence[int]], question_at: Sequence[int],
                    multiple: int = 16) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Prompts cut at ``question_at`` (one index per prompt, inside it) -> ``(contexts, questions
    [N, Q], question lengths [N])``: the questions right-padded to the longest rounded up to a
    multiple of ``multiple``."""
    if len(question_at) != len(prompts):
        raise ValueError(f"question_at needs one index per prompt: got {len(question_at)} for "
                         f"{len(prompts)} prompts")
    for i, (p, q) in enumerate(zip(prompts, question_at, strict=True)):
        if not 0 < int(q) < len(p):
            raise ValueError(f"question_at[{i}]={q} must lie inside prompt {i} (0 < question_at < "
                             f"{len(p)}): both the context and the question need a token")
    cuts = [(np.asarray(p), int(q)) for p, q in zip(prompts, question_at, strict=True)]
    questions, lengths = pad_prompts([p[q:] for p, q in cuts], multiple)
    return [p[:q] for p, q in cuts], questions, lengths


def check_tokens(tokens, vocab_size: int) -> None:
    """Raise ValueError naming the first token id outside ``[0, vocab_size)``."""
    tokens = np.asarray(tokens)
    bad = (tokens < 0) | (tokens >= vocab_size)
    if bad.any():
        raise ValueError(f"token id {tokens[bad][0]} outside the vocabulary [0, {vocab_size})")


def check_generation(cfg, policy, sampling: Sampling, forced: int = 0
                     ) -> tuple[Policy | tuple[Policy, ...], int]:
    """Raise unless ``policy`` gives one policy per layer of the model config ``cfg`` and
    ``sampling`` fits its vocabulary. -> ``(policy, new_tokens)``: the decode steps
    (``max_new_tokens``, or ``forced`` teacher-forced ones if more) and ``policy`` with its
    decode room (prefill-only scorers, ``SnapKV(decode_capacity=None)``) sized for them."""
    if not isinstance(sampling, Sampling):
        raise TypeError(f"sampling must be a Sampling (or None), got {type(sampling).__name__}")
    layer_policies(policy, cfg.num_layers)
    sampling.check_vocab(cfg.vocab_size)
    new_tokens = max(sampling.max_new_tokens, forced)
    return reserve_decode_room(policy, new_tokens), new_tokens


def check_fits(cfg, policy: Policy | Sequence[Policy], prompt_len: int, max_new: int) -> None:
    """Dense caches must hold the prompt, the new tokens and the model config ``cfg``'s sink
    tokens (checked up front: a token past a Dense capacity cannot raise inside ``jit``)."""
    need = prompt_len + max_new + cfg.num_sink_tokens
    for p in layer_policies(policy, cfg.num_layers):
        p = getattr(p, "inner", p)  # storage transforms (quantized) wrap a selection policy
        if isinstance(p, Dense) and p.capacity < need:
            raise ValueError(f"Dense(max_len={p.capacity}) cannot hold {prompt_len} prompt + "
                             f"{max_new} new + {cfg.num_sink_tokens} sink tokens = {need}")


def row_surplus(policy, budgets: Sequence[int], num_rows: int) -> np.ndarray:
    """Budget as data: ``[N]`` int32 slots each row leaves unused so that row ``i`` keeps
    ``budgets[i]`` tokens under ``policy``, one score-based policy (H2O, SnapKV, TOVA, ...)
    built for the largest budget; its protected window stays, the rest shrinks."""
    if not isinstance(policy, ScoredPolicy):
        raise ValueError(f"budgets as data need one score-based policy (ScoredPolicy: H2O, "
                         f"SnapKV, TOVA, KeyNorm, Random, ValueAware), got {policy!r:.200}")
    budgets = np.asarray(budgets)
    if budgets.shape != (num_rows,) or not np.issubdtype(budgets.dtype, np.integer):
        raise ValueError(f"budgets must be {num_rows} integers, one per prompt, got "
                         f"{budgets.dtype.name} values of shape {budgets.shape}")
    full = getattr(policy, "budget", policy.capacity)
    least = max(policy.recent_protected(), 1)
    bad = budgets[(budgets < least) | (budgets > full)]
    if bad.size:
        raise ValueError(f"budget {bad[0]} outside [{least}, {full}]: {policy!r:.120} holds at "
                         f"most {full} tokens and protects its {least} newest")
    return (full - budgets).astype(np.int32)


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
