"""The Pallas decode kernel inside ``jax.shard_map`` (batch over data, KV heads over model)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lcache.sharding import make_mesh, shard_decode_attention
from pallas_kernels.decode import decode_attention


def test_sharded_kernel_matches_unsharded():
    b, hkv, g, c, d = 2, 4, 2, 32, 32
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((b, hkv * g, d)), jnp.float32)
    keys, values = (jnp.asarray(rng.standard_normal((b, hkv, c, d)), jnp.float32)
                    for _ in range(2))
    valid = jnp.asarray(rng.random((b, hkv, c)) < 0.7)
    rope_pos = jnp.asarray(rng.integers(0, 100, (b, hkv, c)), jnp.int32)
    inv_freq = jnp.asarray(1.0 / 10000 ** (np.arange(0, d, 2) / d), jnp.float32)
    args = (q, keys, values, valid)
    kw = dict(rope_pos=rope_pos, inv_freq=inv_freq)
    ref = decode_attention(*args, **kw, return_slot_probs=True, impl="pallas", interpret=True)
    attend = shard_decode_attention(make_mesh(2, 4), impl="pallas", interpret=True)
    out = jax.jit(functools.partial(attend, return_slot_probs=True))(*args, **kw)
    for got, want in zip(out, ref, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert out[0].sharding.spec == jax.sharding.PartitionSpec("data", "model")
