"""Head-wise kept sets identical to kvpress 0.5.5 (tests/fixtures/kvpress/*/headwise.npz, made
by tools/make_kvpress_head_fixtures.py): AdaKV over SnapKV and over Expected Attention,
Expected Attention alone, DuoAttention with given head scores. Our policies prefill the
fixture's post-RoPE q/k/v into an empty cache; the tokens each (layer, KV head) holds must be
exactly kvpress's."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcache.cache import AdaKV, Dense, ExpectedAttention, ExpectedScores, SnapVote, duo_layers

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kvpress"
FAMILIES = sorted(p.name for p in FIXTURES.glob("*") if (p / "headwise.npz").exists())
pytestmark = pytest.mark.skipif(not FAMILIES, reason="no head-wise kvpress fixtures; run "
                                "tools/make_kvpress_head_fixtures.py")
T, WINDOW, KERNEL = 96, 8, 5
POLICIES = {  # n_kept = int(96 * (1 - ratio)) per head, as kvpress
    "adakv_snapkv_r0.5": AdaKV(48, SnapVote(WINDOW, KERNEL), 0.2, 1),
    "adakv_snapkv_r0.75": AdaKV(24, SnapVote(WINDOW, KERNEL), 0.2, 1),
    "expected_r0.5": ExpectedAttention(48, ExpectedScores(512, 4, 0.0), 1.0, 1),
    "adakv_expected_r0.5": ExpectedAttention(48, ExpectedScores(512, 4, 1e-2), 0.2, 1),
}


@functools.partial(jax.jit, static_argnums=0)
def _prefill(policy, q_BHqTD, k_BHTD, v_BHTD):
    b, h, t, d = k_BHTD.shape
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    return policy.prefill(policy.init(b, h, d), k_BHTD, v_BHTD, pos, queries=q_BHqTD)


def _kept_mask(policy, state, num_heads):
    """``[H, T]`` bool: the tokens each head sees in the view (flat frame)."""
    flat = policy.view(state).flat()
    out = np.zeros((num_heads, T), bool)
    for h in range(num_heads):
        pos = np.asarray(flat.key_pos[0, h])[np.asarray(flat.valid[0, h])]
        out[h, pos] = True
    return out


def _layers(family):
    tensors = np.load(FIXTURES / family / "tensors.npz")
    return [tuple(jnp.asarray(tensors[x][layer][None]) for x in "qkv")
            for layer in range(tensors["k"].shape[0])]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("key", sorted(POLICIES))
def test_scored_presses(family, key):
    want = np.load(FIXTURES / family / "headwise.npz")[key]
    policy = POLICIES[key]
    for layer, (q, k, v) in enumerate(_layers(family)):
        got = _kept_mask(policy, _prefill(policy, q, k, v), k.shape[1])
        np.testing.assert_array_equal(got, want[layer], err_msg=f"{family} {key} layer {layer}")


@pytest.mark.parametrize("family", FAMILIES)
def test_duo_attention_with_given_head_scores(family):
    fixture = np.load(FIXTURES / family / "headwise.npz")
    want = fixture["duo_r0.5"]
    policies = duo_layers(fixture["duo_head_scores"], 0.5, 4, 16, Dense(T))
    for layer, (q, k, v) in enumerate(_layers(family)):
        got = _kept_mask(policies[layer], _prefill(policies[layer], q, k, v), k.shape[1])
        np.testing.assert_array_equal(got, want[layer], err_msg=f"{family} duo layer {layer}")


@pytest.mark.parametrize("family", FAMILIES)
def test_kvzip(family):
    """The fixture model loaded from its safetensors reconstructs the prompt after the stand-in
    repeat ids; the pairs kept in each layer's pool are kvpress's."""
    from lcache.cache.kvzip import kvzip_compress
    from lcache.hf import load_hf

    fixture = np.load(FIXTURES / family / "headwise.npz")
    model = load_hf(FIXTURES / family, with_tokenizer=False)[0]
    ids = np.load(FIXTURES / family / "kept.npz")["input_ids"]
    _, caches = kvzip_compress(model, ids, fixture["kvzip_repeat_ids"][None], ratio=0.5,
                               sinks=4, decode=1)
    want = fixture["kvzip_r0.5"]
    for layer, state in enumerate(caches):
        pos, owner = np.asarray(state.pos[0, 0]), np.asarray(state.owner[0, 0])
        got = np.zeros(want.shape[1:], bool)
        got[owner[pos >= 0], pos[pos >= 0]] = True
        np.testing.assert_array_equal(got, want[layer], err_msg=f"{family} kvzip layer {layer}")
