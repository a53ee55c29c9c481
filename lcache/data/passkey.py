"""Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention"): find a number hidden at a
chosen depth inside repetitive filler text.

Prompt text: "\\n".join([TASK, prefix_filler, info, suffix_filler, QUESTION]) where the filler is
the five GARBAGE sentences cycled, info = "The pass key is {k}. Remember it. {k} is the pass key."
The number of filler sentences is the largest whose prompt fits in context_len tokens (BOS
included); whole sentences instead of whole GARBAGE repetitions give a finer fit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from lcache.data.tokenizer import Tokenizer

TASK = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
    "them. I will quiz you about the important information there."
)
GARBAGE = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
)
QUESTION = "What is the pass key? The pass key is"
MAX_KEY = 50000  # keys are drawn from [1, MAX_KEY]: at most 5 digits

_GARBAGE_SENTENCES = tuple(s if s.endswith(".") else s + "." for s in GARBAGE.split(". "))


def info_sentence(key: int) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key."


@dataclass(frozen=True)
class PasskeyExample:
    """One passkey prompt.

    prompt_ids: int32 [T], BOS first, T <= context_len; ends with QUESTION (no answer).
    prompt_text: the prompt as text (without BOS).
    answer: str(key), what the model should generate next (after a space).
    key: the pass key.
    depth: the requested depth in [0, 1].
    info_span: (start, stop) token indices of the info sentence in prompt_ids.
    info_depth: achieved depth: filler tokens before the info / all filler tokens (approximate,
      counts the newlines around the filler).
    """

    prompt_ids: np.ndarray
    prompt_text: str
    answer: str
    key: int
    depth: float
    info_span: tuple[int, int]
    info_depth: float


def _filler_parts(num_sentences: int, depth: float) -> tuple[str, str]:
    """Filler of num_sentences sentences split at a sentence boundary nearest to depth (chars)."""
    sentences = [_GARBAGE_SENTENCES[i % len(_GARBAGE_SENTENCES)] for i in range(num_sentences)]
    # starts[j] = char offset of sentence j in " ".join(sentences); starts[-1] = total length.
    lengths = np.array([len(s) + 1 for s in sentences], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    starts[-1] -= 1 if num_sentences else 0  # no space after the last sentence
    split = int(np.argmin(np.abs(starts - depth * starts[-1])))
    return " ".join(sentences[:split]), " ".join(sentences[split:])


def _prompt_text(num_sentences: int, depth: float, key: int) -> tuple[str, str, str]:
    """-> (prompt text, text before the info, text up to the end of the info)."""
    prefix, suffix = _filler_parts(num_sentences, depth)
    head = f"{TASK}\n{prefix}\n"
    with_info = head + info_sentence(key)
    return f"{with_info}\n{suffix}\n{QUESTION}", head, with_info


def _num_prompt_tokens(tokenizer: Tokenizer, num_sentences: int, depth: float, key: int) -> int:
    return 1 + len(tokenizer.encode(_prompt_text(num_sentences, depth, key)[0]))


def _check_args(context_len: int, depth: float, key: int) -> None:
    if not (0.0 <= depth <= 1.0):  # also rejects NaN
        raise ValueError(f"depth={depth} must be in [0, 1]")
    if context_len < 1:
        raise ValueError(f"context_len={context_len} must be >= 1")
    if key < 0:
        raise ValueError(f"key={key} must be >= 0")


def make_passkey(tokenizer: Tokenizer, context_len: int, depth: float, key: int) -> PasskeyExample:
    """Build the longest passkey prompt of at most context_len tokens (BOS included).

    depth: where the info goes, as a fraction of the filler (0 = right after TASK, 1 = right
      before QUESTION); the split is snapped to the nearest sentence start.
    Raises ValueError for depth outside [0, 1] or a context_len too short for TASK, info and
    QUESTION without filler.
    """
    _check_args(context_len, depth, key)
    minimum = _num_prompt_tokens(tokenizer, 0, depth, key)
    if minimum > context_len:
        raise ValueError(
            f"context_len={context_len} is too short for the passkey task: the prompt without "
            f"filler already takes {minimum} tokens"
        )

    def fits(n: int) -> bool:
        return _num_prompt_tokens(tokenizer, n, depth, key) <= context_len

    # Gallop to a non-fitting count, then bisect: encodes at most ~2x the final prompt length.
    lo, hi = 0, 1
    while fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    num_sentences = lo

    text, head, with_info = _prompt_text(num_sentences, depth, key)
    prompt_ids = np.concatenate([[tokenizer.bos_id], tokenizer.encode(text)]).astype(np.int32)
    info_start = 1 + len(tokenizer.encode(head))
    info_stop = 1 + len(tokenizer.encode(with_info))
    filler_start = 1 + len(tokenizer.encode(TASK))
    filler_stop = len(prompt_ids) - len(tokenizer.encode("\n" + QUESTION))
    before, after = info_start - filler_start, filler_stop - info_stop
    info_depth = before / (before + after) if before + after > 0 else 0.0
    return PasskeyExample(
        prompt_ids=prompt_ids,
        prompt_text=text,
        answer=str(key),
        key=key,
        depth=float(depth),
        info_span=(info_start, info_stop),
        info_depth=info_depth,
    )


def _random_key(rng: np.random.Generator) -> int:
    return int(rng.integers(1, MAX_KEY + 1))


def sample_passkeys(
    tokenizer: Tokenizer,
    n: int,
    context_len: int,
    depth: float | None,
    rng: np.random.Generator,
) -> list[PasskeyExample]:
    """n prompts with keys uniform in [1, 50000]; depth None draws a uniform depth per prompt."""
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    if depth is not None:
        _check_args(context_len, depth, 1)
    examples = []
    for _ in range(n):
        d = float(rng.random()) if depth is None else depth
        examples.append(make_passkey(tokenizer, context_len, d, _random_key(rng)))
    return examples


_FIRST_INTEGER = re.compile(r"\d+")


def score_passkey(generated_text: str, key: int) -> bool:
    """True iff the first run of digits in generated_text is the key."""
    match = _FIRST_INTEGER.search(generated_text)
    return match is not None and int(match.group()) == key


def answer_text(key: int) -> str:
    """What follows the prompt in training: " {key}."."""
    return f" {key}."
