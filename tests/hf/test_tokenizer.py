"""``HFTokenizer``: the fixtures' WordLevel tokenizer.json behind our Tokenizer protocol."""

from __future__ import annotations

import json

import pytest
from hf_fixtures import FIXTURES, copy_fixture, edit_config, loaded

from lcache.data.tokenizer import Tokenizer
from lcache.hf import HFTokenizer


def test_protocol_and_round_trip():
    tok = loaded("llama")[1]
    assert isinstance(tok, Tokenizer)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (512, 1, 2)
    assert tok.encode("w004 w511").tolist() == [4, 511]  # no BOS added
    assert [a.tolist() for a in tok.encode_many(["w010", "w011 w012"])] == [[10], [11, 12]]
    assert tok.decode([1, 4, 511, 2]) == "w004 w511"  # specials dropped


def test_pad_falls_back_to_eos():
    assert loaded("qwen2")[1].pad_id == 2  # config.json: pad_token_id null


def test_ids_from_config_lists_and_pad(tmp_path):
    folder = copy_fixture(tmp_path, "mistral")
    edit_config(folder, eos_token_id=[2, 5], pad_token_id=3)
    tok = HFTokenizer.from_dir(folder)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)


def test_ids_from_tokenizer_config(tmp_path):
    folder = copy_fixture(tmp_path, "mistral")
    edit_config(folder, bos_token_id=..., eos_token_id=...)
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "pad_token": "<pad>"}))
    tok = HFTokenizer.from_dir(folder)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)


def test_missing_bos_is_an_error(tmp_path):
    folder = copy_fixture(tmp_path, "mistral")
    edit_config(folder, bos_token_id=...)
    with pytest.raises(ValueError, match="no bos token: set bos_token_id in config.json"):
        HFTokenizer.from_dir(folder)


def test_special_id_outside_vocab(tmp_path):
    folder = copy_fixture(tmp_path, "mistral")
    edit_config(folder, eos_token_id=512)
    with pytest.raises(ValueError, match=r"eos_id=512 outside the tokenizer vocabulary"):
        HFTokenizer.from_dir(folder)


def test_save_and_reload(tmp_path):
    tok = HFTokenizer.from_dir(FIXTURES / "llama")
    tok.save(tmp_path / "saved")
    again = HFTokenizer.from_dir(tmp_path / "saved")
    assert again == tok and again.pad_id == tok.pad_id
    assert json.loads((tmp_path / "saved" / "tokenizer_meta.json").read_text())["kind"] == "hf"
