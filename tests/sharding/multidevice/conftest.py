"""Shared fixtures of the 8-device tests: a tiny model, prompts and a compile counter."""

import jax
import numpy as np
import pytest
from flax import nnx

from lcache.model import ModelConfig, Transformer

# One layer, 2 KV heads (the `model` axis is 2), 8 prompts (the `data` axis is 4 or pmap 8).
CFG = ModelConfig(dim=32, num_layers=1, num_heads=4, num_kv_heads=2, ffn_dim=64)
PROMPT_LENGTHS = (5, 9, 12, 3, 16, 7, 10, 11)


@pytest.fixture(scope="session", autouse=True)
def eight_devices():
    if jax.device_count() < 8:
        pytest.exit("tests/sharding/multidevice needs 8 devices: run tests/sharding (it starts "
                    "them in a child with XLA_FLAGS=--xla_force_host_platform_device_count=8)")


@pytest.fixture(scope="session")
def model():
    return Transformer(CFG, nnx.Rngs(0))


@pytest.fixture(scope="session")
def prompts():
    rng = np.random.default_rng(0)
    return [rng.integers(0, CFG.vocab_size, n).tolist() for n in PROMPT_LENGTHS]


@pytest.fixture
def compiles():
    """``compiles()`` -> XLA compilations since the fixture was set up."""
    count = [0]

    def listener(event, duration, **kw):
        del duration, kw
        if event == "/jax/core/compile/backend_compile_duration":
            count[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield lambda: count[0]
    jax.monitoring.unregister_event_duration_listener(listener)
