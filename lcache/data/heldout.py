"""Held-out text of the default corpus as evaluation streams and windows.

The held-out split is ``split_files(list_files(None))[1]`` (5% of the standard-library files,
chosen by a hash of their path: the same on every machine with the same Python version),
tokenized without touching the training files.
"""

from __future__ import annotations

import numpy as np

from lcache.data.corpus import list_files, load_tokens, split_files

_HELDOUT: dict[str, np.ndarray] = {}


def heldout_tokens(tokenizer) -> np.ndarray:
    """The held-out split of the default corpus -> int32 ``[M]``, cached per tokenizer
    fingerprint."""
    key = tokenizer.fingerprint
    if key not in _HELDOUT:
        _HELDOUT[key] = load_tokens(split_files(list_files(None))[1], tokenizer)
    return _HELDOUT[key]


def heldout_stream(tokenizer, num_tokens: int, offset: int = 0) -> np.ndarray:
    """BOS + ``num_tokens`` held-out tokens from ``offset`` -> int32 ``[num_tokens + 1]``."""
    if num_tokens < 1 or offset < 0:
        raise ValueError(f"need num_tokens >= 1 and offset >= 0, got {num_tokens}, {offset}")
    text = heldout_tokens(tokenizer)
    if offset + num_tokens > text.size:
        raise ValueError(f"a stream of {num_tokens} tokens from offset {offset} is longer than "
                         f"the held-out text ({text.size} tokens)")
    return np.concatenate([[tokenizer.bos_id], text[offset:offset + num_tokens]]).astype(np.int32)


def heldout_windows(tokenizer, num: int, length: int, offset: int = 0) -> np.ndarray:
    """``num`` consecutive held-out windows, each BOS + ``length - 1`` tokens -> ``[num, length]``
    (the training layout: sinks form on the BOS column)."""
    if num < 1 or length < 2:
        raise ValueError(f"need num >= 1 windows of length >= 2, got num={num}, length={length}")
    flat = heldout_stream(tokenizer, num * (length - 1), offset)[1:]
    out = np.full((num, length), tokenizer.bos_id, np.int32)
    out[:, 1:] = flat.reshape(num, length - 1)
    return out
