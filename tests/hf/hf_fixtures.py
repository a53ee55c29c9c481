"""Helpers for the HF import tests: fixture folders, cached loads, folder surgery."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np

from lcache.hf import load_hf

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf"
FAMILIES = ("llama", "qwen2", "mistral")


@functools.cache
def loaded(family: str):
    """``(model, tokenizer, hf_config)`` of a fixture folder, fp32, loaded once per session."""
    return load_hf(FIXTURES / family)


@functools.cache
def reference(family: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / family / "reference.npz") as f:
        return dict(f)


def copy_fixture(tmp_path: Path, family: str) -> Path:
    """A writable copy of the ``family`` fixture folder under ``tmp_path``."""
    dst = tmp_path / family
    shutil.copytree(FIXTURES / family, dst)
    return dst


def edit_config(folder: Path, **changes) -> None:
    """Set (or, with value ``...``, delete) top-level fields of ``folder/config.json``."""
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg))
