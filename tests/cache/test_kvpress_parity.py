"""Kept sets identical to NVIDIA kvpress 0.5.5 on the committed fixtures (tests/fixtures/kvpress).

The fixtures hold each layer's post-RoPE prefill queries/keys/values of a random tiny Llama and
Qwen2 and the sorted token indices each press kept per (layer, KV head). Our policies prefill the
same tensors into an empty cache; the stored positions must be exactly those indices.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcache.cache import (
    H2O,
    TOVA,
    Budget,
    KeyNorm,
    PrefillMass,
    SnapKV,
    StreamingLLM,
    observer_probs,
    observers,
    pyramid,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kvpress"
FAMILIES = sorted(p.name for p in FIXTURES.iterdir() if (p / "meta.json").exists()) \
    if FIXTURES.is_dir() else []

pytestmark = pytest.mark.skipif(
    not FAMILIES, reason=f"kvpress fixtures not generated yet ({FIXTURES} missing); run "
    "tools/make_kvpress_fixtures.py")


def load(family):
    d = FIXTURES / family
    meta = json.loads((d / "meta.json").read_text())
    return meta, dict(np.load(d / "tensors.npz")), dict(np.load(d / "kept.npz"))


def column_mass(q_BHqTD, k_BHTD):
    """Chunk ``PrefillMass`` of a full causal prefill: attention summed over queries and group."""
    b, h, t, _ = k_BHTD.shape
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    q, q_pos = observers(q_BHqTD, pos, t)
    probs = observer_probs(q, q_pos, k_BHTD, jnp.broadcast_to(pos[:, None], (b, h, t)))
    return probs.sum(axis=(2, 3))


@functools.partial(jax.jit, static_argnums=0)
def prefill_prompt(policy, q_BHqTD, k_BHTD, v_BHTD):
    """One prefill of a whole prompt into an empty cache (mass only for H2O-style policies)."""
    b, h, t, d = k_BHTD.shape
    state = policy.init(b, h, d)
    mass = None
    if isinstance(policy, H2O):
        mass = PrefillMass(cache=jnp.zeros((b, h, state.capacity)),
                           chunk=column_mass(q_BHqTD, k_BHTD))
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    return policy.prefill(state, k_BHTD, v_BHTD, pos, queries=q_BHqTD, mass=mass)


def kept_by(policy, q, k, v):
    """Sorted positions each (row, head) keeps: ``[B, H, n]``, rows being layers."""
    pos = np.asarray(prefill_prompt(policy, jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)).pos)
    return np.sort(pos, axis=-1)[..., (pos < 0).sum(-1).max():]


def policy_for(name, spec, t, layer, num_layers):
    """Our policy for a kvpress press entry of meta.json."""
    ratio, params = spec["compression_ratio"], spec["params"]
    budget = Budget.from_compression_ratio(ratio)
    n_kept = budget.resolve(t)
    if name.startswith("streamingllm"):
        return StreamingLLM.from_budget(n_kept, num_sinks=params["n_sink"], positions="original")
    if name.startswith("snapkv"):
        return SnapKV(budget=n_kept, window=params["window_size"], kernel=params["kernel_size"],
                      decode_capacity=0)
    if name.startswith("pyramidkv"):
        budgets = pyramid(budget, num_layers, t, window=params["window_size"],
                          beta=params["beta"], rounding="kvpress")
        assert list(budgets) == spec["n_kept"]
        return SnapKV(budget=budgets[layer], window=params["window_size"],
                      kernel=params["kernel_size"], decode_capacity=0)
    if name.startswith("knorm"):
        return KeyNorm(budget=n_kept)
    if name.startswith("tova"):
        return TOVA(budget=n_kept, window=1)
    if name.startswith("observedattention"):
        return H2O(heavy=n_kept, recent=0, normalize=True)
    raise AssertionError(f"no lcache policy mapped to press {name}")


CASES = [(family, press) for family in FAMILIES for press in load(family)[0]["presses"]]


@pytest.mark.parametrize("family,press", CASES)
def test_kept_sets_match_kvpress(family, press):
    meta, tensors, kept = load(family)
    spec = meta["presses"][press]
    t, num_layers = meta["T"], meta["num_layers"]
    q, k, v = tensors["q"], tensors["k"], tensors["v"]  # layers as batch rows
    keys = spec["npz_keys"]
    if len(keys) == 1:  # one budget for every layer: one call, layers as batch rows
        ours = kept_by(policy_for(press, spec, t, 0, num_layers), q, k, v)
        np.testing.assert_array_equal(ours, kept[keys[0]], err_msg=f"{family} {press}")
        return
    for layer, key in enumerate(keys):
        policy = policy_for(press, spec, t, layer, num_layers)
        sl = slice(layer, layer + 1)
        ours = kept_by(policy, q[sl], k[sl], v[sl])[0]
        np.testing.assert_array_equal(ours, kept[key], err_msg=f"{family} {press} layer {layer}")


def test_every_fixture_press_is_covered():
    names = {press.split("_r")[0] for _, press in CASES}
    expected = {"streamingllm", "snapkv", "pyramidkv", "knorm", "tova", "observedattention"}
    assert expected <= names, f"fixtures lack {expected - names}"
