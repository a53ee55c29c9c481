"""Bad inputs to experiment configs (``--config=configs/x.py:args``), the policy registry and the
kernels' dispatch: each raises a clear error before any work."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from configs import passkey, train
from configs.common import parse_arg
from lcache.attention.decode import decode_over_view
from lcache.cache import Dense
from lcache.cache.registry import build
from pallas_kernels.decode import decode_attention

CONFIGS = [
    ("int_value", lambda: parse_arg("small,steps=abc", variant="smoke", steps=0),
     "config arg steps='abc' in 'small,steps=abc' is not a valid int"),
    ("bool_value", lambda: parse_arg("small,gated=maybe", variant="smoke", gated=False),
     r"config arg gated='maybe' .* is not a bool; use one of"),
    ("float_value", lambda: parse_arg("wd=high", variant="smoke", wd=0.5),
     "config arg wd='high' in 'wd=high' is not a valid float"),
    ("unknown_key", lambda: parse_arg("small,stpes=3", variant="smoke", steps=0),
     "unknown config arg 'stpes'"),
    ("bare_word_late", lambda: parse_arg("steps=3,small", variant="smoke", steps=0),
     "bare word 'small' must come first"),
    ("train_variant", lambda: train.get_config("huge"), "unknown train variant 'huge'"),
    ("passkey_variant", lambda: passkey.get_config("nope"), "unknown passkey variant 'nope'"),
]


@pytest.mark.parametrize("make,match", [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_bad_experiment_config(make, match):
    with pytest.raises(ValueError, match=match):
        make()


REGISTRY = [
    ("unknown_policy", "nosuch", 8, {}, "unknown policy 'nosuch'"),
    ("unknown_argument", "h2o(recnt=0.5)", 8, {}, "h2o has no argument 'recnt'"),
    ("bad_value", "snapkv(window=0)", 64, dict(prompt_len=128), "argument window=0 must be"),
    ("malformed", "snapkv(window=", 64, dict(prompt_len=128), "malformed policy spec"),
    ("mla_storage", "h2o@mla", 8, {}, "'@mla' is not a storage"),
    ("too_small", "streaming_llm(sinks=4)", 4, {}, "cannot hold a budget of 4 tokens"),
    ("larger_than_prompt", "snapkv(window=8)", 200, dict(prompt_len=100),
     "larger than the 100-token prompt"),
    ("fractional_budget", "h2o", 8.5, {}, "budget must be a whole number of tokens"),
]


@pytest.mark.parametrize("spec,budget,ctx,match", [c[1:] for c in REGISTRY],
                         ids=[c[0] for c in REGISTRY])
def test_bad_policy_spec(spec, budget, ctx, match):
    with pytest.raises(ValueError, match=match):
        build(spec, budget, **ctx)


Q, KV, VALID = jnp.ones((1, 4, 8)), jnp.ones((1, 2, 16, 8)), jnp.ones((1, 2, 16), bool)
KERNELS = [
    ("unknown_impl", lambda: decode_attention(Q, KV, KV, VALID, impl="cuda"),
     r"impl must be one of \('xla', 'pallas', 'auto'\), got 'cuda'"),
    ("query_rank", lambda: decode_attention(Q[:, None], KV, KV, VALID, impl="xla"),
     r"q must be \[B, Hq, D\]"),
    ("valid_dtype", lambda: decode_attention(Q, KV, KV, VALID.astype(jnp.int32), impl="xla"),
     "valid must be bool"),
    ("query_group", lambda: decode_attention(jnp.ones((1, 3, 8)), KV, KV, VALID, impl="xla"),
     "must be a multiple of Hkv=2"),
    ("pallas_variant", lambda: decode_over_view(Q, Dense(16).view(Dense(16).init(1, 2, 8)), None,
                                                variant="sigmoid", impl="pallas"),
     r"attention_impl='pallas' supports .*got 'sigmoid'"),
]


@pytest.mark.parametrize("call,match", [c[1:] for c in KERNELS], ids=[c[0] for c in KERNELS])
def test_bad_kernel_dispatch(call, match):
    with pytest.raises(ValueError, match=match):
        call()
