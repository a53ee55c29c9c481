"""Benchmark helpers: device time of a jitted op, copy ceiling, cheap synthetic inputs.

Used by ``experiments/bench_kernels.py``; kept here so they can be reused by other benches.
"""

from __future__ import annotations

import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pallas_kernels.quant_decode import QuantCodes, Segment


def device_time(fn, args, calls, iters, fast_compile=False, min_run_s=3e-3):
    """Median seconds per call of ``fn(*args)``.

    ``calls`` calls (query ``args[0]`` scaled per call, all inputs behind an optimization
    barrier) in one executable; each measurement launches it ``reps`` times back to back (async
    dispatch keeps the device busy; ``reps`` makes a measurement last >= ``min_run_s``);
    ``iters`` measurements after a warm-up. ``fast_compile``: XLA backend optimisations off
    (CPU smoke runs: interpreted kernels compile 2x faster; timings there are meaningless).
    """
    q, rest = args[0], args[1:]

    def looped(q, *rest):
        outs = []
        for i in range(calls):
            qi, ri = lax.optimization_barrier((q * (1.0 + i / 64), rest))
            outs.append(fn(qi, *ri))
        return outs

    run = jax.jit(looped)
    if fast_compile:
        run = run.lower(q, *rest).compile(compiler_options={"xla_backend_optimization_level": 0})
    jax.block_until_ready(run(q, *rest))
    t0 = time.perf_counter()
    jax.block_until_ready(run(q, *rest))
    reps = int(min(50, max(1, min_run_s / (time.perf_counter() - t0))))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        for _ in range(reps):
            out = run(q, *rest)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / (reps * calls))
    return statistics.median(times)


def copy_gbps(nbytes, iters, calls=4):
    """Copy ceiling in GB/s (bytes read + written): ``calls`` dependent passes
    ``y = optimization_barrier(y + 1)`` over an f32 buffer of ``nbytes``, one executable, median
    of ``iters`` runs. Each pass is its own kernel reading and writing every byte: the barrier
    keeps XLA from fusing the chain into one pass, and ``+ 1`` from eliding it. (The former
    ``[x + i for i in range(calls)]`` became one fusion reading ``x`` once for ``calls``
    outputs: 5 passes counted as 8, 3704 GB/s on a 3350 GB/s H100.)"""
    x = fake(0, (nbytes // 4,), jnp.float32)

    def chain(y):
        for _ in range(calls):
            y = lax.optimization_barrier(y + 1.0)
        return y

    run = jax.jit(chain)
    jax.block_until_ready(run(x))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(run(x))
        times.append((time.perf_counter() - t0) / calls)
    return 2 * nbytes / statistics.median(times) / 1e9


# Published HBM bandwidth (GB/s) by device kind, most specific first: NVIDIA's datasheets.
PEAK_GBPS = (("H200", 4800.0), ("H100 NVL", 3900.0), ("H100 PCIe", 2000.0), ("H100", 3350.0),
             ("A100-SXM4-80GB", 2039.0), ("A100", 1555.0))


def peak_gbps(device_kind):
    """The datasheet bandwidth of a device kind (e.g. 'NVIDIA H100 80GB HBM3'), or None."""
    return next((v for k, v in PEAK_GBPS if k in device_kind), None)


def nbytes(*xs):
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(xs))


@functools.partial(jax.jit, static_argnums=(1, 2))
def fake(seed, shape, dtype):
    """Cheap device-side pseudo-random data (an integer hash of the index; compiles in ms, unlike
    ``jax.random`` at these sizes): unsigned integers (uint8/uint16: uniform bits), or floats
    uniform in [-1, 1)."""
    x = jnp.uint32(seed) * jnp.uint32(0x9E3779B9)
    for i in range(len(shape)):
        x = x + lax.broadcasted_iota(jnp.uint32, shape, i) * jnp.uint32(
            (0x85EBCA6B, 0xC2B2AE35, 0x27D4EB2F, 0x165667B1, 0xD3A2646C)[i % 5])
    x = (x ^ (x >> 15)) * jnp.uint32(0x2C1B3C6D)
    x = x ^ (x >> 12)
    if jnp.issubdtype(dtype, jnp.unsignedinteger):
        return (x >> 8).astype(dtype)
    return ((x >> 8).astype(jnp.float32) * (2.0 / 2**24) - 1.0).astype(dtype)



def make_quant(seed, b, h, hq, c, d, bits, group, residual, sinks, dtype):
    """Pseudo-random KIVI codes (uint16 bit-plane words) and grids (all slots valid) plus full
    sink and ring segments."""
    per, nb = 16 // bits, -(-c // group)
    u16 = lambda i, s: fake(seed + i, s, jnp.uint16)  # noqa: E731
    sc = lambda i, s: ((fake(seed + i, s, jnp.float32) + 2.0) / (2**bits - 1)).astype(  # noqa: E731
        jnp.bfloat16)
    codes = QuantCodes(u16(0, (b, h, c, d // per)), sc(1, (b, h, nb, d)),
                       -sc(2, (b, h, nb, d)), u16(3, (b, h, c, d // per)),
                       sc(4, (b, h, c, d // group)),
                       -sc(5, (b, h, c, d // group)), jnp.ones((b, h, c), bool))
    segs = tuple(Segment(fake(seed + 6, (b, h, n, d), dtype), fake(seed + 7, (b, h, n, d), dtype),
                         jnp.ones((b, h, n), bool)) for n in (sinks, residual) if n)
    return codes, segs, fake(seed + 8, (b, hq, d), dtype)
