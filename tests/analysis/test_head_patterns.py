"""DuoAttention's calibration proxy (kvpress's on-the-fly scores): the formula against a loop
with complex-number RoPE, its uniform limit, and gates from a tiny model that build a policy."""

import numpy as np
from flax import nnx

from lcache.analysis.head_patterns import duo_proxy_gates, proxy_scores
from lcache.cache import Dense, duo_layers
from lcache.model import ModelConfig
from lcache.model.transformer import Transformer


def _loop(q_HqD, k_HkvD, inv_freq, q_len):
    hq, d = q_HqD.shape
    g = hq // k_HkvD.shape[0]

    def rot(x, p):  # rotate-half RoPE = complex multiplication of (x_i, x_{i + D/2})
        z = (x[: d // 2] + 1j * x[d // 2:]) * np.exp(1j * p * inv_freq)
        return np.concatenate([z.real, z.imag])

    out = []
    for h in range(hq):
        q = rot(q_HqD[h], q_len - 1)
        logits = np.array([rot(k_HkvD[h // g], j) @ q for j in range(q_len)]) / np.sqrt(d)
        w = np.exp(logits - logits.max())
        w /= w.sum()
        out.append(np.mean([w[: j + 1].sum() for j in range(q_len)]))
    return np.asarray(out).reshape(-1, g).mean(-1)


def test_proxy_formula():
    rng = np.random.default_rng(0)
    inv_freq = 1.0 / 10000 ** (np.arange(0, 16, 2) / 16)
    q, k = rng.normal(size=(4, 16)) * 2, rng.normal(size=(2, 16)) * 2
    np.testing.assert_allclose(proxy_scores(q, k, inv_freq, 40), _loop(q, k, inv_freq, 40),
                               rtol=1e-10)
    uniform = proxy_scores(np.zeros((4, 16)), k, inv_freq, 40)  # equal logits
    np.testing.assert_allclose(uniform, 41 / 80)


def test_gates_from_a_model_build_duo_layers():
    cfg = ModelConfig(vocab_size=64, dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      ffn_dim=64, max_seq_len=64)
    tokens = np.random.default_rng(1).integers(0, 64, (3, 24))
    gates = duo_proxy_gates(Transformer(cfg, nnx.Rngs(0)), tokens, q_len=32)
    assert gates.shape == (2, 2) and np.isfinite(gates).all()
    assert ((gates > 0) & (gates <= 1)).all()
    layers = duo_layers(gates, 0.5, 2, 4, Dense(32))
    assert sum(len(g[0]) for layer in layers for g in layer.groups) == 4
