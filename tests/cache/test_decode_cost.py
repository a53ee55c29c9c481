"""What a decode step's policy update costs, structurally: no sort and no gather when one slot
changes, one scatter per stored array (no score scatter for policies that keep none), and the
one-pass ``lowest`` breaks ties as the sort-based selection does."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.extend.core import ClosedJaxpr, Jaxpr

from lcache.cache import H2O, TOVA, Dense, KeyNorm, Random, SnapKV, StreamingLLM, ValueAware
from lcache.cache.selection import _worst_first, lowest


def _primitives(jaxpr, found=None):
    """Every primitive name in ``jaxpr``, nested jaxprs included (a multiset as a list)."""
    found = [] if found is None else found
    for eqn in jaxpr.eqns:
        found.append(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                if isinstance(sub, ClosedJaxpr | Jaxpr):
                    _primitives(getattr(sub, "jaxpr", sub), found)
    return found


@pytest.mark.parametrize("policy,scatters", [
    (Dense(16), 3), (StreamingLLM(window=6, num_sinks=2), 3), (H2O(heavy=4, recent=4), 4),
    (ValueAware(heavy=4, recent=4), 4), (SnapKV(6, window=2, decode_capacity=2), 4),
    (TOVA(8), 4), (KeyNorm(8), 4), (Random(8), 4),
], ids=lambda x: type(x).__name__ if not isinstance(x, int) else str(x))
def test_append_scatters_once_per_array_and_never_sorts(policy, scatters):
    state = policy.init(2, 3, 8)
    key = jnp.ones((2, 3, 8))
    prims = _primitives(jax.make_jaxpr(policy.append)(state, key, key, jnp.array([7, 9])).jaxpr)
    assert "sort" not in prims and "gather" not in prims and "top_k" not in prims
    assert prims.count("scatter") == scatters


VALUES = st.sampled_from([-np.inf, np.inf, 0.0, 1.0])  # ties and specials on purpose


@settings(max_examples=40, deadline=None)
@given(data=st.data(), c=st.integers(1, 9))
def test_lowest_is_the_first_of_the_sort(data, c):
    pri = jnp.asarray(data.draw(st.lists(VALUES, min_size=c, max_size=c)), jnp.float32)
    pos = jnp.asarray(data.draw(st.lists(st.integers(-2, 4), min_size=c, max_size=c)))
    index, value = lowest(pri[None, None], pos[None, None])
    want = _worst_first(pri[None, None], pos[None, None], min(2, c))[..., :1]
    assert index.item() == want.item() and value.item() == pri[want.item()]
