"""Corpus listing, the deterministic split, token loading and its cache."""

import math
import os
import random

import numpy as np
import pytest

from lcache.data import (
    ByteTokenizer,
    CorpusFile,
    corpus_stats,
    default_roots,
    list_files,
    load_tokens,
    read_texts,
    split_files,
)


def test_default_corpus_lists_stdlib_and_site(default_files):
    rel_paths = [f.rel_path for f in default_files]
    assert rel_paths == sorted(rel_paths)
    assert len(set(rel_paths)) == len(rel_paths)
    assert "stdlib/os.py" in rel_paths
    assert "stdlib/json/__init__.py" in rel_paths
    for f in default_files:
        assert f.rel_path.endswith(".py")
        assert f.is_stdlib == f.rel_path.startswith("stdlib/")
        assert f.is_stdlib or f.rel_path.startswith("site/")
        if f.is_stdlib:
            assert "site-packages" not in f.rel_path
            assert "_sysconfigdata" not in f.rel_path
    assert default_roots()[0] == os.path.realpath(default_roots()[0])


def test_default_split_deterministic_and_heldout_is_stdlib(default_files):
    train, heldout = split_files(default_files)
    assert (train, heldout) == split_files(list(default_files))
    assert heldout and all(f.is_stdlib for f in heldout)
    num_stdlib = sum(f.is_stdlib for f in default_files)
    assert len(heldout) == math.ceil(0.05 * num_stdlib)
    assert len(train) + len(heldout) == len(default_files)
    assert not {f.rel_path for f in train} & {f.rel_path for f in heldout}


def test_split_independent_of_order_and_of_site_files(default_files):
    _, heldout = split_files(default_files)
    shuffled = list(default_files)
    random.Random(0).shuffle(shuffled)
    assert split_files(shuffled)[1] == heldout
    stdlib_only = [f for f in default_files if f.is_stdlib]
    assert split_files(stdlib_only)[1] == heldout
    assert split_files(default_files, salt="other")[1] != heldout


@pytest.fixture
def user_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    files = {
        "a.txt": "alpha text",
        "b.md": "# beta",
        "sub/c.py": "x = 1",
        "NOTES": "no suffix",
        ".hidden.txt": "skip me",
        ".git/config": "skip me",
        "data.csv": "1,2",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "blob").write_bytes(b"\x00\x01binary")
    return tmp_path


def test_user_folder_listing(user_folder):
    files = list_files(user_folder)
    assert [f.rel_path for f in files] == ["NOTES", "a.txt", "b.md", "sub/c.py"]
    assert not any(f.is_stdlib for f in files)
    assert [f.rel_path for f in list_files(user_folder, suffixes=(".csv",))] == ["data.csv"]


def test_user_folder_split_draws_from_all_files(user_folder):
    train, heldout = split_files(list_files(user_folder), heldout_fraction=0.25)
    assert len(heldout) == 1 and len(train) == 3


def test_single_file_split_by_bytes(tmp_path):
    path = tmp_path / "book.txt"
    text = "héllo wörld. " * 100  # multi-byte characters: the cut must not split one
    path.write_text(text, encoding="utf-8")
    files = list_files(path)
    assert files == [CorpusFile("book.txt", str(path), False)]
    (train,), (heldout,) = split_files(files, heldout_fraction=0.1)
    size = len(text.encode("utf-8"))
    assert train.byte_start == 0 and heldout.byte_stop == size
    assert train.byte_stop == heldout.byte_start
    assert abs(heldout.num_bytes - 0.1 * size) <= 2
    tok = ByteTokenizer()
    train_text, heldout_text = read_texts([train])[0], read_texts([heldout])[0]
    assert "\ufffd" not in train_text + heldout_text
    assert train_text + heldout_text == text
    assert tok.decode(load_tokens([heldout], tok)) == heldout_text


def test_load_tokens_joins_files_and_replaces_bad_bytes(tmp_path):
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "b.txt").write_bytes(b"bad \xff byte")
    files = list_files(tmp_path)
    tokens = load_tokens(files, ByteTokenizer())
    assert tokens.dtype == np.int32
    assert ByteTokenizer().decode(tokens) == "first\n\nbad \ufffd byte"
    assert ByteTokenizer().decode(load_tokens(files, ByteTokenizer(), max_bytes=7)) == "first\n\nba"


def test_load_tokens_bpe_is_per_file_encoding(tmp_path, small_bpe):
    (tmp_path / "a.py").write_text("def f(x):\n    return x\n")
    (tmp_path / "b.py").write_text("import os\n")
    files = list_files(tmp_path)
    tokens = load_tokens(files, small_bpe)
    sep = small_bpe.encode("\n\n")
    expected = np.concatenate(
        [
            small_bpe.encode(read_texts(files[:1])[0]),
            sep,
            small_bpe.encode(read_texts(files[1:])[0]),
        ]
    )
    np.testing.assert_array_equal(tokens, expected)
    assert small_bpe.decode(tokens) == "def f(x):\n    return x\n\n\nimport os\n"


def test_load_tokens_cache(tmp_path):
    corpus, cache = tmp_path / "corpus", tmp_path / "cache"
    corpus.mkdir()
    (corpus / "a.txt").write_text("cached text")
    files = list_files(corpus)
    first = load_tokens(files, ByteTokenizer(), cache_dir=cache)
    cached = list(cache.iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".npy"
    np.testing.assert_array_equal(load_tokens(files, ByteTokenizer(), cache_dir=cache), first)
    (corpus / "a.txt").write_text("edited, longer text")  # size changes -> new key
    assert ByteTokenizer().decode(load_tokens(files, ByteTokenizer(), cache_dir=cache)) == (
        "edited, longer text"
    )
    assert len(list(cache.iterdir())) == 2


def test_corpus_stats(tmp_path):
    (tmp_path / "a.txt").write_text("12345")
    (tmp_path / "b.txt").write_text("678")
    stats = corpus_stats(list_files(tmp_path), ByteTokenizer())
    assert (stats.num_files, stats.num_bytes, stats.num_tokens) == (2, 8, 10)
    assert corpus_stats(list_files(tmp_path)).num_tokens is None


def test_bad_inputs_raise(tmp_path):
    with pytest.raises(ValueError, match="/no/such/corpus"):
        list_files("/no/such/corpus")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        list_files(tmp_path / "empty")
    with pytest.raises(ValueError, match="txt"):
        list_files(tmp_path, suffixes=("txt",))
    (tmp_path / "a.txt").write_text("some text here")
    files = list_files(tmp_path / "a.txt")
    for fraction in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=f"heldout_fraction={fraction}"):
            split_files(files, heldout_fraction=fraction)
    with pytest.raises(ValueError, match="empty"):
        split_files([])
    with pytest.raises(ValueError, match="a.txt"):
        split_files(files * 2)
    with pytest.raises(ValueError, match="max_bytes=0"):
        load_tokens(files, ByteTokenizer(), max_bytes=0)
