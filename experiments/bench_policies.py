"""What a cache policy costs: its per-step update next to a decode step, and its bytes.

    python -m experiments.bench_policies --config=configs/bench_policies.py:smoke --workdir=DIR

For each policy spec (``lcache.cache.registry``; per-layer policies for PyramidKV / DynamicKV;
decode slots for every timed step), on a random model of the config's
shape: the prompt is prefilled once, then two compiled scans of ``decode_steps`` steps are timed
(median over ``repeats``, divided by the steps): the policy update alone (``append`` +
``observe`` in every layer, random keys and attention) and the model's full decode step (which
includes that update). Writes ``DIR/bench_policies.csv``: policy, per-layer capacities, cache
bytes (keys, values, positions, scores) and their ratio to a dense cache of the whole stream,
update and decode microseconds per step, and the update's share of the step.
"""

from __future__ import annotations

import csv
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from lcache.cache import Dense, Policy, cache_bytes, registry
from lcache.model import ModelConfig
from lcache.model.transformer import Transformer

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bench_policies.py:smoke")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory", required=True)

FIELDS = ("policy", "capacities", "cache_bytes", "bytes_vs_dense", "update_us", "decode_us",
          "update_share")


@functools.partial(jax.jit, static_argnums=(0, 2))
def prefill(graphdef, params, policies, prompt_BT):
    m = nnx.merge(graphdef, params)
    pos = jnp.broadcast_to(jnp.arange(prompt_BT.shape[1]), prompt_BT.shape)
    return m.prefill(prompt_BT, pos, m.init_cache(policies, prompt_BT.shape[0]), policies)[1]


@functools.partial(jax.jit, static_argnums=(0, 2))
def decode(graphdef, params, policies, caches, tokens_SB):
    m = nnx.merge(graphdef, params)

    def body(caches, tok):
        logits, caches = m.decode(tok, caches[0].seen - m.cfg.num_sink_tokens, caches, policies)
        return caches, logits[:, 0]

    return jax.lax.scan(body, caches, tokens_SB)


@functools.partial(jax.jit, static_argnums=0)
def update(policies, caches, keys_SBHD, probs_SBHC):
    """The policy's own work per decode step in every layer, with random keys and attention."""

    def body(caches, xs):
        key, probs = xs
        new = []
        for policy, state in zip(policies, caches, strict=True):
            state = policy.append(state, key, key.astype(state.values.dtype), state.seen)
            new.append(policy.observe(state, probs[..., : state.capacity]))
        return new, None

    return jax.lax.scan(body, caches, (keys_SBHD, probs_SBHC))[0]


def median_step_seconds(fn, repeats: int, steps: int) -> float:
    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / steps


def build_policies(spec: str, c, cfg, probe) -> tuple:
    """Per-layer policies of one benchmark row; ``probe(policy)`` prefills the prompt under
    ``policy`` (DynamicKV's first pass)."""
    policy = registry.build(spec, c.budget, prompt_len=c.prompt_len, num_layers=cfg.num_layers,
                            max_new=c.decode_steps, num_model_sinks=cfg.num_sink_tokens,
                            probe=probe)
    return (policy,) * cfg.num_layers if isinstance(policy, Policy) else policy


def bench(c, workdir: str) -> list[dict]:
    cfg = ModelConfig(**c.model.to_dict())
    graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(c.seed)))
    rng = np.random.default_rng(c.seed)
    prompt = jnp.asarray(rng.integers(0, cfg.vocab_size, (c.batch, c.prompt_len)), jnp.int32)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (c.decode_steps, c.batch)), jnp.int32)
    kv_heads, q_heads, head_dim, _ = cfg.cache_dims
    dtype = jnp.dtype(cfg.compute_dtype)
    keys = jnp.asarray(rng.normal(size=(c.decode_steps, c.batch, kv_heads, head_dim)), dtype)
    width = max(c.prompt_len + c.decode_steps, c.budget + c.decode_steps)
    probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(c.decode_steps, c.batch, kv_heads,
                                                        width)), jnp.float32), axis=-1)
    dense_bytes = cache_bytes(Dense(c.prompt_len + c.decode_steps), c.batch, kv_heads, head_dim,
                              dtype, q_heads) * cfg.num_layers

    def probe(policy):
        return prefill(graphdef, params, (policy,) * cfg.num_layers, prompt)

    for spec in c.policies:  # fail on a bad spec before any work
        registry.check(spec, c.budget, prompt_len=c.prompt_len, num_layers=cfg.num_layers)
    rows = []
    for spec in c.policies:
        policies = build_policies(spec, c, cfg, probe)
        caches = prefill(graphdef, params, policies, prompt)
        upd = median_step_seconds(lambda p=policies, s=caches: update(p, s, keys, probs),
                                  c.repeats, c.decode_steps)
        dec = median_step_seconds(lambda p=policies, s=caches: decode(graphdef, params, p, s,
                                                                      tokens),
                                  c.repeats, c.decode_steps)
        nbytes = cache_bytes(policies, c.batch, kv_heads, head_dim, dtype, q_heads)
        caps = "/".join(str(p.capacity) for p in policies)
        row = dict(policy=spec, capacities=caps if len(set(caps.split("/"))) > 1
                   else str(policies[0].capacity), cache_bytes=nbytes,
                   bytes_vs_dense=round(nbytes / dense_bytes, 4), update_us=round(upd * 1e6, 2),
                   decode_us=round(dec * 1e6, 2), update_share=round(upd / dec, 4))
        logging.info("%s", row)
        rows.append(row)
    with open(os.path.join(workdir, "bench_policies.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv):
    del argv
    os.makedirs(_WORKDIR.value, exist_ok=True)
    logging.info("backend %s, devices %s", jax.default_backend(), jax.devices())
    bench(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
