"""DuoAttention's gate optimisation: with no L1 the gates stay at 1 (the full model is the
teacher: zero loss); a sequence within sink + recent makes every head's streaming output equal
its full output, so the L1 penalty alone drives every gate to 0; gates stay in [0, 1]; a long
sequence and a mild penalty lower the loss; bad inputs are refused."""

import numpy as np
import pytest
from flax import nnx

from lcache.analysis.duo_optimise import _hidden, optimise_duo_gates
from lcache.model import ModelConfig
from lcache.model.transformer import Transformer


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(vocab_size=64, dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      ffn_dim=64, max_seq_len=64)
    return Transformer(cfg, nnx.Rngs(0))


def test_gates(model):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, (2, 24))
    answer = np.zeros((2, 24), bool)
    answer[:, -4:] = True
    gates, losses = optimise_duo_gates(model, tokens, answer, sink=2, recent=4, steps=6, l1=0.0)
    np.testing.assert_allclose(gates, 1.0)
    np.testing.assert_allclose(losses, 0.0, atol=1e-6)
    gates, _ = optimise_duo_gates(model, tokens[:, :6], np.ones((2, 6), bool), sink=2,
                                  recent=4, steps=30, lr=0.2, l1=1.0)
    np.testing.assert_allclose(gates, 0.0, atol=1e-6)
    gates, losses = optimise_duo_gates(model, tokens, answer, sink=1, recent=2, steps=30,
                                       lr=0.05, l1=0.01)
    assert ((gates >= 0) & (gates <= 1)).all() and losses[-1] < losses[0]
    with pytest.raises(ValueError, match="answer tokens in every row"):
        optimise_duo_gates(model, tokens, np.zeros((2, 24), bool), steps=1)


def test_mixed_forward_at_gate_one_is_the_model(model):
    tokens = np.random.default_rng(1).integers(0, 64, (1, 12))
    _, hidden = model(tokens, return_hidden=True)
    got = _hidden(model, tokens, np.ones((2, 2), np.float32), 1, 2)
    np.testing.assert_allclose(got, hidden[-1], atol=1e-5)
