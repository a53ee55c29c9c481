"""Generation: greedy equals a naive loop, determinism, sampling filters, one compile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lcache.cache import Dense
from lcache.eval import SHARED
from lcache.generate import generate
from lcache.model import ModelConfig, Transformer
from lcache.sampling import Sampling, sample_logits

CFG = ModelConfig(vocab_size=61, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=48)


@pytest.fixture(scope="module")
def model():
    return Transformer(CFG, nnx.Rngs(3))


def test_greedy_matches_naive_loop_for_ragged_batch(model):
    prompts = [[1, 5, 9, 2, 7, 7, 3], [4, 8], [11, 12, 13, 14]]
    outs = generate(model, prompts, Dense(64), Sampling(max_new_tokens=12))
    forward = nnx.jit(lambda m, t: m(t))  # one shape: causal, so right padding changes nothing
    for prompt, out in zip(prompts, outs, strict=True):
        seq = list(prompt)
        for _ in range(12):
            padded = jnp.array([seq + [0] * (32 - len(seq))])
            seq.append(int(jnp.argmax(forward(model, padded)[0, len(seq) - 1])))
        assert list(out) == seq[len(prompt):]


def test_sampling_is_deterministic_per_seed(model):
    s = Sampling(max_new_tokens=16, temperature=1.0, top_k=20, top_p=0.9)
    a = generate(model, [[1, 2, 3]], Dense(64), s, seed=7)
    b = generate(model, [[1, 2, 3]], Dense(64), s, seed=7)
    c = generate(model, [[1, 2, 3]], Dense(64), s, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_eos_stops_row(model):
    greedy = generate(model, [[1, 2, 3]], Dense(64), Sampling(max_new_tokens=10))[0]
    eos = int(greedy[3])
    out = generate(model, [[1, 2, 3]], Dense(64), Sampling(max_new_tokens=10, eos_id=eos))[0]
    assert out[-1] == eos and len(out) == list(greedy).index(eos) + 1


def test_top_k_and_top_p_filters():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.key(0), 400)
    draw = lambda s: np.array([int(sample_logits(logits, k, s)[0]) for k in keys])
    assert set(draw(Sampling(temperature=1.0, top_k=2))) == {0, 1}
    assert set(draw(Sampling(temperature=1.0, top_p=0.7))) == {0, 1}
    assert set(draw(Sampling(temperature=1.0, top_p=0.1))) == {0}


def test_compiles_once_for_many_steps_and_prompts(model):
    before = SHARED.stats["generate"].compiles
    s = Sampling(max_new_tokens=64)
    generate(model, [[1, 2, 3]], Dense(128), s)
    generate(model, [[4, 5, 6, 7, 8]], Dense(128), s)  # same padded shape: no recompile
    assert SHARED.stats["generate"].compiles - before == 1


@pytest.mark.parametrize("prompts,policy,match", [
    ([[1, 2, 61]], Dense(64), "token id 61"),
    ([[]], Dense(64), "at least one token"),
    ([[1] * 40], Dense(48), "Dense\\(max_len=48\\)"),
])
def test_bad_input(model, prompts, policy, match):
    with pytest.raises(ValueError, match=match):
        generate(model, prompts, policy, Sampling(max_new_tokens=20))
