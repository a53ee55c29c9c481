"""Decode-attention benchmark: xla (reference) / pallas / cudnn, in GB/s and % of a copy ceiling.

GPU (H200), dense bf16 cache, 32 q heads / 8 kv heads, D=128:
  XLA_PYTHON_CLIENT_MEM_FRACTION=.9 python3 -m pallas_kernels.decode.bench \
      --batch 1,8,32 --context 4096,32768,131072
CPU smoke (interpret mode, tiny):
  python -m pallas_kernels.decode.bench --batch 1 --context 200 --hq 4 --hkv 2 --d 32 --iters 2

Bytes counted for every impl: K + V read, q read, out written (the 1 byte/slot validity mask
the Pallas kernel also reads is not counted). One timed run = ``reps`` back-to-back calls then
``block_until_ready``, ``reps`` chosen so a run lasts >= ~2 ms (dispatch overhead amortised);
the reported time is the median over runs, per call. ``max_err`` is the max |out - xla out|.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp

from pallas_kernels.decode import gpu
from pallas_kernels.decode.ops import decode_attention


def _median_time(fn, args, warmup=2, iters=10, min_run_s=2e-3, max_reps=200):
    """Median seconds per call of ``fn(*args)``: warm-up, then ``iters`` timed runs."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    reps = int(min(max_reps, max(1, min_run_s / max(time.perf_counter() - t0, 1e-9))))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        for _ in range(reps):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / reps)
    return statistics.median(times)


def copy_bandwidth(nbytes=None, iters=10):
    """Device copy ceiling in GB/s: bytes read + written by ``jnp.copy`` of a large buffer."""
    if nbytes is None:
        nbytes = 4 << 30 if jax.default_backend() == "gpu" else 64 << 20
    x = jnp.ones((nbytes // 4,), jnp.float32)
    t = _median_time(jax.jit(jnp.copy), (x,), iters=iters)
    del x
    return 2 * nbytes / t / 1e9


def make_inputs(batch, context, hq, hkv, d, dtype, seed=0):
    """Random q ``[B, Hq, D]``, keys/values ``[B, Hkv, C, D]`` and an all-valid mask."""
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    normal = jax.jit(jax.random.normal, static_argnums=(1, 2))
    q = normal(kq, (batch, hq, d), dtype)
    keys = normal(kk, (batch, hkv, context, d), dtype)
    values = normal(kv, (batch, hkv, context, d), dtype)
    return q, keys, values, jnp.ones((batch, hkv, context), jnp.bool_)


def bench_decode(batch, context, hq=32, hkv=8, d=128, dtype=jnp.bfloat16,
                 impls=("xla", "pallas", "cudnn"), splits=(), iters=10, warmup=2,
                 copy_gbps=None, interpret=None):
    """Times one decode step per impl; returns one dict per (impl, split setting).

    ``splits``: extra explicit ``num_splits`` values to time for 'pallas' (besides auto).
    ``copy_gbps``: the copy ceiling (measured here if None). cuDNN gets the cache transposed
    to ``[B, S, Hkv, D]`` outside the timed region.
    """
    dtype = jnp.dtype(dtype)
    copy_gbps = copy_gbps or copy_bandwidth()
    q, keys, values, valid = make_inputs(batch, context, hq, hkv, d, dtype)
    nbytes = (keys.size + values.size + q.size + q.size) * dtype.itemsize
    base = dict(batch=batch, context=context, hq=hq, hkv=hkv, d=d, dtype=dtype.name)
    runs = []  # (name, num_splits, fn, args)
    for impl in impls:
        if impl == "xla":
            fn = functools.partial(decode_attention, impl="xla")
            runs.append(("xla", None, jax.jit(fn), (q, keys, values, valid)))
        elif impl == "pallas":
            for ns in (None, *splits):
                fn = functools.partial(decode_attention, impl="pallas", interpret=interpret,
                                       num_splits=ns)
                runs.append(("pallas", ns, jax.jit(fn), (q, keys, values, valid)))
        elif impl == "cudnn":
            runs.append(("cudnn", None, None, None))
        else:
            raise ValueError(f"unknown impl {impl!r}")
    results = []  # (row, out f32)
    # xla last: its f32 temporaries are the largest; cudnn's transposed copies are freed first.
    for name, ns, fn, args in sorted(runs, key=lambda r: r[0] == "xla"):
        row, out = dict(base, impl=name), None
        if name == "pallas":
            _, row["num_splits"], _ = gpu.plan(batch * hkv, context, d, d, None, ns, dtype.itemsize)
            row["splits_auto"] = ns is None
        try:
            if name == "cudnn":
                args = (q, keys.transpose(0, 2, 1, 3), values.transpose(0, 2, 1, 3))
                fn = jax.jit(lambda q_, k_, v_: jax.nn.dot_product_attention(
                    q_[:, None], k_, v_, implementation="cudnn")[:, 0])
            t = _median_time(fn, args, warmup=warmup, iters=iters)
            out = fn(*args).astype(jnp.float32)
            row.update(ms=t * 1e3, gbps=nbytes / t / 1e9, frac_copy=nbytes / t / 1e9 / copy_gbps)
        except Exception as e:  # noqa: BLE001 - a failing impl is a result, not a crash
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        args = fn = None
        results.append((row, out))
    ref = next((out for row, out in results if row["impl"] == "xla"), None)
    for row, out in results:
        if ref is not None and out is not None:
            row["max_err"] = float(jnp.abs(out - ref).max())
    rows = [row for row, _ in results]
    order = {impl: i for i, impl in enumerate(impls)}
    return sorted(rows, key=lambda r: order[r["impl"]])


CHECK_CASES = (  # (G, C, dtype, rope, num_splits)
    (4, 4099, "bfloat16", False, None), (4, 1000, "bfloat16", True, 3),
    (1, 37, "float32", True, 1), (4, 130, "float32", False, 2),
    (8, 70000, "bfloat16", True, None))


def check_decode(cases=CHECK_CASES, d=128, interpret=None):
    """Pallas vs reference on the current device over the kernel's features; prints, returns ok.

    Cases: GQA G in {1, 4}, odd C with a tail block, random masks with an all-invalid head,
    in-kernel RoPE, slot probabilities, split-K on/off, bf16 and f32.
    """
    ok = True
    for g, c, dtype, rope, ns in cases:
        b, hkv = 2, 2
        q, keys, values, _ = make_inputs(b, c, hkv * g, hkv, d, dtype, seed=c)
        valid = jax.random.bernoulli(jax.random.key(c), 0.7, (b, hkv, c)).at[0, 1].set(False)
        pos = jax.random.randint(jax.random.key(1), (b, hkv, c), 0, 200_000)
        inv = 1.0 / 10000.0 ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d)
        kw = dict(rope_pos=pos, inv_freq=inv, return_slot_probs=True) if rope else dict(
            return_slot_probs=True)
        run = jax.jit(functools.partial(decode_attention, impl="pallas", num_splits=ns,
                                        interpret=interpret, **kw))
        out, sp = run(q, keys, values, valid)
        rout, rsp = decode_attention(q, keys, values, valid, impl="xla", **kw)
        err = float(jnp.abs(out.astype(jnp.float32) - rout.astype(jnp.float32)).max())
        perr = float(jnp.abs(sp - rsp).max())
        tol = (5e-2, 2e-2) if dtype == "bfloat16" else (1e-3, 1e-4)  # GPU f32 dots may be TF32
        good = err < tol[0] and perr < tol[1] and bool(jnp.isfinite(out).all())
        ok &= good
        print(f"check G={g} C={c} {dtype} rope={rope} splits={ns}: out err {err:.2e}, "
              f"slot-prob err {perr:.2e} {'ok' if good else 'FAIL'}", flush=True)
    return ok


def _fmt(row):
    if "error" in row:
        return (f"B={row['batch']:<3} C={row['context']:<7} {row['impl']:<7} "
                f"ERROR {row['error']}")
    ns = row.get("num_splits")
    tag = "" if ns is None else f"S={ns}" + ("a" if row["splits_auto"] else "")
    return (f"B={row['batch']:<3} C={row['context']:<7} {row['impl']:<7} {tag:<5} "
            f"{row['ms']:9.4f} ms {row['gbps']:8.1f} GB/s {100 * row['frac_copy']:5.1f}% copy  "
            f"max_err={row.get('max_err', float('nan')):.2e}")


def main(argv=None):
    ints = lambda s: tuple(int(x) for x in s.split(",") if x)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=ints, default=(1, 8, 32))
    p.add_argument("--context", type=ints, default=(4096, 32768, 131072))
    p.add_argument("--hq", type=int, default=32)
    p.add_argument("--hkv", type=int, default=8)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--impls", default="xla,pallas,cudnn")
    p.add_argument("--splits", type=ints, default=(), help="extra num_splits to time (pallas)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--json", default=None, help="write all rows to this file")
    p.add_argument("--check", action="store_true", help="first check pallas vs reference")
    a = p.parse_args(argv)
    if a.check and not check_decode():
        raise SystemExit("decode kernel check FAILED")
    impls = tuple(a.impls.split(","))
    if jax.default_backend() != "gpu":
        impls = tuple(i for i in impls if i != "cudnn")
    copy_gbps = copy_bandwidth()
    print(f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"copy ceiling {copy_gbps:.0f} GB/s", flush=True)
    rows = []
    for b in a.batch:
        for c in a.context:
            for row in bench_decode(b, c, a.hq, a.hkv, a.d, a.dtype, impls, a.splits, a.iters,
                                    copy_gbps=copy_gbps):
                print(_fmt(row), flush=True)
                rows.append(row)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(copy_gbps=copy_gbps, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
