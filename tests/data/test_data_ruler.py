"""RULER-style tasks: lengths, needle placement, answers, exact scoring, training rows, errors."""

import re

import numpy as np
import pytest

from lcache.data import ByteTokenizer, ruler

TOK = ByteTokenizer()
HAYSTACK = TOK.encode("".join(f"def f{i}(x):\n    return x * {i % 7} + 1\n" for i in range(400)))


@pytest.mark.parametrize("task", ruler.TASKS)
@pytest.mark.parametrize("context", [600, 1024, 1537])
def test_prompt_fits_and_answer_scores(task, context):
    rng = np.random.default_rng([context, len(task)])
    ex = ruler.make_example(task, TOK, HAYSTACK, context, float(rng.random()), rng)
    assert ex.prompt_ids.dtype == np.int32 and ex.prompt_ids[0] == TOK.bos_id
    assert ex.prompt_ids.size <= context
    if task not in ("passkey", "cwe"):  # needles in real text fill the context exactly
        assert ex.prompt_ids.size == context
    assert (TOK.bos_id == ex.prompt_ids).sum() == 1
    assert len(TOK.encode(ex.answer + "\n")) <= ruler.MAX_NEW_TOKENS[task]
    assert ruler.score(ex, ex.answer + "\n12 34 ABCDE zzz")  # text after the newline is ignored
    text = TOK.decode(ex.prompt_ids)
    if task in ("multikey", "multivalue", "multiquery"):
        for value in ex.expected:
            assert f"is: {value}." in text
    if task == "vartrack":
        assert all(f"VAR {n} =" in text for n in ex.expected)


def test_multikey_distractors_and_depth():
    rng = np.random.default_rng(3)
    for depth in (0.0, 0.5, 1.0):
        ex = ruler.make_example("multikey", TOK, HAYSTACK, 2048, depth, rng)
        text = TOK.decode(ex.prompt_ids)
        lines = re.findall(r"The special magic number for (\w+) is: (\d+)\.", text)
        assert len(lines) == ruler.NUM_NEEDLES and len({w for w, _ in lines}) == 4
        target = re.search(r"number for (\w+)\? ", text).group(1)
        value = dict(lines)[target]
        assert ex.expected == (value,)
        where = text.index(f"for {target} is: ") / len(text)  # the target sits near its depth
        assert abs(where - depth) < 0.15


def test_scoring_is_exact():
    ex = ruler.make_example("multivalue", TOK, HAYSTACK, 1024, 0.5, np.random.default_rng(0))
    good = " " + ", ".join(reversed(ex.expected)) + "."
    assert ruler.score(ex, good)  # order-free
    assert not ruler.score(ex, " " + ", ".join(ex.expected[:3]) + ".")  # one missing
    assert not ruler.score(ex, "\n" + good)  # answer after the first newline does not count
    single = ruler.make_example("multikey", TOK, HAYSTACK, 1024, 0.5, np.random.default_rng(1))
    assert not ruler.score(single, " 1" + single.expected[0])
    assert not ruler.score(single, " ")


def test_cwe_common_words_are_the_most_frequent():
    ex = ruler.make_example("cwe", TOK, HAYSTACK, 2048, 0.0, np.random.default_rng(5))
    words = re.findall(r"\d+\. ([a-z]+)\n", TOK.decode(ex.prompt_ids))
    counts = {w: words.count(w) for w in set(words)}
    top = sorted(counts, key=counts.get, reverse=True)[:3]
    assert sorted(top) == sorted(ex.expected)
    assert min(counts[w] for w in ex.expected) > max(
        c for w, c in counts.items() if w not in ex.expected)


def test_suite_is_deterministic_and_complete():
    kw = dict(tasks=ruler.TASKS, contexts=(700, 1024), depths=(0.0, 1.0), trials=2, seed=7)
    a = ruler.make_suite(TOK, HAYSTACK, **kw)
    b = ruler.make_suite(TOK, HAYSTACK, **kw)
    assert len(a) == (5 * 2 * 2 + 1 * 2 * 1) * 2  # cwe has one depth cell
    assert all(np.array_equal(x.prompt_ids, y.prompt_ids) for x, y in zip(a, b, strict=True))
    c = ruler.make_suite(TOK, HAYSTACK, **{**kw, "seed": 8})
    assert any(x.expected != y.expected for x, y in zip(a, c, strict=True))


def test_training_rows():
    tokens, weights = ruler.training_rows(TOK, HAYSTACK, 6, 1024, np.random.default_rng(0))
    assert tokens.shape == (6, 1025) and weights.shape == (6, 1024)
    for row, w in zip(tokens, weights, strict=True):
        n = int(w.sum()) + 1
        assert row[0] == TOK.bos_id and (row[n:] == TOK.pad_id).all()
        assert (row[:n] != TOK.pad_id).all() and TOK.decode(row[:n]).endswith(".\n")


def test_training_rows_answer_weight():
    """The answer + newline targets (and only they) carry ``answer_weight``."""
    tokens, weights = ruler.training_rows(TOK, HAYSTACK, 6, 1024, np.random.default_rng(3),
                                          answer_weight=16.0)
    for row, w in zip(tokens, weights, strict=True):
        heavy = np.flatnonzero(w == 16.0)
        assert heavy.size and (np.diff(heavy) == 1).all() and (w[:heavy[0]] == 1.0).all()
        assert (w[heavy[-1] + 1:] == 0).all()
        answer = TOK.decode(row[heavy[0] + 1:heavy[-1] + 2])
        assert answer.startswith(" ") and answer.endswith(".\n") and "\n" not in answer[:-1]
    with pytest.raises(ValueError, match="answer_weight must be > 0"):
        ruler.training_rows(TOK, HAYSTACK, 1, 1024, np.random.default_rng(0), answer_weight=0)


@pytest.mark.parametrize("call, match", [
    (lambda: ruler.make_example("needle", TOK, HAYSTACK, 1024, 0.5, np.random.default_rng(0)),
     "unknown task 'needle'"),
    (lambda: ruler.make_example("multiquery", TOK, HAYSTACK, 300, 0.5, np.random.default_rng(0)),
     "context=300 is too short for task 'multiquery'"),
    (lambda: ruler.make_example("cwe", TOK, HAYSTACK, 200, 0.5, np.random.default_rng(0)),
     "context=200 is too short for task 'cwe'"),
    (lambda: ruler.make_example("multikey", TOK, HAYSTACK, 1024, 1.5, np.random.default_rng(0)),
     "depth must lie in"),
    (lambda: ruler.make_example("multikey", TOK, HAYSTACK[:100], 1024, 0.5,
                                np.random.default_rng(0)), "haystack has 100 tokens"),
    (lambda: ruler.make_suite(TOK, HAYSTACK, ("multikey",), (1024, 300), (0.5,), 1, 0),
     "context=300 is too short"),
    (lambda: ruler.make_suite(TOK, HAYSTACK, ("multikey",), (1024,), (0.5,), 0, 0),
     "trials must be >= 1"),
    (lambda: ruler.training_rows(TOK, HAYSTACK, 2, 256, np.random.default_rng(0)),
     "min_context=512"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_answer_kind_tells_distractors_from_misses():
    ex = ruler.make_example("multikey", TOK, HAYSTACK, 1024, 0.5, np.random.default_rng(5))
    prompt = TOK.decode(ex.prompt_ids)
    assert len(ex.distractors) == ruler.NUM_NEEDLES - 1
    assert all(d in prompt for d in ex.distractors) and ex.expected[0] not in ex.distractors
    assert ruler.answer_kind(ex, f" {ex.expected[0]}.\n") == "correct"
    assert ruler.answer_kind(ex, f" {ex.distractors[1]}.\n{ex.expected[0]}") == "distractor"
    assert ruler.answer_kind(ex, " 000000.\n") == "other"
    assert ruler.answer_kind(ex, "\n" + ex.expected[0]) == "other"  # only the first line counts
    multi = ruler.make_example("multiquery", TOK, HAYSTACK, 1024, 0.5, np.random.default_rng(5))
    assert multi.distractors == ()


@pytest.mark.parametrize("task", ruler.TASKS)
def test_question_len_marks_the_question(task):
    """The prompt ends with a newline and the question; everything before is context."""
    ex = ruler.make_example(task, TOK, HAYSTACK, 1024, 0.3, np.random.default_rng(2))
    question = TOK.decode(ex.prompt_ids[ex.question_at:])
    assert question.startswith("\n") and question.rstrip().endswith(("is", "are:", "is:"))
    assert "\n" not in question[1:] and 0 < ex.question_at < ex.prompt_ids.size
