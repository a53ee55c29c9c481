"""Shared fixtures for the data-layer tests: the default corpus listing and a tiny BPE."""

import os
import sysconfig

import pytest

from lcache.data import BPETokenizer, list_files

STDLIB = sysconfig.get_paths()["stdlib"]
BPE_TRAINING_FILES = ("textwrap.py", "string.py", "bisect.py", "heapq.py")


@pytest.fixture(scope="session")
def default_files():
    # Listing walks ~10k files; once per session keeps the folder fast.
    return list_files()


@pytest.fixture(scope="session")
def small_bpe():
    """BPE with vocab 300 trained on four small stdlib modules (well under a second)."""
    paths = [os.path.join(STDLIB, name) for name in BPE_TRAINING_FILES]
    return BPETokenizer.train([os.path.abspath(p) for p in paths], vocab_size=300)
