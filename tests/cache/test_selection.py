"""The selection primitive against a sort of the union, and its edge cases."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lcache.cache import keep_top, select

INF = np.inf
VALUES = st.sampled_from([-INF, INF, 0.0, 1.0, 2.0, 3.0])  # ties and specials on purpose


@functools.partial(jax.jit, static_argnums=2)
def run_select(slot, new, keep):
    return select(slot, new, keep)


@settings(max_examples=30, deadline=None)
@given(shape=st.sampled_from([(5, 3, None), (5, 3, 2), (1, 4, None)]), data=st.data())
def test_keeps_top_of_union(shape, data):
    c, t, keep = shape
    slot = np.array(data.draw(st.lists(VALUES, min_size=c, max_size=c)), np.float32)
    new = np.array(data.draw(st.lists(VALUES, min_size=t, max_size=t)), np.float32)
    dest, kept = run_select(jnp.asarray(slot)[None, None], jnp.asarray(new)[None, None], keep)
    dest, kept = np.asarray(dest[0, 0]), np.asarray(kept[0, 0])
    written = dest[dest < c]
    assert len(set(written.tolist())) == len(written)  # one token per slot
    # a written slot held nothing worth keeping
    assert all(slot[d] == -INF or not kept[d] or new[list(dest).index(d)] > slot[d]
               for d in written)
    final = np.where(kept, slot, -INF)
    final[written] = new[dest < c]
    budget = min(c, keep if keep is not None else c)
    expected = np.sort(np.concatenate([slot, new]))[::-1][:budget]
    np.testing.assert_array_equal(np.sort(final[final > -INF])[::-1], expected[expected > -INF])


def test_empty_cache_fills_lowest_slots_first():
    dest, kept = run_select(jnp.full((1, 1, 4), -INF), jnp.array([[[1.0, 3.0]]]), None)
    assert np.asarray(dest).ravel().tolist() == [1, 0]  # best new token -> first free slot
    assert not np.asarray(kept).any()


def test_all_protected_keeps_the_cache():
    dest, _ = run_select(jnp.full((1, 1, 3), INF), jnp.array([[[INF]]]), None)
    assert np.asarray(dest).ravel().tolist() == [3]  # dropped: the tie keeps what is cached


def test_capacity_one_and_padding():
    dest, _ = run_select(jnp.array([[[0.5]]]), jnp.array([[[1.0, -INF, 0.7]]]), None)
    assert np.asarray(dest).ravel().tolist() == [0, 1, 1]
    dest, _ = run_select(jnp.array([[[0.5]]]), jnp.array([[[-INF]]]), None)
    assert np.asarray(dest).ravel().tolist() == [1]  # padding never enters


def test_keep_top_per_row_budget():
    pri = jnp.array([[[3.0, 1.0, -INF, 2.0]], [[0.0, 0.0, 0.0, 0.0]]])
    mask = np.asarray(keep_top(pri, jnp.array([2, 3])))
    assert mask[0, 0].tolist() == [True, False, False, True]
    assert mask[1, 0].tolist() == [True, True, True, False]  # ties: lower index first
