"""Reading model files with errors that name the file and what is wrong with it.

Shared by ``lcache.checkpoint`` (our exports) and ``lcache.hf`` (Hugging Face folders): a corrupt
JSON file, a truncated or foreign safetensors file and non-finite weights each raise a
``ValueError`` that starts with the file's path, instead of a bare ``JSONDecodeError`` or
``SafetensorError`` from the parsing library.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

import numpy as np
from safetensors import SafetensorError, safe_open


def read_json(path: str) -> dict:
    """The JSON object in ``path`` (``FileNotFoundError`` / ``ValueError`` naming the file)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got a {type(data).__name__}")
    return data


@contextlib.contextmanager
def open_safetensors(path: str) -> Iterator:
    """``safe_open(path, "np")`` whose parsing errors (truncated file, bad header) name ``path``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safe_open(path, "np") as f:
            yield f
    except SafetensorError as e:
        raise ValueError(f"{path}: not a readable safetensors file, truncated or corrupt "
                         f"({e})") from e


def check_finite(path: str, name: str, array: np.ndarray) -> None:
    """Raise if the weight ``name`` read from ``path`` holds NaN or infinite values."""
    if np.issubdtype(array.dtype, np.integer):
        return
    bad = ~np.isfinite(array)
    if bad.any():
        raise ValueError(f"{path}: tensor {name!r} holds {int(bad.sum())} non-finite values "
                         f"(NaN/inf) of {array.size}")
