"""End-to-end decode tokens/s and cache memory vs context length per attention impl and policy,
on a (data, model) mesh, and StreamingLLM's speed-up over a sliding window with recomputation.

    python -m experiments.bench_decode --config=configs/bench_decode.py:smoke --workdir=runs/bd

For each attention impl (``ModelConfig.attention_impl``: 'xla' the ``jnp`` path, 'cudnn' cuDNN's
fused attention, 'pallas' the Pallas decode kernel; 'cudnn' needs a GPU and is skipped, logged,
elsewhere), each policy spec (``lcache.cache.registry``, e.g. dense, streaming_llm, window:
policies that need no attention feedback to fill) at cache ``budget`` and each context ``L`` the
caches are filled as if ``L`` tokens had been read (random
keys and values written through the policy's own ``prefill``: a dense 32K prefill would need the
whole attention matrix), then ``steps`` greedy decode steps run as one compiled call (a
``lax.scan``, as in generation). After ``warmup`` calls, the median of ``iters`` calls gives the
step time; tokens/s = batch * steps / time. Memory: bytes of the cache arrays in all and on one
device. The baseline re-runs the model over the last ``budget`` tokens for every new token
(``recompute_window``), timed the same way.

Rows are appended to ``workdir/bench_decode.csv`` (one file for several runs, e.g. one per mesh
shape), which is then printed as a table.
"""

from __future__ import annotations

import csv
import datetime
import functools
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from lcache.cache import registry
from lcache.model import ModelConfig, Transformer
from lcache.sharded_generate import Generator
from lcache.sharding import MeshLayout, initialize_distributed, make_mesh

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bench_decode.py:smoke")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory", required=True)

COLUMNS = ("date", "device", "jax", "impl", "policy", "context", "batch", "data", "model",
           "ms_per_step", "tokens_per_s", "cache_mb", "cache_mb_per_device",
           "speedup_vs_recompute")


def random_model(c, impl: str = "xla") -> Transformer:
    """A random-init model attending through ``impl``, params in the compute dtype (timing
    only; the same weights for every impl)."""
    model = Transformer(ModelConfig(**c.model.to_dict(), attention_impl=impl), nnx.Rngs(c.seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    dtype = jnp.dtype(model.cfg.compute_dtype)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x.astype(dtype), params), rest)


def filled_caches(model, policy, batch: int, context: int, seed: int):
    """Per-layer caches after reading ``context`` tokens: unit-normal keys/values ``[B, H, L, D]``
    at positions ``0..L-1`` through ``policy.prefill`` (policies that need no attention
    feedback: dense, windows). ``rbg`` keys: threefry normals take XLA:CPU a minute to compile."""
    pos = jnp.broadcast_to(jnp.arange(context, dtype=jnp.int32), (batch, context))
    caches = []
    for i, state in enumerate(model.init_cache(policy, batch)):
        kk, kv = jax.random.split(jax.random.fold_in(jax.random.key(seed, impl="rbg"), i))
        b, h, _, d = state.keys.shape
        keys = jax.random.normal(kk, (b, h, context, d), state.keys.dtype)
        values = jax.random.normal(kv, (b, h, context, state.values.shape[-1]),
                                   state.values.dtype)
        caches.append(policy.prefill(state, keys, values, pos))
    return caches


def recompute_window(model, window_BW, steps: int):
    """Sliding window with recomputation: every new token re-runs the model over the last ``W``
    tokens (no cache). Greedy; -> tokens ``[B, steps]``."""

    def step(window, _):
        nxt = jnp.argmax(model(window)[:, -1], axis=-1).astype(jnp.int32)
        return jnp.concatenate([window[:, 1:], nxt[:, None]], axis=1), nxt

    _, toks = jax.lax.scan(step, window_BW, None, length=steps)
    return toks.T


def median_seconds(run, warmup: int, iters: int) -> float:
    """Median wall time of ``run()`` (blocked until ready) after ``warmup`` calls."""
    for _ in range(warmup):
        jax.block_until_ready(run())
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _row(c, impl: str, policy: str, context: int, seconds_per_step: float, caches=None) -> dict:
    leaves = jax.tree.leaves(caches)
    mb = lambda n: round(n / 2**20, 3) if leaves else ""
    return dict(impl=impl, policy=policy, context=context, batch=c.batch, data=c.mesh.data,
                model=c.mesh.model, ms_per_step=round(seconds_per_step * 1e3, 3),
                tokens_per_s=round(c.batch / seconds_per_step, 1),
                cache_mb=mb(sum(x.nbytes for x in leaves)),
                cache_mb_per_device=mb(sum(x.addressable_shards[0].data.nbytes for x in leaves)))


def bench_policy(c, gen: Generator, name: str, context: int) -> dict:
    """Decode timing and cache bytes of ``gen`` (a Generator on a mesh) at ``context``; the impl
    is its model's."""
    layout, policy = gen.layout, gen.policy
    fill = jax.jit(lambda: layout.constrain(filled_caches(gen.model, policy, c.batch, context,
                                                          c.seed)))
    stream = gen.start(np.zeros(c.batch), np.full(c.batch, context), fill())

    def run():
        nonlocal stream
        stream, toks, _ = gen.decode(stream, c.steps)
        return toks

    seconds = median_seconds(run, c.warmup, c.iters) / c.steps
    return _row(c, gen.model.cfg.attention_impl, name, context, seconds, stream.caches)


def bench_recompute(c, model, layout) -> dict:
    width = c.budget
    graphdef, params = nnx.split(model)
    run_fn = jax.jit(lambda params, window: recompute_window(
        nnx.merge(graphdef, params), window, c.steps))
    rng = np.random.default_rng(c.seed)
    window = layout.put(rng.integers(0, model.cfg.vocab_size, (c.batch, width), np.int32))
    seconds = median_seconds(functools.partial(run_fn, layout.put_params(params), window),
                             c.warmup, c.iters)
    return _row(c, model.cfg.attention_impl, "recompute", width, seconds / c.steps)


def append_rows(path: str, rows: list[dict]) -> None:
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def print_table(path: str) -> None:
    with open(path) as f:
        table = list(csv.reader(f))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))


def runnable_impls(impls) -> tuple[str, ...]:
    """``impls`` without 'cudnn' off a GPU (logged)."""
    if "cudnn" in impls and jax.default_backend() != "gpu":
        logging.warning("attention_impl='cudnn' needs a GPU (backend %s): skipped",
                        jax.default_backend())
        return tuple(i for i in impls if i != "cudnn")
    return tuple(impls)


def main(argv):
    del argv
    c, workdir = _CONFIG.value, _WORKDIR.value
    if c.distributed.enabled:
        initialize_distributed(c.distributed.coordinator, c.distributed.num_processes,
                               c.distributed.process_id)
    for spec in c.policies:  # fail on a bad spec before any work
        registry.check(spec, c.budget, prompt_len=max(c.contexts))
    layout = MeshLayout(make_mesh(c.mesh.data, c.mesh.model))
    impls = runnable_impls(c.impls)
    rows = [bench_recompute(c, random_model(c), layout)] if c.recompute else []
    for impl in impls:
        model = random_model(c, impl)
        gens = {}  # one Generator (and compiled decode) per distinct policy
        for name in c.policies:
            for context in c.contexts:
                # dense holds the context and every timed step; the budget bounds the others
                policy = registry.build(name, c.budget, prompt_len=context,
                                        max_new=c.steps * (c.warmup + c.iters))
                if policy not in gens:
                    gens[policy] = Generator(model, policy, layout=layout)
                rows.append(bench_policy(c, gens[policy], name, context))
                logging.info("%s", rows[-1])
    base = rows[0]["tokens_per_s"] if c.recompute else None
    stamp = dict(date=datetime.date.today().isoformat(), device=jax.devices()[0].device_kind,
                 jax=jax.__version__)
    for r in rows:
        r.update(stamp, speedup_vs_recompute=round(r["tokens_per_s"] / base, 2)
                 if base and r["policy"].startswith("streaming_llm") else "")
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, "bench_decode.csv")
        append_rows(path, rows)
        print_table(path)


if __name__ == "__main__":
    app.run(main)
