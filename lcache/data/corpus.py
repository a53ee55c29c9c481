"""The text corpus: which files, how they split into train/held-out, and their token ids.

Default corpus: every `*.py` file of the running interpreter, i.e. the standard library
(rel_path "stdlib/...") and the installed packages (rel_path "site/..."). Held-out files are
drawn only from the standard library, so the eval set is the same on every machine with the same
Python version, whatever packages are installed. User corpus: one file or a folder of text files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sysconfig
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lcache.data.tokenizer import ByteTokenizer, Tokenizer

FILE_SEPARATOR = "\n\n"
USER_FOLDER_SUFFIXES = (".txt", ".md", ".py", "")  # "" = files without a suffix
DEFAULT_SUFFIXES = (".py",)
_SITE_DIR_NAMES = ("site-packages", "dist-packages")
_ENCODE_CHUNK_FILES = 256  # files per encode_many call: bounds peak memory of batched BPE


@dataclass(frozen=True)
class CorpusFile:
    """One corpus file, or a byte range of one (see `split_files` for single-file corpora).

    rel_path: stable name used for sorting and for the split hash ("stdlib/os.py", "site/...",
      or the path relative to the user folder).
    abs_path: where to read it.
    is_stdlib: part of the interpreter's standard library (only these can be held out when
      present).
    byte_start, byte_stop: the byte range [byte_start, byte_stop) of the file to use; byte_stop
      None means to the end.
    """

    rel_path: str
    abs_path: str
    is_stdlib: bool
    byte_start: int = 0
    byte_stop: int | None = None

    @property
    def num_bytes(self) -> int:
        """Bytes this entry covers on disk."""
        stop = os.path.getsize(self.abs_path) if self.byte_stop is None else self.byte_stop
        return max(0, stop - self.byte_start)


def default_roots() -> list[str]:
    """Folders of the default corpus: [stdlib, purelib, platlib], deduplicated, existing only."""
    paths = sysconfig.get_paths()
    roots: list[str] = []
    for key in ("stdlib", "purelib", "platlib"):
        root = os.path.realpath(paths[key])
        if os.path.isdir(root) and root not in roots:
            roots.append(root)
    return roots


def _walk(root: str, suffixes: Sequence[str], skip_dirs: set[str], skip_hidden: bool):
    """Yield absolute paths of files under root with one of the suffixes, in sorted order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if os.path.join(dirpath, d) not in skip_dirs
            and d != "__pycache__"
            and not (skip_hidden and d.startswith("."))
        )
        for name in sorted(filenames):
            if skip_hidden and name.startswith("."):
                continue
            if os.path.splitext(name)[1] in suffixes:
                yield os.path.join(dirpath, name)


def _is_machine_specific_stdlib(rel: str) -> bool:
    # Generated at build time and different per platform/build; excluding them keeps the
    # stdlib part of the corpus identical across machines with the same Python version.
    first = rel.split("/", 1)[0]
    return first.startswith("config-") or os.path.basename(rel).startswith("_sysconfigdata")


def _default_corpus(suffixes: Sequence[str]) -> list[CorpusFile]:
    stdlib, *site_roots = default_roots()
    files: dict[str, CorpusFile] = {}

    def add(root: str, prefix: str, is_stdlib: bool, skip_dirs: set[str]) -> None:
        for path in _walk(root, suffixes, skip_dirs, skip_hidden=False):
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if is_stdlib and _is_machine_specific_stdlib(rel):
                continue
            # Roots are deduplicated by realpath already (lib64 -> lib links); a rel_path seen
            # under an earlier root wins.
            files.setdefault(f"{prefix}/{rel}", CorpusFile(f"{prefix}/{rel}", path, is_stdlib))

    # Installed packages may live inside the stdlib folder (non-venv installs); they belong to
    # "site", so the stdlib walk skips them and any site-packages folder.
    stdlib_skip = {os.path.join(stdlib, n) for n in _SITE_DIR_NAMES} | set(site_roots)
    add(stdlib, "stdlib", True, stdlib_skip)
    for root in site_roots:
        add(root, "site", False, set())
    return [files[k] for k in sorted(files)]


def _looks_binary(path: str) -> bool:
    with open(path, "rb") as f:
        return b"\0" in f.read(8192)


def list_files(
    path: str | os.PathLike | None = None, suffixes: Sequence[str] | None = None
) -> list[CorpusFile]:
    """List corpus files, sorted by rel_path (deterministic).

    path None: the default corpus (`default_roots`), `*.py` unless suffixes says otherwise.
    path a file: that file, whatever its suffix (rel_path = its name, is_stdlib False).
    path a folder: files with suffixes (default `.txt`, `.md`, `.py` and no suffix; "" stands
      for no suffix), skipping hidden files/folders and suffix-less files that contain NUL bytes.
    Raises ValueError if path does not exist or nothing matches.
    """
    if suffixes is not None:
        if isinstance(suffixes, str):
            raise ValueError(f"suffixes must be a sequence of strings, got the string {suffixes!r}")
        bad = [s for s in suffixes if s and not s.startswith(".")]
        if bad:
            raise ValueError(f"suffixes must start with '.' (or be '' for none), got {bad}")
    if path is None:
        files = _default_corpus(tuple(suffixes) if suffixes is not None else DEFAULT_SUFFIXES)
        if not files:
            raise ValueError(f"no files with suffixes {suffixes} under {default_roots()}")
        return files

    path = os.fspath(path)
    if os.path.isfile(path):
        return [CorpusFile(os.path.basename(path), os.path.abspath(path), False)]
    if not os.path.isdir(path):
        raise ValueError(f"corpus path {path!r} does not exist")
    root = os.path.abspath(path)
    wanted = tuple(suffixes) if suffixes is not None else USER_FOLDER_SUFFIXES
    files = [
        CorpusFile(os.path.relpath(p, root).replace(os.sep, "/"), p, False)
        for p in _walk(root, wanted, set(), skip_hidden=True)
        if os.path.splitext(p)[1] or not _looks_binary(p)
    ]
    if not files:
        raise ValueError(f"corpus folder {path!r} has no files with suffixes {wanted}")
    return sorted(files, key=lambda f: f.rel_path)


def _split_hash(salt: str, rel_path: str) -> int:
    return int.from_bytes(hashlib.sha256((salt + rel_path).encode("utf-8")).digest()[:8], "big")


def _char_boundary(data: bytes, cut: int) -> int:
    """Largest index <= cut that does not fall inside a UTF-8 multi-byte character."""
    while 0 < cut < len(data) and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut


def split_files(
    files: Sequence[CorpusFile], heldout_fraction: float = 0.05, salt: str = "lcache-v1"
) -> tuple[list[CorpusFile], list[CorpusFile]]:
    """Deterministic train/held-out split -> (train, heldout), each sorted by rel_path.

    Several files: the candidates for held-out are the stdlib files if there are any (default
    corpus), else all files. The ceil(heldout_fraction * #candidates) candidates with the smallest
    sha256(salt + rel_path) are held out, so the split depends neither on the order of `files`
    nor on the non-candidate files (installed packages).
    One file: split by bytes instead: the last heldout_fraction of its bytes (cut moved back to a
    UTF-8 character boundary) is held out, returned as two `CorpusFile`s with byte ranges.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction={heldout_fraction} must be in (0, 1)")
    if not files:
        raise ValueError("split_files got an empty file list")
    counts = Counter(f.rel_path for f in files)
    if len(counts) != len(files):
        dupes = sorted(r for r, n in counts.items() if n > 1)
        raise ValueError(f"duplicate rel_path in files: {dupes[:5]}")

    if len(files) == 1:
        return _split_one_file_by_bytes(files[0], heldout_fraction)

    candidates = [f for f in files if f.is_stdlib] or list(files)
    num_heldout = math.ceil(heldout_fraction * len(candidates))
    if num_heldout >= len(files):
        raise ValueError(
            f"heldout_fraction={heldout_fraction} leaves no training files out of {len(files)}"
        )
    ranked = sorted(candidates, key=lambda f: (_split_hash(salt, f.rel_path), f.rel_path))
    heldout_paths = {f.rel_path for f in ranked[:num_heldout]}
    train = sorted((f for f in files if f.rel_path not in heldout_paths), key=lambda f: f.rel_path)
    heldout = sorted((f for f in files if f.rel_path in heldout_paths), key=lambda f: f.rel_path)
    return train, heldout


def _split_one_file_by_bytes(
    file: CorpusFile, heldout_fraction: float
) -> tuple[list[CorpusFile], list[CorpusFile]]:
    data = _read_bytes(file)
    start = file.byte_start
    cut = start + _char_boundary(data, int(len(data) * (1.0 - heldout_fraction)))
    stop = start + len(data)
    if not start < cut < stop:
        raise ValueError(f"file {file.rel_path!r} ({len(data)} bytes) is too small to split")
    train = CorpusFile(file.rel_path, file.abs_path, file.is_stdlib, start, cut)
    heldout = CorpusFile(file.rel_path, file.abs_path, file.is_stdlib, cut, stop)
    return [train], [heldout]


def _read_bytes(file: CorpusFile, limit: int | None = None) -> bytes:
    """The file's bytes in [byte_start, byte_stop), at most `limit` of them."""
    with open(file.abs_path, "rb") as f:
        f.seek(file.byte_start)
        size = -1 if file.byte_stop is None else file.byte_stop - file.byte_start
        if limit is not None:
            size = limit if size < 0 else min(size, limit)
        return f.read(size)


def read_texts(files: Sequence[CorpusFile], max_bytes: int | None = None) -> list[str]:
    """Each file's text (UTF-8, undecodable bytes -> U+FFFD), stopping after max_bytes in total.

    The last text is cut at a character boundary so the texts hold at most max_bytes file bytes.
    """
    texts: list[str] = []
    budget = max_bytes
    for file in files:
        if budget is not None and budget <= 0:
            break
        data = _read_bytes(file, None if budget is None else budget + 4)
        if budget is not None and len(data) > budget:
            data = data[: _char_boundary(data, budget)]
        if budget is not None:
            budget -= len(data)
        texts.append(data.decode("utf-8", errors="replace"))
    return texts


def _cache_key(files: Sequence[CorpusFile], tokenizer: Tokenizer, max_bytes: int | None) -> str:
    # Size and mtime are part of the key so an edited file invalidates the cache.
    entries = []
    for f in files:
        st = os.stat(f.abs_path)
        entries.append(
            [f.rel_path, f.abs_path, f.byte_start, f.byte_stop, st.st_size, st.st_mtime_ns]
        )
    blob = json.dumps(
        {
            "v": 1,
            "tok": tokenizer.fingerprint,
            "sep": FILE_SEPARATOR,
            "max": max_bytes,
            "f": entries,
        }
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def _tokenize(texts: list[str], tokenizer: Tokenizer) -> np.ndarray:
    if isinstance(tokenizer, ByteTokenizer):
        # Fast path: one UTF-8 encode of the joined text; equals the per-file path below.
        return tokenizer.encode(FILE_SEPARATOR.join(texts))
    separator = tokenizer.encode(FILE_SEPARATOR)
    pieces: list[np.ndarray] = []
    for i in range(0, len(texts), _ENCODE_CHUNK_FILES):
        for ids in tokenizer.encode_many(texts[i : i + _ENCODE_CHUNK_FILES]):
            if pieces:
                pieces.append(separator)
            pieces.append(ids)
    return np.concatenate(pieces).astype(np.int32, copy=False)


def load_tokens(
    files: Sequence[CorpusFile],
    tokenizer: Tokenizer,
    max_bytes: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """Token ids of the files' texts, joined by "\\n\\n" -> int32 [num_tokens].

    Each file is encoded on its own (no merges across files) and the ids of "\\n\\n" go between
    files; no BOS/EOS is inserted (the batcher adds BOS per sample).
    max_bytes: stop after this many file bytes (the last file is cut).
    cache_dir: if given, the result is stored as `tokens-<key>.npy`, the key hashing the file
      list (paths, byte ranges, sizes, mtimes), the tokenizer fingerprint and max_bytes.
    """
    if not files:
        raise ValueError("load_tokens got an empty file list")
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes={max_bytes} must be positive or None")
    cache_path = None
    if cache_dir is not None:
        cache_path = os.path.join(
            cache_dir, f"tokens-{_cache_key(files, tokenizer, max_bytes)}.npy"
        )
        if os.path.isfile(cache_path):
            return np.load(cache_path)

    tokens = _tokenize(read_texts(files, max_bytes), tokenizer)
    if tokens.size == 0:
        raise ValueError(f"files {[f.rel_path for f in files[:5]]}... hold no text")

    if cache_path is not None:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{cache_path}.{os.getpid()}.tmp.npy"  # atomic: readers never see a partial file
        np.save(tmp, tokens)
        os.replace(tmp, cache_path)
    return tokens


@dataclass(frozen=True)
class CorpusStats:
    """Size of a corpus: files, bytes on disk, tokens (None if not tokenized), seconds to load."""

    num_files: int
    num_bytes: int
    num_tokens: int | None = None
    load_seconds: float | None = None


def corpus_stats(
    files: Sequence[CorpusFile],
    tokenizer: Tokenizer | None = None,
    max_bytes: int | None = None,
) -> CorpusStats:
    """Count files and bytes; with a tokenizer also tokens and the (uncached) load time."""
    num_bytes = sum(f.num_bytes for f in files)
    if max_bytes is not None:
        num_bytes = min(num_bytes, max_bytes)
    if tokenizer is None:
        return CorpusStats(len(files), num_bytes)
    start = time.perf_counter()
    tokens = load_tokens(files, tokenizer, max_bytes=max_bytes)
    return CorpusStats(len(files), num_bytes, int(tokens.size), time.perf_counter() - start)
