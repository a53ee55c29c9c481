"""Batch sources for training: the text corpus, optional RULER-style task rows, Bigram-Backcopy.

Each source is a pure function ``step -> (tokens [B, T+1] int32, weights [B, T] float32)`` so a
resumed run replays the same batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np

from lcache.data import (
    BigramBackcopy,
    TrainStream,
    eval_batches,
    list_files,
    load_tokens,
    make_tokenizer,
    split_files,
)
from lcache.data.ruler import TASKS, training_rows


@dataclasses.dataclass
class Corpus:
    """Tokenized train / held-out text and the tokenizer that made it."""

    tokenizer: object
    train: np.ndarray
    heldout: np.ndarray


def load_corpus(path: str | None, tokenizer_kind: str = "byte", bpe_vocab: int = 1024,
                max_bytes: int | None = None, heldout_fraction: float = 0.05,
                cache_dir: str | None = None, tokenizer_dir: str | None = None) -> Corpus:
    """``path`` None = the interpreter's own Python sources. A BPE tokenizer is trained on the
    training files (or loaded from ``tokenizer_dir``)."""
    train_files, heldout_files = split_files(list_files(path), heldout_fraction)
    if tokenizer_kind == "bpe":
        if tokenizer_dir:
            tok = make_tokenizer("bpe", path=tokenizer_dir)
        else:
            tok = make_tokenizer("bpe", texts_or_files=train_files[:2000], vocab_size=bpe_vocab)
    else:
        tok = make_tokenizer(tokenizer_kind)
    train = load_tokens(train_files, tok, max_bytes=max_bytes, cache_dir=cache_dir)
    heldout = load_tokens(heldout_files, tok, max_bytes=max_bytes, cache_dir=cache_dir)
    return Corpus(tok, train, heldout)


def corpus_source(corpus: Corpus, batch: int, seq_len: int, seed: int, task_rows: int = 0,
                  tasks=TASKS, answer_weight: float = 1.0
                  ) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    """Random corpus windows with BOS on every row; the last ``task_rows`` rows of each batch
    are synthetic retrieval examples (``lcache.data.ruler``: ``tasks``, needles hidden in the
    training text, loss on every token, ``answer_weight`` on the answers) so the model learns
    to retrieve."""
    if not 0 <= task_rows < batch:
        raise ValueError(f"task_rows={task_rows} must be in [0, batch={batch})")
    unknown = sorted(set(tasks) - set(TASKS))
    if task_rows and (not tasks or unknown):
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tuple(tasks)}")
    tok = corpus.tokenizer
    stream = TrainStream(corpus.train, batch - task_rows, seq_len, tok.bos_id, seed)

    def source(step: int):
        tokens = stream.batch_at(step)
        weights = np.ones((tokens.shape[0], seq_len), np.float32)
        if task_rows:
            rng = np.random.default_rng([seed, step, 1])
            rows, row_w = training_rows(tok, corpus.train, task_rows, seq_len, rng, tuple(tasks),
                                         answer_weight=answer_weight)
            tokens, weights = np.concatenate([tokens, rows]), np.concatenate([weights, row_w])
        return tokens, weights

    return source


def heldout_batches(corpus: Corpus, batch: int, seq_len: int, max_batches: int
                    ) -> Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]:
    def batches():
        for tokens in eval_batches(corpus.heldout, batch, seq_len, corpus.tokenizer.bos_id,
                                   max_batches):
            yield tokens, np.ones((tokens.shape[0], seq_len), np.float32)

    return batches


def backcopy_source(task: BigramBackcopy, batch: int, seq_len: int, seed: int):
    """Fresh Bigram-Backcopy sequences every step (a fixed set gets memorised)."""

    def source(step: int):
        tokens = task.sample(np.random.default_rng([seed, step]), batch, seq_len + 1)
        return tokens, np.ones((batch, seq_len), np.float32)

    return source


def backcopy_heldout(task: BigramBackcopy, batch: int, seq_len: int, max_batches: int):
    def batches():
        rng = np.random.default_rng(10**9)  # a fixed held-out set, disjoint seeds from training
        for _ in range(max_batches):
            yield task.sample(rng, batch, seq_len + 1), np.ones((batch, seq_len), np.float32)

    return batches
