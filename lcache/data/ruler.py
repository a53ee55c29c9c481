"""RULER-style synthetic long-context tasks (Hsieh et al., 2024), offline, exact scoring.

Every example is generated from a seed: a prompt of at most ``context`` tokens (BOS first) and
the continuation that answers it. Needles are hidden at a chosen ``depth`` (0 = start of the
haystack, 1 = end) inside real text (the ``haystack`` token array: held-out Python sources for
evaluation, training sources for training rows), except ``passkey``, which keeps the classic
repetitive filler (``lcache.data.passkey``), and ``cwe``, whose haystack is the word list itself.

========== ===================================================== ==========================
task       hidden in the text                                    asked
========== ===================================================== ==========================
passkey    "The pass key is K. Remember it. K is the pass key."  the key (5 digits)
multikey   1 target + 3 distractor "magic number for <word>" lines the target word's number
multivalue 4 lines "magic number for <word>" (one word, 4 numbers) all 4 numbers (any order)
multiquery 4 words with one number each                          all 4 numbers (any order)
vartrack   a chain VAR A = n, VAR B = VAR A, ... (4 names)       all 4 names (any order)
cwe        a word list: 3 words appear often, the rest <= 2x     the 3 common words
========== ===================================================== ==========================

Words are pseudo-words of 2-3 syllables, numbers 6 digits, variable names 5 capital letters, so
a needle never collides with the haystack. Scoring (``score``) reads the generated text up to its
first newline and compares, exactly, the first integers / names / words with the expected ones.
Answers end with a newline in training rows (``training_rows``), so a trained model stops.
Byte-level text; with a BPE tokenizer the parts are encoded separately and concatenated.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from lcache.data.passkey import QUESTION as PASSKEY_QUESTION
from lcache.data.passkey import make_passkey
from lcache.data.tokenizer import Tokenizer

TASKS = ("passkey", "multikey", "multivalue", "multiquery", "vartrack", "cwe")
NEEDLE_HEADER = ("Some special magic numbers are hidden within the following text. Make sure to "
                 "memorize them. I will quiz you about the numbers afterwards.\n")
VAR_HEADER = "Memorize and track the chain of variable assignments hidden in the text below.\n"
CWE_HEADER = "Below is a numbered list of words. Memorize the ones that appear most often.\n"
NUM_NEEDLES = 4  # multikey: 1 target + 3 distractors; multivalue/multiquery: 4 numbers
NUM_HOPS = 4  # vartrack chain length
NUM_COMMON = 3  # cwe
MAX_NEW_TOKENS = {"passkey": 8, "multikey": 9, "multivalue": 36, "multiquery": 36,
                  "vartrack": 26, "cwe": 36}  # bytes of the longest answer + newline
USES_DEPTH = {t: t != "cwe" for t in TASKS}
_SYLLABLES = tuple(c + v for c in "bdfgklmnprstvz" for v in "aeiou")
_SNAP = 96  # a needle moves back to the previous line start if one is this close


@dataclasses.dataclass(frozen=True)
class TaskExample:
    """One prompt: ``prompt_ids [T]`` int32 (BOS first, ``T <= context``), the reference
    ``answer`` text (what training rows append), the ``expected`` items the scorer looks for,
    the requested ``depth`` and ``context``, the ``distractors``: items hidden in the prompt
    that a wrong answer may copy (multikey: the other needles' numbers), and ``question_len``:
    the prompt's last tokens that ask the question (a newline and the question; the rest is the
    context a cache may compress before the question arrives)."""

    task: str
    prompt_ids: np.ndarray
    answer: str
    expected: tuple[str, ...]
    depth: float
    context: int
    distractors: tuple[str, ...] = ()
    question_len: int = 0

    @property
    def question_at(self) -> int:
        """Index of the question's first token in ``prompt_ids``."""
        return self.prompt_ids.size - self.question_len

    @property
    def ordered(self) -> bool:
        """True when the expected items must come in order (single answers)."""
        return len(self.expected) == 1


def _words(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct pseudo-words (2-3 syllables)."""
    out: dict[str, None] = {}
    while len(out) < n:
        k = int(rng.integers(2, 4))
        out["".join(_SYLLABLES[i] for i in rng.integers(0, len(_SYLLABLES), k))] = None
    return list(out)


def _numbers(rng: np.random.Generator, n: int) -> list[str]:
    return [str(x) for x in rng.choice(np.arange(100_000, 1_000_000), n, replace=False)]


def _names(rng: np.random.Generator, n: int) -> list[str]:
    out: dict[str, None] = {}
    while len(out) < n:
        out["".join(chr(65 + int(i)) for i in rng.integers(0, 26, 5))] = None
    return list(out)


def _check(task: str, context: int, depth: float) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if not isinstance(context, (int, np.integer)) or context < 1:
        raise ValueError(f"context must be a positive int, got {context!r}")
    if not 0.0 <= depth <= 1.0:  # also rejects NaN
        raise ValueError(f"depth must lie in [0, 1], got {depth}")


def _needle_prompt(tok: Tokenizer, haystack: np.ndarray, context: int, header: str,
                   needles: Sequence[tuple[float, str]], question: str, rng, task: str
                   ) -> np.ndarray:
    """BOS + header + haystack window with ``needles`` (depth, text) inserted at line starts +
    question, exactly ``context`` tokens."""
    head, tail = tok.encode(header), tok.encode("\n" + question)
    pieces = [tok.encode(text + "\n") for _, text in needles]
    n_hay = context - 1 - head.size - tail.size - sum(p.size for p in pieces)
    if n_hay < 0:
        raise ValueError(f"context={context} is too short for task {task!r}: its header, "
                         f"needles and question take {context - n_hay} tokens")
    if haystack.size < n_hay:
        raise ValueError(f"the haystack has {haystack.size} tokens, fewer than the {n_hay} "
                         f"task {task!r} needs at context {context}")
    start = int(rng.integers(0, haystack.size - n_hay + 1))
    hay = np.asarray(haystack[start:start + n_hay], np.int32)
    newline = tok.encode("\n")
    cuts = []
    for depth, _ in needles:
        at = int(round(depth * n_hay))
        if newline.size == 1 and at > 0:
            back = np.flatnonzero(hay[max(0, at - _SNAP):at] == newline[0])
            at = max(0, at - _SNAP) + int(back[-1]) + 1 if back.size else at
        cuts.append(at)
    order = np.argsort(cuts, kind="stable")
    parts, prev = [np.array([tok.bos_id], np.int32), head], 0
    for i in order:
        parts += [hay[prev:cuts[i]], pieces[i]]
        prev = cuts[i]
    parts += [hay[prev:], tail]
    return np.concatenate(parts).astype(np.int32)


def _others(rng, n: int) -> list[float]:
    """Depths of the ``n`` non-target needles: uniform over the haystack."""
    return [float(x) for x in rng.random(n)]


def make_example(task: str, tok: Tokenizer, haystack: np.ndarray, context: int, depth: float,
                 rng: np.random.Generator) -> TaskExample:
    """One example of ``task`` of at most ``context`` tokens, target needle at ``depth``.

    Raises ValueError for an unknown task, a depth outside [0, 1] or a context too short for the
    task's fixed parts (header, needles, question)."""
    _check(task, context, depth)

    def done(prompt, answer, expected, question, distractors=()):
        return TaskExample(task, prompt, answer, tuple(expected), float(depth), int(context),
                           tuple(distractors), int(tok.encode("\n" + question).size))

    if task == "passkey":
        ex = make_passkey(tok, context, depth, int(rng.integers(1, 50_001)))
        return done(ex.prompt_ids, f" {ex.key}.", [str(ex.key)], PASSKEY_QUESTION)
    if task == "cwe":
        return _cwe(tok, context, rng, done)
    if task == "vartrack":
        names, value = _names(rng, NUM_HOPS), _numbers(rng, 1)[0]
        lines = [f"VAR {names[0]} = {value}"] + [f"VAR {b} = VAR {a}"
                                                 for a, b in zip(names, names[1:], strict=False)]
        depths = sorted([depth] + [depth + (1 - depth) * x for x in rng.random(NUM_HOPS - 1)])
        question = f"Which variables are assigned the value {value}? They are:"
        prompt = _needle_prompt(tok, haystack, context, VAR_HEADER, list(zip(depths, lines,
                                strict=True)), question, rng, task)
        return done(prompt, " " + " ".join(names) + ".", names, question)
    words, values = _words(rng, NUM_NEEDLES), _numbers(rng, NUM_NEEDLES)

    def line(word, value):
        return f"The special magic number for {word} is: {value}."

    if task == "multikey":
        needles = [(depth, line(words[0], values[0]))] + [
            (d, line(w, v)) for d, w, v in zip(_others(rng, NUM_NEEDLES - 1), words[1:],
                                               values[1:], strict=True)]
        question = (f"What is the special magic number for {words[0]}? The special magic "
                    f"number for {words[0]} is:")
        expected, distractors = values[:1], values[1:]
    elif task == "multivalue":
        needles = [(depth, line(words[0], values[0]))] + [
            (d, line(words[0], v)) for d, v in zip(_others(rng, NUM_NEEDLES - 1),
                                                   values[1:], strict=True)]
        question = (f"What are all the special magic numbers for {words[0]}? The special magic "
                    f"numbers for {words[0]} are:")
        expected, distractors = values, ()
    else:  # multiquery
        needles = [(depth, line(words[0], values[0]))] + [
            (d, line(w, v)) for d, w, v in zip(_others(rng, NUM_NEEDLES - 1), words[1:],
                                               values[1:], strict=True)]
        asked = [int(i) for i in rng.permutation(NUM_NEEDLES)]
        names = ", ".join(words[i] for i in asked[:-1]) + f" and {words[asked[-1]]}"
        question = (f"What are the special magic numbers for {names}? The special magic "
                    f"numbers for {names} are:")
        expected, distractors = [values[i] for i in asked], ()
    prompt = _needle_prompt(tok, haystack, context, NEEDLE_HEADER, needles, question, rng, task)
    answer = " " + ", ".join(expected) + "."
    return done(prompt, answer, expected, question, distractors)


def _cwe(tok: Tokenizer, context: int, rng, done) -> TaskExample:
    """Common-word extraction: a numbered word list where ``NUM_COMMON`` words appear
    ``freq`` times and every other word at most twice (``freq >= 4``), shuffled."""
    question = "What are the 3 most common words in the list above? They are:"
    fixed = 1 + tok.encode(CWE_HEADER).size + tok.encode("\n" + question).size
    room = context - fixed
    per_word = 13  # "123. lomira\n" is about 12 bytes on average
    n_items = room // per_word
    freq = max(4, n_items // 12)
    n_rare = n_items - NUM_COMMON * freq
    if n_rare < 1:
        raise ValueError(f"context={context} is too short for task 'cwe': it needs at least "
                         f"{fixed + per_word * (NUM_COMMON * 4 + 1)} tokens")
    words = _words(rng, NUM_COMMON + n_rare)
    common, rare = words[:NUM_COMMON], words[NUM_COMMON:]
    items = common * freq + [w for w in rare for _ in range(int(rng.integers(1, 3)))]
    items = [items[i] for i in rng.permutation(len(items))]
    while True:  # drop rare items from the end until the prompt fits
        body = "".join(f"{i + 1}. {w}\n" for i, w in enumerate(items))
        prompt = np.concatenate([[tok.bos_id], tok.encode(CWE_HEADER + body),
                                 tok.encode("\n" + question)]).astype(np.int32)
        if prompt.size <= context:
            break
        drop = max(i for i, w in enumerate(items) if w not in common)
        items.pop(drop)
    return done(prompt, " " + ", ".join(common) + ".", common, question)


_INTEGER = re.compile(r"\d+")
_NAME = re.compile(r"\b[A-Z]{5}\b")
_WORD = re.compile(r"[a-z]+")


def score(example: TaskExample, generated: str) -> bool:
    """Exact match on the generated text up to its first newline: the first
    ``len(expected)`` integers (names for vartrack, words for cwe) equal the expected ones, in
    order for single answers and as a set otherwise."""
    text = generated.split("\n", 1)[0]
    pattern = {"vartrack": _NAME, "cwe": _WORD}.get(example.task, _INTEGER)
    found = pattern.findall(text)[:len(example.expected)]
    if example.ordered:
        return found == list(example.expected)
    return sorted(found) == sorted(example.expected)


ANSWER_KINDS = ("correct", "distractor", "other")


def answer_kind(example: TaskExample, generated: str) -> str:
    """Why an answer is right or wrong: 'correct' (``score``), 'distractor' (its first item is
    one of the example's ``distractors``: the model retrieved, but the wrong needle) or 'other'
    (nothing retrieved: a made-up or truncated item)."""
    if score(example, generated):
        return "correct"
    pattern = {"vartrack": _NAME, "cwe": _WORD}.get(example.task, _INTEGER)
    first = pattern.findall(generated.split("\n", 1)[0])[:1]
    return "distractor" if first and first[0] in example.distractors else "other"


def make_suite(tok: Tokenizer, haystack: np.ndarray, tasks: Sequence[str],
               contexts: Sequence[int], depths: Sequence[float], trials: int, seed: int
               ) -> list[TaskExample]:
    """``trials`` examples per (task, context, depth); ``cwe`` ignores depth (one cell at the
    first depth). Deterministic in ``seed``; all cells are checked before any is generated."""
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if not tasks or not contexts or not depths:
        raise ValueError("tasks, contexts and depths must be non-empty")
    for task in tasks:
        for context in contexts:
            for depth in depths:
                _check(task, context, float(depth))
            make_example(task, tok, haystack, context, float(depths[0]),
                         np.random.default_rng(0))  # raises if the context is too short
    out = []
    for ti, task in enumerate(tasks):
        for context in contexts:
            for depth in depths if USES_DEPTH[task] else depths[:1]:
                rng = np.random.default_rng([seed, ti, int(context), int(round(depth * 1e6))])
                out += [make_example(task, tok, haystack, int(context), float(depth), rng)
                        for _ in range(trials)]
    return out


def training_rows(tok: Tokenizer, haystack: np.ndarray, rows: int, seq_len: int,
                  rng: np.random.Generator, tasks: Sequence[str] = TASKS,
                  min_context: int = 512, answer_weight: float = 1.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Task rows for training -> ``(tokens [rows, seq_len + 1] int32, weights [rows, seq_len]
    float32)``: each row a random task at a random context in ``[min_context, seq_len - 40]``
    and depth, then its answer and a newline, padded; weight 1 on every real target of the
    prompt and ``answer_weight`` on the targets of the answer + newline (the only targets that
    need retrieval: a handful of the row's ~2K)."""
    hi = seq_len + 1 - max(MAX_NEW_TOKENS.values())
    if rows < 1 or min_context > hi:
        raise ValueError(f"need rows >= 1 and min_context={min_context} <= {hi} (seq_len="
                         f"{seq_len} minus the longest answer)")
    if not answer_weight > 0:
        raise ValueError(f"answer_weight must be > 0, got {answer_weight}")
    tokens = np.full((rows, seq_len + 1), tok.pad_id, np.int32)
    weights = np.zeros((rows, seq_len), np.float32)
    for r in range(rows):
        task = tasks[int(rng.integers(0, len(tasks)))]
        ex = make_example(task, tok, haystack, int(rng.integers(min_context, hi + 1)),
                          float(rng.random()), rng)
        row = np.concatenate([ex.prompt_ids, tok.encode(ex.answer + "\n")])
        tokens[r, :row.size] = row
        weights[r, :row.size - 1] = 1.0
        weights[r, ex.prompt_ids.size - 1:row.size - 1] = answer_weight
    return tokens, weights
