"""An HF ``tokenizer.json`` (``tokenizers`` library) behind our ``Tokenizer`` protocol.

Special ids come from, in order: ``tokenizer_meta.json`` (written by ``save``), the model's
``config.json`` (``bos_token_id`` / ``eos_token_id`` / ``pad_token_id``; the first of a list), then
``tokenizer_config.json`` (``bos_token`` ... as strings). A missing pad falls back to EOS.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence

import numpy as np

from lcache.files import read_json

TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"
_SPECIALS = ("bos", "eos", "pad")


def _read_json(path: str) -> dict:
    """The JSON object in ``path``, ``{}`` if there is no such file."""
    return read_json(path) if os.path.isfile(path) else {}


def _special_id(name: str, hf_tokenizer, meta: dict, config: dict, tok_config: dict):
    """Id of special ``name`` ('bos', 'eos', 'pad') or None."""
    if meta.get(f"{name}_id") is not None:
        return int(meta[f"{name}_id"])
    value = config.get(f"{name}_token_id")
    if isinstance(value, list):
        value = value[0] if value else None
    if value is not None:
        return int(value)
    token = tok_config.get(f"{name}_token")
    if isinstance(token, dict):
        token = token.get("content")
    return hf_tokenizer.token_to_id(token) if isinstance(token, str) else None


class HFTokenizer:
    """Wraps a ``tokenizers.Tokenizer``; ``encode`` never adds BOS/EOS, ``decode`` drops
    specials (like our other tokenizers)."""

    kind = "hf"

    def __init__(self, hf_tokenizer, bos_id: int, eos_id: int, pad_id: int):
        self._hf = hf_tokenizer
        self.vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        for name, val in dict(bos_id=bos_id, eos_id=eos_id, pad_id=pad_id).items():
            if not 0 <= val < self.vocab_size:
                raise ValueError(f"{name}={val} outside the tokenizer vocabulary "
                                 f"[0, {self.vocab_size})")
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        digest = hashlib.sha256(f"{hf_tokenizer.to_str()}{bos_id},{eos_id},{pad_id}".encode())
        self._fingerprint = "hf-" + digest.hexdigest()[:16]

    @classmethod
    def from_dir(cls, directory: str | os.PathLike, config: dict | None = None) -> HFTokenizer:
        """Load ``tokenizer.json`` from an HF model folder (or a folder written by ``save``).
        ``config``: the model's parsed ``config.json`` (read from the folder when None)."""
        from tokenizers import Tokenizer

        directory = os.fspath(directory)
        path = os.path.join(directory, TOKENIZER_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {TOKENIZER_FILE} in {directory!r} (a sentencepiece-only "
                                    "tokenizer.model is not supported)")
        hf = Tokenizer.from_file(path)
        if config is None:
            config = _read_json(os.path.join(directory, "config.json"))
        sources = (_read_json(os.path.join(directory, META_FILE)), config,
                   _read_json(os.path.join(directory, "tokenizer_config.json")))
        ids = {name: _special_id(name, hf, *sources) for name in _SPECIALS}
        for name in ("bos", "eos"):
            if ids[name] is None:
                raise ValueError(f"{directory!r}: no {name} token: set {name}_token_id in "
                                 f"config.json or {name}_token in tokenizer_config.json")
        pad = ids["eos"] if ids["pad"] is None else ids["pad"]
        return cls(hf, ids["bos"], ids["eos"], pad)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def encode(self, text: str) -> np.ndarray:
        """Text -> int32 ids [n]; no BOS/EOS added."""
        return np.asarray(self._hf.encode(text, add_special_tokens=False).ids, np.int32)

    def encode_many(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Batch encode (multi-threaded in Rust); one int32 array per text."""
        encodings = self._hf.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, np.int32) for e in encodings]

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Ids -> text; specials are dropped."""
        ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1)
        return self._hf.decode(ids.tolist(), skip_special_tokens=True)

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_meta.json`` (kind 'hf' and the special ids);
        ``HFTokenizer.from_dir(directory)`` reads them back."""
        os.makedirs(directory, exist_ok=True)
        self._hf.save(os.path.join(directory, TOKENIZER_FILE))
        meta = {"kind": self.kind, **{f"{n}_id": getattr(self, f"{n}_id") for n in _SPECIALS}}
        with open(os.path.join(directory, META_FILE), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=True)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HFTokenizer) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self._fingerprint)

    def __repr__(self) -> str:
        return (f"HFTokenizer(vocab_size={self.vocab_size}, bos={self.bos_id}, "
                f"eos={self.eos_id}, pad={self.pad_id})")
