"""Byte and BPE tokenizers: round trips, specials, save/load, factory errors."""

import os
import pathlib
import sysconfig

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lcache.data import BPETokenizer, ByteTokenizer, Tokenizer, load_tokenizer, make_tokenizer

STDLIB = sysconfig.get_paths()["stdlib"]


@given(st.text())
def test_byte_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert ids.tolist() == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_byte_decode_drops_specials_and_replaces_bad_utf8():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (259, 256, 257, 258)
    assert tok.decode([tok.bos_id, 104, 105, tok.eos_id, tok.pad_id]) == "hi"
    assert tok.decode([0xFF, 104]) == "\ufffdh"
    assert isinstance(tok, Tokenizer)


def test_byte_save_load(tmp_path):
    ByteTokenizer().save(tmp_path)
    assert load_tokenizer(tmp_path) == ByteTokenizer()


def test_bpe_trains_small_vocab(small_bpe):
    assert isinstance(small_bpe, Tokenizer)
    assert 259 < small_bpe.vocab_size <= 300
    assert (small_bpe.bos_id, small_bpe.eos_id, small_bpe.pad_id) == (0, 1, 2)


def test_bpe_round_trip_on_source(small_bpe):
    text = pathlib.Path(STDLIB, "textwrap.py").read_text()
    ids = small_bpe.encode(text)
    assert ids.dtype == np.int32
    assert len(ids) < len(text.encode("utf-8"))  # merges compress
    assert small_bpe.decode(ids) == text


@settings(max_examples=50, deadline=None)
@given(st.text())
def test_bpe_round_trip_unicode(small_bpe, text):
    assert small_bpe.decode(small_bpe.encode(text)) == text


def test_bpe_never_emits_specials_from_text(small_bpe):
    ids = small_bpe.encode("x = '<eos>' + '<bos>' + '<pad>'")
    assert not set(ids.tolist()) & {small_bpe.bos_id, small_bpe.eos_id, small_bpe.pad_id}


def test_bpe_encode_many_matches_encode(small_bpe):
    texts = ["def f(x):\n    return x", "", "héllo wörld"]
    many = small_bpe.encode_many(texts)
    assert [m.tolist() for m in many] == [small_bpe.encode(t).tolist() for t in texts]


def test_bpe_save_load_identical_ids(small_bpe, tmp_path):
    small_bpe.save(tmp_path)
    assert os.path.isfile(tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, BPETokenizer)
    assert loaded == small_bpe
    text = pathlib.Path(STDLIB, "heapq.py").read_text()
    np.testing.assert_array_equal(loaded.encode(text), small_bpe.encode(text))
    assert make_tokenizer("bpe", path=tmp_path) == small_bpe
    assert BPETokenizer.from_file(tmp_path / "tokenizer.json") == small_bpe


def test_bpe_trains_on_texts():
    tok = make_tokenizer("bpe", texts_or_files=["ab ab ab abc abc"] * 20, vocab_size=262)
    assert tok.decode(tok.encode("abc ab")) == "abc ab"


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="'wordpiece'"):
        make_tokenizer("wordpiece")
    with pytest.raises(ValueError, match="vocab_size=100"):
        BPETokenizer.train(["abc"], vocab_size=100)
    with pytest.raises(ValueError, match="not one item"):
        BPETokenizer.train("abc", vocab_size=300)
    with pytest.raises(ValueError, match="nowhere"):
        load_tokenizer("/nowhere")
    with pytest.raises(ValueError, match="needs path"):
        make_tokenizer("bpe")
