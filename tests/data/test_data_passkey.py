"""Passkey prompts: length fit, depth placement, scoring, training batches, errors."""

import math

import numpy as np
import pytest

from lcache.data import (
    ByteTokenizer,
    make_passkey,
    sample_passkeys,
    score_passkey,
)
from lcache.data.passkey import QUESTION, TASK, info_sentence

# Slack for "close to context_len": one filler sentence plus boundary effects, in tokens.
MAX_SHORTFALL = 24


@pytest.fixture(params=["byte", "bpe"])
def tokenizer(request, small_bpe):
    return ByteTokenizer() if request.param == "byte" else small_bpe


@pytest.mark.parametrize("context_len", [300, 1000, 4000])
@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_prompt_fits_and_info_at_depth(tokenizer, context_len, depth):
    ex = make_passkey(tokenizer, context_len, depth, key=4321)
    ids = ex.prompt_ids
    assert ids.dtype == np.int32 and ids[0] == tokenizer.bos_id
    assert context_len - MAX_SHORTFALL <= len(ids) <= context_len
    assert ex.prompt_text.startswith(TASK + "\n") and ex.prompt_text.endswith("\n" + QUESTION)
    assert tokenizer.decode(ids) == ex.prompt_text
    start, stop = ex.info_span
    assert tokenizer.decode(ids[start:stop]) == info_sentence(4321)
    tolerance = 0.1 if context_len >= 1000 else 0.25
    assert abs(ex.info_depth - depth) <= tolerance
    assert ex.answer == "4321" and ex.key == 4321


def test_info_moves_with_depth():
    spans = [make_passkey(ByteTokenizer(), 2000, d, 7).info_span[0] for d in (0, 0.25, 0.5, 1)]
    assert spans == sorted(spans) and spans[0] < spans[-1]


def test_sample_passkeys_keys_and_determinism():
    tok = ByteTokenizer()
    examples = sample_passkeys(tok, 20, 400, 0.5, np.random.default_rng(3))
    assert len(examples) == 20
    assert all(1 <= ex.key <= 50000 for ex in examples)
    assert len({ex.key for ex in examples}) > 1
    repeat = sample_passkeys(tok, 20, 400, 0.5, np.random.default_rng(3))
    assert [ex.key for ex in repeat] == [ex.key for ex in examples]
    mixed = sample_passkeys(tok, 5, 400, None, np.random.default_rng(3))
    assert len({ex.depth for ex in mixed}) == 5


def test_score_passkey():
    assert score_passkey(" 12345. Remember it.", 12345)
    assert score_passkey("12345", 12345)
    assert not score_passkey(" 1234 5", 12345)
    assert not score_passkey(" 123456", 12345)
    assert not score_passkey(" 99 then 12345", 12345)
    assert not score_passkey("no digits", 12345)


def test_bad_inputs_raise():
    tok = ByteTokenizer()
    for depth in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match=f"depth={depth}"):
            make_passkey(tok, 1000, depth, 5)
    with pytest.raises(ValueError, match="context_len=100 "):
        make_passkey(tok, 100, 0.5, 5)
    with pytest.raises(ValueError, match="n=0"):
        sample_passkeys(tok, 0, 1000, 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="depth=2"):
        sample_passkeys(tok, 2, 1000, 2, np.random.default_rng(0))
