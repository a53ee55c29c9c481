"""Tests of ``lcache.cache``: their programs are tiny, so compiling them is most of the cost."""

import jax
import pytest


@pytest.fixture(autouse=True)
def _compile_less():
    """Ask XLA for little optimisation while these tests compile (about 40% less time for the
    folder), restored afterwards so that tests elsewhere compile as usual. Results are the
    same; the flag is read at compile time only."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)
