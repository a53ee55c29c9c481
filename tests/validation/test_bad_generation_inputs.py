"""Bad inputs to generation, sampling, the model's cached entry points and ``ModelConfig``:
each raises a clear error before any work (nothing here compiles, except the valid input)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lcache.cache import Dense, StreamingLLM
from lcache.generate import generate
from lcache.model import ModelConfig, Transformer
from lcache.sampling import Sampling, sample_logits

CFG = ModelConfig(vocab_size=64, dim=16, num_layers=1, num_heads=2, num_kv_heads=1, ffn_dim=32,
                  max_seq_len=64)
NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def model():
    return Transformer(CFG, nnx.Rngs(0))


GENERATE = [
    ("policy_none", dict(policy=None), TypeError,
     "policy must be a cache Policy or a sequence of one Policy per layer, got NoneType"),
    ("policy_count", dict(policy=(Dense(64),) * 2), ValueError,
     "got 2 per-layer policies for 1 layers"),
    ("float_ids", dict(prompts=[[1.0, 2.7]]), TypeError,
     r"prompt 0 must be a flat sequence of integer token ids, got float64"),
    ("string_prompts", dict(prompts="hello"), TypeError,
     "prompts must be a sequence of token-id sequences, got str"),
    ("nested_prompt", dict(prompts=[[[1, 2]]]), TypeError, r"of shape \(1, 2\)"),
    ("id_past_vocab", dict(prompts=[[1, 64]]), ValueError,
     r"token id 64 outside the vocabulary \[0, 64\)"),
    ("negative_id", dict(prompts=[[1, -2]]), ValueError, "token id -2 outside the vocabulary"),
    ("top_k_past_vocab", dict(sampling=Sampling(temperature=1.0, top_k=65)), ValueError,
     "Sampling.top_k=65 exceeds the vocabulary of 64 tokens"),
    ("eos_past_vocab", dict(sampling=Sampling(eos_id=64)), ValueError,
     r"Sampling\.eos_id=64 is outside the vocabulary \[0, 64\): no row would ever stop"),
    ("sampling_dict", dict(sampling={"max_new_tokens": 3}), TypeError,
     "sampling must be a Sampling"),
    ("dense_too_small", dict(prompts=[[1] * 20], policy=Dense(22)), ValueError,
     r"Dense\(max_len=22\) cannot hold 20 prompt \+ 3 new"),
]


@pytest.mark.parametrize("kw,error,match", [c[1:] for c in GENERATE],
                         ids=[c[0] for c in GENERATE])
def test_bad_generate_arguments(model, kw, error, match):
    args = dict(prompts=[[1, 2, 3]], policy=Dense(64), sampling=Sampling(max_new_tokens=3)) | kw
    with pytest.raises(error, match=match):
        generate(model, args["prompts"], args["policy"], args["sampling"])


def test_a_prompt_that_fits_is_accepted_whatever_the_padding(model):
    """20 tokens pad to 32, but 20 + 3 fit Dense(24): only real tokens are stored."""
    out = generate(model, [list(range(1, 21))], Dense(24), Sampling(max_new_tokens=3))
    assert out[0].shape == (3,)


SAMPLING = [
    ("temperature_nan", dict(temperature=NAN), ValueError, "Sampling.temperature must be finite"),
    ("temperature_inf", dict(temperature=INF), ValueError, "Sampling.temperature must be finite"),
    ("temperature_negative", dict(temperature=-0.5), ValueError, "must be >= 0, got -0.5"),
    ("top_p_zero", dict(top_p=0.0), ValueError, r"Sampling\.top_p must be in \(0, 1\]"),
    ("top_p_nan", dict(top_p=NAN), ValueError, "Sampling.top_p must be finite"),
    ("max_new_float", dict(max_new_tokens=2.5), TypeError,
     "Sampling.max_new_tokens must be an int, got float"),
    ("top_k_negative", dict(top_k=-1), ValueError, "Sampling.top_k must be >= 0"),
    ("eos_negative", dict(eos_id=-1), ValueError, "Sampling.eos_id must be >= 0"),
]


@pytest.mark.parametrize("kw,error,match", [c[1:] for c in SAMPLING],
                         ids=[c[0] for c in SAMPLING])
def test_bad_sampling(kw, error, match):
    with pytest.raises(error, match=match):
        Sampling(**kw)


def test_sample_logits_checks_top_k_while_tracing():
    with pytest.raises(ValueError, match="top_k=9 exceeds the vocabulary of 8 tokens"):
        jax.jit(lambda lg: sample_logits(lg, jax.random.key(0), Sampling(temperature=1.0,
                                                                         top_k=9)))(
            jnp.zeros((1, 8)))


def cached(model, policy, t):
    caches = model.init_cache(policy, 1)
    return caches, jnp.arange(t, dtype=jnp.int32)[None]


MODEL_CALLS = [
    ("prefill_past_dense", lambda m: m.prefill(jnp.ones((1, 20), jnp.int32),
                                               *cached(m, Dense(8), 20)[::-1], Dense(8)),
     ValueError, r"Dense\.prefill: position 19 is past Dense\(max_len=8\)"),
    ("prefill_float_tokens", lambda m: m.prefill(jnp.ones((1, 4)), *cached(m, Dense(8), 4)[::-1],
                                                 Dense(8)),
     TypeError, "Transformer.prefill: tokens must be an int array, got float32"),
    ("prefill_id_past_vocab", lambda m: m.prefill(jnp.full((1, 4), 64, jnp.int32),
                                                  *cached(m, Dense(8), 4)[::-1], Dense(8)),
     ValueError, r"Transformer\.prefill: token id 64 outside the vocabulary \[0, 64\)"),
    ("prefill_pos_shape", lambda m: m.prefill(jnp.ones((1, 4), jnp.int32),
                                              jnp.arange(3)[None], cached(m, Dense(8), 4)[0],
                                              Dense(8)),
     ValueError, r"pos must be \[B=1, T=4\], got shape \(1, 3\)"),
    ("decode_cache_count", lambda m: m.decode(jnp.ones((1,), jnp.int32), jnp.zeros((1,), jnp.int32),
                                              [], Dense(8)),
     ValueError, "caches must be the list of 1 per-layer states from init_cache"),
    ("init_cache_none", lambda m: m.init_cache(None, 1), TypeError,
     "policy must be a cache Policy"),
    ("stream_from_100", lambda m: m.prefill(jnp.ones((1, 4), jnp.int32), jnp.arange(100, 104)[None],
                                            m.init_cache(StreamingLLM(8, 2), 1),
                                            StreamingLLM(8, 2)),
     ValueError, "starts its stream at position 100"),
]


@pytest.mark.parametrize("call,error,match", [c[1:] for c in MODEL_CALLS],
                         ids=[c[0] for c in MODEL_CALLS])
def test_bad_model_calls(model, call, error, match):
    with pytest.raises(error, match=match):
        call(model)


CONFIGS = [
    ("rope_theta_zero", dict(rope_theta=0), ValueError, r"ModelConfig\.rope_theta must be > 0"),
    ("rope_theta_negative", dict(rope_theta=-1e4), ValueError, "rope_theta must be > 0"),
    ("rope_theta_nan", dict(rope_theta=NAN), ValueError, "rope_theta must be finite"),
    ("dim_float", dict(dim=16.0), TypeError, r"ModelConfig\.dim must be an int, got float"),
    ("tie_str", dict(tie_embeddings="no"), TypeError, "tie_embeddings must be a bool"),
    ("norm_eps_nan", dict(norm_eps=NAN), ValueError, "norm_eps must be finite"),
    ("sigmoid_bias_inf", dict(sigmoid_bias=-INF), ValueError, "sigmoid_bias must be finite"),
    ("llama3_equal_factors", dict(rope_scaling="llama3", rope_low_freq_factor=4.0), ValueError,
     "rope_high_freq_factor > rope_low_freq_factor"),
    ("rope_factor_zero", dict(rope_factor=0), ValueError, "rope_factor must be > 0"),
]


@pytest.mark.parametrize("kw,error,match", [c[1:] for c in CONFIGS],
                         ids=[c[0] for c in CONFIGS])
def test_bad_model_config(kw, error, match):
    with pytest.raises(error, match=match):
        CFG.replace(**kw)


def test_numpy_ints_are_ints():
    assert CFG.replace(dim=np.int64(32)).dim == 32
    assert Sampling(max_new_tokens=np.int32(4), temperature=1).max_new_tokens == 4
