"""Tokenizers: a byte-level one (no training) and a byte-level BPE one (HuggingFace `tokenizers`).

Both follow the `Tokenizer` protocol below: `encode` maps text to a 1-D int32 array of ids and
never adds BOS/EOS (callers decide where specials go), `decode` drops specials. `save(directory)`
writes `tokenizer_meta.json` (plus `tokenizer.json` for BPE) and `load_tokenizer(directory)`
reads it back.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from lcache.files import read_json

META_FILENAME = "tokenizer_meta.json"
BPE_FILENAME = "tokenizer.json"
BPE_SPECIAL_TOKENS = ("<bos>", "<eos>", "<pad>")


@runtime_checkable
class Tokenizer(Protocol):
    """What the data layer needs from a tokenizer.

    Attributes:
      kind: "byte" or "bpe"; stored in `tokenizer_meta.json`.
      fingerprint: short string that changes whenever the id mapping changes (cache key).
      vocab_size: number of ids, specials included; every id is in [0, vocab_size).
      bos_id, eos_id, pad_id: ids of the special tokens.
    """

    kind: str
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int

    @property
    def fingerprint(self) -> str: ...

    def encode(self, text: str) -> np.ndarray:
        """Text -> int32 ids [n]; no BOS/EOS added."""
        ...

    def encode_many(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Like `encode` for each text; may run in parallel."""
        ...

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Ids -> text; special ids are dropped."""
        ...

    def save(self, directory: str | os.PathLike) -> None:
        """Write the tokenizer so `load_tokenizer(directory)` returns an equal one."""
        ...


def _write_meta(directory: str | os.PathLike, meta: dict) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, META_FILENAME), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, sort_keys=True)


class ByteTokenizer:
    """UTF-8 bytes as ids: 0..255 are bytes, then BOS=256, EOS=257, PAD=258 (vocab_size=259)."""

    kind = "byte"
    vocab_size = 259
    bos_id = 256
    eos_id = 257
    pad_id = 258

    @property
    def fingerprint(self) -> str:
        return "byte-v1"

    def encode(self, text: str) -> np.ndarray:
        """Text -> int32 ids [len(text.encode("utf-8"))], one id per UTF-8 byte."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def encode_many(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Ids -> text; ids >= 256 (specials) are dropped, broken UTF-8 becomes U+FFFD."""
        ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1)
        byte_ids = ids[(ids >= 0) & (ids < 256)].astype(np.uint8)
        return byte_ids.tobytes().decode("utf-8", errors="replace")

    def save(self, directory: str | os.PathLike) -> None:
        _write_meta(directory, {"kind": self.kind})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTokenizer)

    def __hash__(self) -> int:
        return hash(self.kind)

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=259)"


def _read_training_text(item) -> str:
    """A training item is either text (str) or a file (os.PathLike or an object with abs_path)."""
    if isinstance(item, str):
        return item
    path = getattr(item, "abs_path", item)
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"training item must be text, a path or a CorpusFile, got {item!r}")
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


class BPETokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenizer and decoder) from HuggingFace `tokenizers`.

    Special tokens `<bos>`, `<eos>`, `<pad>` are ids 0, 1, 2. Text that happens to contain the
    literal string "<eos>" is encoded as ordinary bytes, never as the special id, because source
    code corpora do contain such strings and they must not inject specials into training data.
    """

    kind = "bpe"

    def __init__(self, hf_tokenizer):
        """Wrap a trained `tokenizers.Tokenizer` that has the three special tokens."""
        missing = [t for t in BPE_SPECIAL_TOKENS if hf_tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing}")
        hf_tokenizer.encode_special_tokens = True  # see class docstring
        self._hf = hf_tokenizer
        self.vocab_size = hf_tokenizer.get_vocab_size()
        self.bos_id, self.eos_id, self.pad_id = (
            hf_tokenizer.token_to_id(t) for t in BPE_SPECIAL_TOKENS
        )
        self._fingerprint = "bpe-" + hashlib.sha256(hf_tokenizer.to_str().encode()).hexdigest()[:16]

    @classmethod
    def train(
        cls,
        texts_or_files: Iterable[str | os.PathLike],
        vocab_size: int,
        min_frequency: int = 2,
    ) -> BPETokenizer:
        """Train on texts (str items) and/or files (os.PathLike or CorpusFile items).

        vocab_size counts the 256 byte symbols and 3 specials, so it must be >= 259; the result
        can be smaller than asked when the data has too few frequent pairs.
        """
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < 259:
            raise ValueError(f"vocab_size={vocab_size} must be >= 259 (256 bytes + 3 specials)")
        if min_frequency < 1:
            raise ValueError(f"min_frequency={min_frequency} must be >= 1")
        if isinstance(texts_or_files, (str, os.PathLike)):
            raise ValueError("texts_or_files must be a collection of texts or files, not one item")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(BPE_SPECIAL_TOKENS),
            # All 256 byte symbols up front, so any text is encodable, even unseen bytes.
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator((_read_training_text(x) for x in texts_or_files), trainer=trainer)
        return cls(hf)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> BPETokenizer:
        """Load a `tokenizer.json` written by `save` (or any compatible HF tokenizer file)."""
        from tokenizers import Tokenizer as HFTokenizer

        if not os.path.isfile(path):
            raise ValueError(f"no tokenizer file at {os.fspath(path)!r}")
        return cls(HFTokenizer.from_file(os.fspath(path)))

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def encode(self, text: str) -> np.ndarray:
        """Text -> int32 ids [n]; no BOS/EOS added."""
        return np.asarray(self._hf.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def encode_many(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Batch encode (multi-threaded in Rust); one int32 array per text."""
        encodings = self._hf.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Ids -> text; specials are dropped."""
        ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1)
        return self._hf.decode(ids.tolist(), skip_special_tokens=True)

    def save(self, directory: str | os.PathLike) -> None:
        _write_meta(directory, {"kind": self.kind, "vocab_size": self.vocab_size})
        self._hf.save(os.path.join(directory, BPE_FILENAME))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BPETokenizer) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self._fingerprint)

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, fingerprint={self._fingerprint!r})"


TOKENIZER_KINDS = ("byte", "bpe")


def make_tokenizer(
    kind: str,
    *,
    texts_or_files: Iterable[str | os.PathLike] | None = None,
    vocab_size: int | None = None,
    min_frequency: int = 2,
    path: str | os.PathLike | None = None,
) -> Tokenizer:
    """Build a tokenizer by kind.

    "byte": `ByteTokenizer()`; other arguments must be left unset.
    "bpe": load from `path` (a directory written by `save`, or a `tokenizer.json`), or train on
    `texts_or_files` with `vocab_size` (see `BPETokenizer.train`).
    """
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {TOKENIZER_KINDS}")
    if kind == "byte":
        if texts_or_files is not None or vocab_size is not None or path is not None:
            raise ValueError("the byte tokenizer takes no texts_or_files, vocab_size or path")
        return ByteTokenizer()
    if path is not None:
        if texts_or_files is not None:
            raise ValueError("give either path or texts_or_files for a bpe tokenizer, not both")
        if os.path.isdir(path):
            return load_tokenizer(path)
        return BPETokenizer.from_file(path)
    if texts_or_files is None or vocab_size is None:
        raise ValueError("a bpe tokenizer needs path=..., or texts_or_files=... and vocab_size=...")
    return BPETokenizer.train(texts_or_files, vocab_size, min_frequency=min_frequency)


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Read a tokenizer written by `save(directory)`."""
    meta_path = os.path.join(directory, META_FILENAME)
    if not os.path.isfile(meta_path):
        raise ValueError(f"no {META_FILENAME} in {os.fspath(directory)!r}")
    kind = read_json(meta_path).get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.from_file(os.path.join(directory, BPE_FILENAME))
    if kind == "hf":  # a Hugging Face tokenizer.json saved with an imported model
        from lcache.hf import HFTokenizer

        return HFTokenizer.from_dir(directory)
    raise ValueError(f"unknown tokenizer kind {kind!r} in {meta_path!r}")
