"""``decode_over_view`` on a quantized cache: the quantized kernel (codes + sinks + residual
ring, interpreted on CPU) against the XLA log-sum-exp merge of the same segments (codes
dequantized), through lcache policies."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_helpers import compile_fast

from lcache.attention.decode import decode_over_view
from lcache.cache import Dense, StreamingLLM, quantized

B, H, G, D = 2, 2, 2, 64  # D >= 64: int4 rows of >= 16 code words


@functools.partial(jax.jit, static_argnames=("policy", "prefill", "steps"))
def _fill(policy, x, prefill, steps):
    """Prefill ``prefill`` tokens, then append ``steps`` more one at a time."""
    keys, values = x
    pos = jnp.broadcast_to(jnp.arange(prefill + steps, dtype=jnp.int32), (B, prefill + steps))
    st = policy.init(B, H, D, jnp.float32)
    st = policy.prefill(st, keys[:, :, :prefill], values[:, :, :prefill], pos[:, :prefill])

    def step(st, xs):
        return policy.append(st, *xs), None

    xs = (jnp.moveaxis(keys[:, :, prefill:], 2, 0), jnp.moveaxis(values[:, :, prefill:], 2, 0),
          pos[:, prefill:].T)
    return jax.lax.scan(step, st, xs)[0]


POLICIES = {
    # Dense: C=200 (not a multiple of G=32); the ring (R=32) has wrapped; PFN sinks. Checked
    # twice: as is, and under a window mask on the view that invalidates the sinks, codes and
    # part of the ring.
    "dense": (quantized(Dense(200), bits=4, group=32, residual=32, keep_sinks=4), 150, 5),
    # StreamingLLM moves tokens between slots (its own ring wraps): evictions + sinks.
    "streaming_llm": (quantized(StreamingLLM(window=60, num_sinks=4, positions="original"), bits=8,
                            group=32, residual=32, keep_sinks=2), 100, 30),
}


@pytest.mark.parametrize("name,sink", [("dense", False), ("streaming_llm", False),
                                       ("dense", True)])
def test_quantized_kernel_matches_dequantized_view(name, sink):
    """``sink``: the gpt-oss 'sink_logit' variant, merged inside the kernel."""
    policy, prefill, steps = POLICIES[name]
    rng = np.random.default_rng(0)
    n = prefill + steps
    x = (jnp.asarray(rng.standard_normal((B, H, n, D)) * np.linspace(0.2, 3.0, D), jnp.float32),
         jnp.asarray(rng.standard_normal((B, H, n, D)), jnp.float32))
    state = _fill(policy, x, prefill, steps)
    q = jnp.asarray(rng.standard_normal((B, H * G, D)), jnp.float32)
    kw = dict(variant="sink_logit", sink_logit=jnp.asarray(rng.normal(size=H * G) * 2,
                                                           jnp.float32)) if sink else {}

    def attend(q, state, first, impl):
        view = policy.view(state).restrict(lambda key_pos: key_pos >= first)
        return decode_over_view(q, view, None, impl=impl, **kw)

    want_fn = jax.jit(functools.partial(attend, impl="xla"))
    got_fn = compile_fast(functools.partial(attend, impl="pallas"), q, state, jnp.int32(0))
    for first in (0, n - 40)[:2 if name == "dense" else 1]:
        first = jnp.int32(first)
        want, got = want_fn(q, state, first), got_fn(q, state, first)
        np.testing.assert_allclose(got[0], want[0], atol=2e-4, rtol=1e-3)
        np.testing.assert_allclose(got[1], want[1], atol=2e-5)
        if not sink:  # a sink takes some of each head's probability
            np.testing.assert_allclose(got[1].sum(-1), np.where(want[1].sum(-1) > 0, G, 0),
                                       rtol=1e-4)


def test_segments_partition_the_valid_slots():
    policy, prefill, steps = POLICIES["dense"]
    x = (jnp.ones((B, H, prefill + steps, D)), jnp.ones((B, H, prefill + steps, D)))
    state = _fill(policy, x, prefill, steps)
    codes, sinks, ring = jax.jit(lambda st: policy.view(st).segments)(state)
    counts = [int(a.sum()) for a in (codes.valid, sinks.valid, ring.valid)]
    seen = prefill + steps
    flush = 32 * -(-(seen - 32) // 32)
    assert counts == [B * H * (flush - 4), B * H * 4, B * H * (seen - flush)]
