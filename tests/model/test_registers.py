"""Register tokens (MuToR-style): layout, positions and masks against a numpy reference of the
interleaved sequence; the training forward against the plain model and against the decode-time
registers of self-speculative decoding; DeepSeek-style MTP shapes; bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lcache.cache import H2O, Dense
from lcache.model import ModelConfig, Transformer
from lcache.model.mtp import mtp_logits
from lcache.model.registers import (
    full_mask,
    register_forward,
    register_layout,
    register_positions,
)
from lcache.model.speculative import verify_block

TINY = dict(vocab_size=61, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=64)


def interleaved_reference(seq_len, every, depth, num_prefix):
    """MuToR's sequence written out: each text token, then the register that follows it (every
    ``every``-th token, offsets cycling 1..depth, targets inside the sequence). -> kinds, text
    anchors, positions and the mask of that sequence, built by the paper's rules."""
    kinds, anchors, positions = ["sink"] * num_prefix, [-1] * num_prefix, list(range(num_prefix))
    cycle = 0
    for t in range(seq_len):
        kinds.append("token"), anchors.append(t), positions.append(num_prefix + t)
        if (t + 1) % every == 0:
            d = 1 + cycle % depth
            cycle += 1
            if t + d <= seq_len:  # the target token t + d exists
                kinds.append(("reg", d)), anchors.append(t)
                positions.append(num_prefix + t + d - 1)  # the target's position minus one
    n = len(kinds)
    mask = np.zeros((n, n), bool)
    for i in range(n):
        for j in range(i + 1):  # causal in the interleaved order
            # a register key is seen by itself only: ordinary tokens never see registers,
            # registers never see each other
            mask[i, j] = kinds[j][0] != "reg" or i == j
    return kinds, np.array(anchors), np.array(positions), mask


@pytest.mark.parametrize("seq_len,every,depth,prefix", [(9, 1, 3, 0), (12, 2, 2, 1),
                                                        (7, 3, 4, 0), (5, 1, 1, 2)])
def test_layout_mask_and_positions_match_the_interleaved_reference(seq_len, every, depth,
                                                                   prefix):
    kinds, anchors, positions, mask = interleaved_reference(seq_len, every, depth, prefix)
    a, d = register_layout(seq_len, every, depth)
    regs = [i for i, k in enumerate(kinds) if k[0] == "reg"]
    ordinary = [i for i, k in enumerate(kinds) if k[0] != "reg"]
    np.testing.assert_array_equal(a, anchors[regs])
    np.testing.assert_array_equal(d, [kinds[i][1] for i in regs])
    np.testing.assert_array_equal(prefix + register_positions(a, d), positions[regs])
    order = ordinary + regs  # our layout: [ordinary | registers]
    np.testing.assert_array_equal(full_mask(seq_len, a, prefix), mask[np.ix_(order, order)])


@pytest.fixture(scope="module")
def model():
    return Transformer(ModelConfig(**TINY, register_depth=3, num_sink_tokens=1), nnx.Rngs(0))


def test_ordinary_logits_are_the_plain_models(model):
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 61)
    a, d = register_layout(12, 1, 3)
    logits, reg = register_forward(model, tokens, a, d)
    np.testing.assert_allclose(logits, model(tokens), atol=1e-5)
    assert reg.shape == (2, len(a), 61)


def test_a_register_sees_its_anchors_prefix_and_itself_only(model):
    tokens = jax.random.randint(jax.random.key(2), (1, 12), 0, 61)
    a, d = np.array([3, 3, 7], np.int32), np.array([2, 3, 1], np.int32)
    _, reg = register_forward(model, tokens, a, d)
    later = tokens.at[:, 4:].set((tokens[:, 4:] + 1) % 61)  # tokens after the first anchor
    _, reg_later = register_forward(model, later, a, d)
    np.testing.assert_allclose(reg_later[:, :2], reg[:, :2], atol=1e-6)
    assert not np.allclose(reg_later[:, 2], reg[:, 2], atol=1e-4)
    _, alone = register_forward(model, tokens, a[:1], d[:1])  # without the other registers
    np.testing.assert_allclose(alone[:, 0], reg[:, 0], atol=1e-5)


@pytest.mark.parametrize("mla,policy", [(False, Dense(32)), (True, Dense(32)),
                                        (False, H2O(heavy=16, recent=16))])
def test_decode_registers_equal_training_registers(mla, policy):
    """Both block modes (``'chunk'``: Dense; ``'steps'``: H2O, here never full)."""
    extra = dict(mla_kv_lora_rank=16, mla_qk_nope_dim=8, mla_qk_rope_dim=8, mla_v_dim=8) \
        if mla else {}
    m = Transformer(ModelConfig(**TINY, register_depth=3, **extra), nnx.Rngs(3))
    tokens = jax.random.randint(jax.random.key(4), (2, 10), 0, 61)
    a, d = np.array([9, 9], np.int32), np.array([2, 3], np.int32)
    _, reg = register_forward(m, tokens, a, d)
    caches = m.init_cache(policy, 2)
    pos = jnp.broadcast_to(jnp.arange(10, dtype=jnp.int32), (2, 10))
    _, caches = m.prefill(tokens[:, :8], pos[:, :8], caches, policy)
    logits, drafts, _ = verify_block(m, tokens[:, 8:], pos[:, 8:], caches, policy, (2, 3))
    np.testing.assert_allclose(drafts[:, 1], reg, atol=2e-5)  # anchored at block token 1
    np.testing.assert_allclose(logits, m(tokens)[:, 8:], atol=2e-5)


def test_mtp_shapes():
    m = Transformer(ModelConfig(**TINY, mtp_depth=2), nnx.Rngs(5))
    tokens = jax.random.randint(jax.random.key(6), (2, 9), 0, 61)
    logits, depths = mtp_logits(m, tokens)
    assert logits.shape == (2, 8, 61)
    assert [x.shape for x in depths] == [(2, 7, 61), (2, 6, 61)]
    np.testing.assert_allclose(logits, m(tokens[:, :-1]), atol=1e-6)


def test_bad_inputs():
    plain = Transformer(ModelConfig(**TINY), nnx.Rngs(0))
    with pytest.raises(ValueError, match="register_depth >= 1"):
        register_forward(plain, jnp.zeros((1, 4), jnp.int32), *register_layout(4, 1, 1))
    with pytest.raises(ValueError, match="mtp_depth >= 1"):
        mtp_logits(plain, jnp.zeros((1, 4), jnp.int32))
    with pytest.raises(ValueError, match="every >= 1"):
        register_layout(8, 0, 2)
    with pytest.raises(ValueError, match="sliding_window"):
        ModelConfig(**TINY, register_depth=2, sliding_window=4)
    with pytest.raises(ValueError, match="register_depth"):
        ModelConfig(**TINY, register_depth=-1)
