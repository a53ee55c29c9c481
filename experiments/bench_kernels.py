"""Kernel benchmark: decode (bf16, quantized, MLA) and prefill, against cuDNN, XLA and a copy.

    python -m experiments.bench_kernels --config=configs/bench_kernels.py:default --workdir=DIR

One run measures the copy ceiling (a fused read + write pass over 4 GiB), checks every kernel
against its reference on small shapes (``check`` lines), then measures in priority order until
``time_budget_s`` (``Bench.tasks``: the rows the targets are read from, then sweeps and
references) and writes ``DIR/bench_kernels.csv`` with
``op,impl,batch,context,bits,time_us,gbps,frac_copy_bw,ratio_vs_cudnn``: ``gbps`` counts the
bytes an op must move (cache read once, queries, outputs), ``frac_copy_bw = gbps / copy``,
``ratio_vs_cudnn = t_cudnn / t`` (> 1: faster than cuDNN; quantized and bf16 decode both against
bf16 cuDNN decode at the same batch and context; prefill against cuDNN prefill, so it is also
the TFLOP/s ratio). Impl tags: ``pallas`` is the default plan; ``pallas[S=4]``,
``pallas[bh=16]``, ``pallas[bk=32,w=4]``, ``pallas[128x64w8s3]`` are sweep points. Ops:
``decode``, ``quant_decode`` (bits 8/4/2, with 4 sinks and a 128-token residual ring in bf16),
``mla_decode_h{heads}``, ``prefill`` (with SnapKV scores). A summary table ends the output.

Timing (``pallas_kernels.benchtools.device_time``): ``calls`` kernel calls with distinct
queries inside one jitted executable, launched back to back, median of ``iters`` measurements:
device time without per-call host dispatch. Shapes needing more than ``mem_fraction`` of the
device memory are skipped with a logged note. Runs without ml_collections too (GPU image).
"""

from __future__ import annotations

import csv
import functools
import math
import os
import time

import jax
import jax.numpy as jnp
from absl import app, flags, logging

from pallas_kernels.benchtools import copy_gbps, device_time, fake, make_quant, nbytes
from pallas_kernels.decode import decode_attention
from pallas_kernels.decode import gpu as dgpu
from pallas_kernels.mla_decode import mla_decode_attention
from pallas_kernels.prefill import prefill_attention
from pallas_kernels.quant_decode import quant_decode_attention

COLUMNS = ("op", "impl", "batch", "context", "bits", "time_us", "gbps", "frac_copy_bw",
           "ratio_vs_cudnn")


class Bench:
    """Measurements, one printed line and one CSV row each, run as a prioritised task list."""

    def __init__(self, c, t_start):
        self.c, self.t_start = c, t_start
        self.dtype = jnp.dtype(c.dtype)
        self.gpu = jax.default_backend() == "gpu"
        self.rows, self.cudnn = [], {}  # cudnn: (op, B, C) -> seconds
        dev = jax.devices()[0]
        stats = dev.memory_stats() or {}
        self.mem = stats.get("bytes_limit", 0) * c.mem_fraction or float("inf")
        self.copy = copy_gbps(c.copy_bytes, c.iters)
        print(f"# {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}, copy "
              f"ceiling {self.copy:.0f} GB/s, memory budget {self.mem / 2**30:.1f} GiB",
              flush=True)
        self.rows.append(dict(op="copy", impl="xla_copy", batch=0, context=0, bits=32,
                              time_us="", gbps=round(self.copy, 1), frac_copy_bw=1.0,
                              ratio_vs_cudnn=""))

    def elapsed(self):
        return time.time() - self.t_start

    def fits(self, what, need):
        if need > self.mem:
            logging.warning("skip %s: needs ~%.1f GiB > budget %.1f GiB", what, need / 2**30,
                            self.mem / 2**30)
            print(f"# skip {what}: needs ~{need / 2**30:.1f} GiB", flush=True)
            return False
        return True

    def measure(self, op, impl, b, ctx, bits, fn, args, moved, cudnn=None, flops=None,
                extra=""):
        """Times ``fn(*args)``, records a row; returns seconds or None on failure (logged)."""
        try:
            t = device_time(fn, args, self.c.calls, self.c.iters, self.c.interpret)
        except Exception as e:  # noqa: BLE001 - a failing impl is a result, not a crash
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            logging.warning("%s %s B=%d C=%d failed: %s", op, impl, b, ctx, msg)
            print(f"{op:<15} {impl:<18} B={b:<3} C={ctx:<7} ERROR {msg}", flush=True)
            return None
        gbps = moved / t / 1e9
        t_ref = self.cudnn.get((cudnn, b, ctx))
        ratio = "" if t_ref is None else round(t_ref / t, 3)
        self.rows.append(dict(op=op, impl=impl, batch=b, context=ctx, bits=bits,
                              time_us=round(t * 1e6, 2), gbps=round(gbps, 1),
                              frac_copy_bw=round(gbps / self.copy, 3), ratio_vs_cudnn=ratio))
        if flops:
            extra = f"{flops / t / 1e12:.0f} TFLOP/s {extra}"
        print(f"{op:<15} {impl:<18} B={b:<3} C={ctx:<7} {bits:>2}b {t * 1e6:10.1f} us "
              f"{gbps:7.0f} GB/s {100 * gbps / self.copy:5.1f}% copy  "
              f"x{ratio if ratio != '' else '-':<6} {extra} [{self.elapsed():.0f}s]", flush=True)
        return t

    def write(self, path):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, COLUMNS)
            w.writeheader()
            w.writerows(self.rows)

    def ratio(self, op, b, ctx):
        """ratio_vs_cudnn of the default Pallas row (0 if missing)."""
        row = next((r for r in self.rows if (r["op"], r["impl"], r["batch"], r["context"])
                    == (op, "pallas", b, ctx)), None)
        return row["ratio_vs_cudnn"] if row and row["ratio_vs_cudnn"] != "" else 0.0

    # -- bf16 decode -------------------------------------------------------------------------
    def _decode_inputs(self, b, ctx):
        c, dt = self.c, self.dtype
        q = fake(ctx + b, (b, c.hq, c.d), dt)
        keys = fake(ctx + b + 1, (b, c.hkv, ctx, c.d), dt)
        values = fake(ctx + b + 2, (b, c.hkv, ctx, c.d), dt)
        valid = jnp.ones((b, c.hkv, ctx), bool)
        return (q, keys, values, valid), nbytes(keys, values, q, q)

    def decode(self, b, ctx, impls=("cudnn", "pallas"), splits=None):
        """bf16 decode at one shape: cudnn, pallas (auto plan or ``splits``), xla."""
        c = self.c
        kv = 2 * b * c.hkv * ctx * c.d * self.dtype.itemsize
        if not self.fits(f"decode B={b} C={ctx}", (5 if "xla" in impls else 2.2) * kv):
            return
        args, moved = self._decode_inputs(b, ctx)
        q, keys, values, _ = args
        if "cudnn" in impls and self.gpu:
            kt, vt = keys.transpose(0, 2, 1, 3), values.transpose(0, 2, 1, 3)
            cudnn = lambda q, k, v: jax.nn.dot_product_attention(  # noqa: E731
                q[:, None], k, v, implementation="cudnn")[:, 0]
            self.cudnn["decode", b, ctx] = self.measure("decode", "cudnn", b, ctx, 16, cudnn,
                                                        (q, kt, vt), moved, "decode")
            del kt, vt
        if "pallas" in impls:
            auto = dgpu.plan(b * c.hkv, ctx, c.d, c.d, itemsize=self.dtype.itemsize)[1]
            for s in splits or (None,):
                fn = functools.partial(decode_attention, impl="pallas", interpret=c.interpret,
                                       num_splits=s)
                self.measure("decode", "pallas" if s is None else f"pallas[S={s}]", b, ctx, 16,
                             fn, args, moved, "decode", extra=f"S={s or auto}")
        if "xla" in impls:
            fn = functools.partial(decode_attention, impl="xla")
            self.measure("decode", "xla", b, ctx, 16, fn, args, moved, "decode")

    def split_candidates(self, b, ctx, factors):
        """Distinct effective split counts ``auto * f`` (``plan`` recomputes them)."""
        c, isz = self.c, self.dtype.itemsize
        auto = dgpu.plan(b * c.hkv, ctx, c.d, c.d, itemsize=isz)[1]
        out = []
        for f in factors:
            s = dgpu.plan(b * c.hkv, ctx, c.d, c.d, None, max(1, round(auto * f)), isz)[1]
            if s != auto and s not in out:
                out.append(s)
        return tuple(out)

    # -- quantized decode --------------------------------------------------------------------
    def quant(self, b, ctx, bits, impl="pallas", **kw):
        c = self.c
        if not self.fits(f"quant{bits} B={b} C={ctx}", 3 * b * c.hkv * ctx * c.d * bits // 8):
            return
        codes, segs, q = make_quant(bits + ctx + b, b, c.hkv, c.hq, ctx, c.d, bits,
                                    c.quant_group, c.quant_residual, c.quant_sinks, self.dtype)
        moved = nbytes(codes[:6], segs, q, q) + b * c.hkv * ctx  # + 1 byte/slot of validity
        if kw:
            fn = functools.partial(_quant_variant, interpret=c.interpret, **kw)
            impl = f"pallas[bk={kw['block_k']},w={kw['num_warps']}]"
        else:
            fn = functools.partial(quant_decode_attention, impl=impl, interpret=c.interpret)
        self.measure("quant_decode", impl, b, ctx, bits, fn, (q, codes, segs), moved, "decode")

    # -- MLA ---------------------------------------------------------------------------------
    def mla(self, b, ctx, hq, impl="pallas", block_h=None):
        c, dt = self.c, self.dtype
        dc, dr = c.mla_dc, c.mla_dr
        lat_bytes = b * ctx * (dc + dr) * dt.itemsize
        if not self.fits(f"mla B={b} C={ctx}", (8 if impl == "xla" else 3) * lat_bytes):
            return
        latent, k_rope = fake(ctx + b, (b, 1, ctx, dc), dt), fake(ctx + b + 1, (b, 1, ctx, dr), dt)
        valid = jnp.ones((b, 1, ctx), bool)
        ql, qr = fake(hq, (b, hq, dc), dt), fake(hq + 1, (b, hq, dr), dt)
        moved = lat_bytes + nbytes(ql, qr, ql) + b * ctx
        fn = functools.partial(mla_decode_attention, scale=1.0 / math.sqrt(128 + dr), impl=impl,
                               interpret=c.interpret, block_h=block_h)
        tag = impl if block_h is None else f"pallas[bh={block_h}]"
        self.measure(f"mla_decode_h{hq}", tag, b, ctx, 16, fn, (ql, qr, latent, k_rope, valid),
                     moved, flops=2 * b * hq * ctx * (2 * dc + dr))

    # -- prefill -----------------------------------------------------------------------------
    def prefill(self, b, t, impls=("cudnn", "pallas"), blocks=None):
        c, dt = self.c, self.dtype
        q = fake(t + b, (b, c.hq, t, c.d), dt)
        k, v = fake(t + b + 1, (b, c.hkv, t, c.d), dt), fake(t + b + 2, (b, c.hkv, t, c.d), dt)
        moved = nbytes(q, k, v, q) + 4 * b * c.hq * t
        flops = 4 * b * c.hq * c.d * t * t / 2
        if "cudnn" in impls and self.gpu:
            tr = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731
            cudnn = lambda q, k, v: jax.nn.dot_product_attention(  # noqa: E731
                q, k, v, is_causal=True, implementation="cudnn")
            self.cudnn["prefill", b, t] = self.measure(
                "prefill", "cudnn", b, t, 16, cudnn, (tr(q), tr(k), tr(v)), moved, "prefill",
                flops)
        if "pallas" in impls:
            bq, bk, warps, stages = blocks or c.prefill_blocks[0]
            fn = functools.partial(_prefill_variant, obs_window=c.prefill_window, block_q=bq,
                                   block_k=bk, num_warps=warps, num_stages=stages,
                                   interpret=c.interpret)
            impl = "pallas" if blocks is None else f"pallas[{bq}x{bk}w{warps}s{stages}]"
            self.measure("prefill", impl, b, t, 16, fn, (q, k, v), moved, "prefill", flops,
                         "(+scores)")
        if "xla" in impls:
            fn = functools.partial(prefill_attention, obs_window=c.prefill_window, impl="xla")
            self.measure("prefill", "xla", b, t, 16, fn, (q, k, v), moved, "prefill", flops)

    def summary(self):
        """A compact table of the issue's targets, from the rows measured."""
        c = self.c

        def get(op, impl, b, x, bits=None, key="time_us"):
            for r in self.rows:
                if (r["op"], r["impl"], r["batch"], r["context"]) == (op, impl, b, x) and (
                        bits is None or r["bits"] == bits):
                    return r[key]
            return None

        def fmt(v, spec):
            return format(v, spec) if isinstance(v, (int, float)) else "-"

        hmax = max(c.mla_heads)
        print("# summary: decode x = t_cudnn / t (target >= 1), %copy (target >= 85% at B>=8, "
              ">=32K); best = fastest split; int8/4/2 = t / t_cudnn bf16 (int4 target <= 0.35); "
              f"MLA h{hmax} %copy (target >= 80%)")
        print("#  B  context  cudnn_us  pallas_us  x     %copy  best(S,x)      int8  int4  int2"
              "  mla%")
        for b in c.batches:
            for x in c.contexts:
                tc, tp = get("decode", "cudnn", b, x), get("decode", "pallas", b, x)
                sw = [(r["time_us"], r["impl"]) for r in self.rows if r["op"] == "decode" and
                      r["impl"].startswith("pallas") and (r["batch"], r["context"]) == (b, x)]
                best = min(sw) if sw else None
                bs = (f"{best[1].replace('pallas', '') or 'auto'},{tc / best[0]:.2f}"
                      if best and tc else "-")
                qs = [get("quant_decode", "pallas", b, x, bits) for bits in (8, 4, 2)]
                qr = [fmt(t / tc if t and tc else None, ".2f") for t in qs]
                mla = get(f"mla_decode_h{hmax}", "pallas", b, x, key="frac_copy_bw")
                frac = get("decode", "pallas", b, x, key="frac_copy_bw")
                print(f"# {b:>2} {x:>8} {fmt(tc, '9.1f')} {fmt(tp, '10.1f')} "
                      f"{fmt(tc / tp if tc and tp else None, '5.2f')} "
                      f"{fmt(100 * frac if frac else None, '5.0f')}%  {bs:<13} "
                      f"{qr[0]:>5} {qr[1]:>5} {qr[2]:>5} {fmt(100 * mla if mla else None, '5.0f')}")
        for b, t in c.prefill_shapes:
            tc, tp = get("prefill", "cudnn", b, t), get("prefill", "pallas", b, t)
            if tp:
                fl = 4 * b * c.hq * c.d * t * t / 2
                print(f"# prefill B={b} T={t}: pallas+scores {fl / tp / 1e6:.0f} TFLOP/s, cuDNN "
                      f"{fmt(fl / tc / 1e6 if tc else None, '.0f')} TFLOP/s, x "
                      f"{fmt(tc / tp if tc else None, '.2f')} (target >= 0.8)")

    # -- the plan ----------------------------------------------------------------------------
    def tasks(self):
        """Yields ``(description, thunk)`` in priority order: the rows the issue's targets are
        read from first, then sweeps and references. Generated lazily: sweep candidates
        depend on the ratios measured before them."""
        c = self.c
        shapes = [(b, x) for b in c.batches for x in c.contexts]
        small = [(b, x) for b, x in shapes if b * x <= c.xla_max_tokens]
        hmax = max(c.mla_heads)
        if "decode" in c.ops:
            for b, x in shapes:
                yield f"decode B={b} C={x}", functools.partial(self.decode, b, x)
        if "quant" in c.ops:
            for b, x in shapes:
                yield f"quant4 B={b} C={x}", functools.partial(self.quant, b, x, 4)
        if "mla" in c.ops:
            for b, x in shapes:
                yield f"mla B={b} C={x}", functools.partial(self.mla, b, x, hmax)
        if "prefill" in c.ops:
            for b, t in c.prefill_shapes[:3]:
                yield f"prefill B={b} T={t}", functools.partial(self.prefill, b, t)
        if "decode" in c.ops and c.sweep:  # worst shapes first
            for b, x in sorted(shapes, key=lambda s: self.ratio("decode", *s)):
                cands = self.split_candidates(b, x, c.split_factors[1:3])
                if cands:
                    yield f"decode splits B={b} C={x}", functools.partial(
                        self.decode, b, x, ("pallas",), cands)
        if "quant" in c.ops:
            for bits in (8, 2):
                for b, x in shapes:
                    if bits in c.quant_bits:
                        yield f"quant{bits} B={b} C={x}", functools.partial(
                            self.quant, b, x, bits)
        if c.sweep and "quant" in c.ops:
            for bk, warps in c.quant_variants:
                yield f"quant bk={bk}", functools.partial(self.quant, *c.sweep_shape, 4,
                                                          block_k=bk, num_warps=warps)
        if c.sweep and "mla" in c.ops:
            for bh in c.mla_block_h:
                yield f"mla bh={bh}", functools.partial(self.mla, *c.sweep_shape, hmax,
                                                        block_h=bh)
        if "mla" in c.ops:
            for hq in c.mla_heads:
                for b, x in shapes if hq != hmax else ():
                    yield f"mla h{hq} B={b} C={x}", functools.partial(self.mla, b, x, hq)
        if "decode" in c.ops:
            for b, x in small:
                yield f"decode xla B={b} C={x}", functools.partial(self.decode, b, x, ("xla",))
        if c.sweep and "prefill" in c.ops:
            for blocks in c.prefill_blocks[1:]:
                yield f"prefill {blocks}", functools.partial(
                    self.prefill, *c.prefill_sweep, ("pallas",), tuple(blocks))
        if "prefill" in c.ops:
            for b, t in c.prefill_shapes[3:]:
                yield f"prefill B={b} T={t}", functools.partial(self.prefill, b, t)
        if "decode" in c.ops and c.sweep:
            for b, x in sorted(shapes, key=lambda s: self.ratio("decode", *s)):
                cands = self.split_candidates(b, x, c.split_factors)
                done = self.split_candidates(b, x, c.split_factors[1:3])
                rest = tuple(s for s in cands if s not in done)
                if rest:
                    yield f"decode splits+ B={b} C={x}", functools.partial(
                        self.decode, b, x, ("pallas",), rest)
        for b, x in small:
            if "quant" in c.ops:
                yield f"quant xla B={b} C={x}", functools.partial(self.quant, b, x, 4, "xla")
            if "mla" in c.ops:
                yield f"mla xla B={b} C={x}", functools.partial(self.mla, b, x, hmax, "xla")
        if "prefill" in c.ops and c.interpret:
            b, t = c.prefill_shapes[0]
            yield "prefill xla", functools.partial(self.prefill, b, t, ("xla",))


def _quant_variant(q, codes, segs, **kw):
    from pallas_kernels.quant_decode.gpu import quant_decode_gpu

    return quant_decode_gpu(q, codes, segs, **kw)


def _prefill_variant(q, k, v, **kw):
    from pallas_kernels.prefill.gpu import prefill_attention_gpu

    return prefill_attention_gpu(q, k, v, **kw)


def check_kernels(c):
    """Every kernel against its reference on small shapes on this device; returns ok."""
    dt, ok = jnp.dtype(c.dtype), True
    hq, hkv, d = c.hq, c.hkv, c.d

    def jit(f):  # interpreted kernels: compile without XLA backend optimisations (2x faster)
        if not c.interpret:
            return jax.jit(f)
        opts = {"xla_backend_optimization_level": 0}
        return lambda *a: jax.jit(f).lower(*a).compile(compiler_options=opts)(*a)

    def report(name, got, want, tol):
        nonlocal ok
        got, want = jax.tree.leaves(got), jax.tree.leaves(want)
        err = max(float(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)).max())
                  for a, b in zip(got, want, strict=True))
        good = err < tol and all(bool(jnp.isfinite(a).all()) for a in got)
        ok &= good
        print(f"check {name}: max err {err:.2e} {'ok' if good else 'FAIL'}", flush=True)

    c_small = 1000 if not c.interpret else 100
    qd = (fake(0, (2, hq, d), dt), fake(1, (2, hkv, c_small, d), dt),
          fake(2, (2, hkv, c_small, d), dt), fake(3, (2, hkv, c_small), jnp.float32) < 0.4)
    run = jit(functools.partial(decode_attention, impl="pallas", interpret=c.interpret,
                                return_slot_probs=True))
    ref = jax.jit(functools.partial(decode_attention, impl="xla", return_slot_probs=True))
    report("decode", run(*qd), ref(*qd), 5e-2)
    for bits in c.quant_bits[-1:] if c.interpret else c.quant_bits:
        codes, segs, q = make_quant(bits, 2, hkv, hq, c_small, d, bits, c.quant_group,
                                    c.quant_residual, c.quant_sinks, dt)
        codes = codes._replace(valid=fake(bits, codes.valid.shape, jnp.float32) < 0.4)
        run = jit(functools.partial(quant_decode_attention, impl="pallas",
                                        interpret=c.interpret, return_slot_probs=True))
        ref = jax.jit(functools.partial(quant_decode_attention, impl="xla",
                                        return_slot_probs=True))
        report(f"quant_decode int{bits}", run(q, codes, segs), ref(q, codes, segs), 5e-2)
    dc, dr, h = c.mla_dc, c.mla_dr, max(c.mla_heads)
    args = (fake(0, (2, h, dc), dt), fake(1, (2, h, dr), dt),
            fake(2, (2, 1, c_small, dc), dt), fake(3, (2, 1, c_small, dr), dt),
            fake(4, (2, 1, c_small), jnp.float32) < 0.4)
    run = jit(functools.partial(mla_decode_attention, scale=0.05, impl="pallas",
                                    interpret=c.interpret, return_slot_probs=True))
    ref = jax.jit(functools.partial(mla_decode_attention, scale=0.05, impl="xla",
                                    return_slot_probs=True))
    report("mla_decode", run(*args), ref(*args), 5e-2)
    t = 300 if not c.interpret else 40
    qkv = (fake(0, (1, hq, t, d), dt), fake(1, (1, hkv, t, d), dt),
           fake(2, (1, hkv, t, d), dt))
    run = jit(functools.partial(prefill_attention, obs_window=c.prefill_window,
                                    impl="pallas", interpret=c.interpret))
    ref = jax.jit(functools.partial(prefill_attention, obs_window=c.prefill_window, impl="xla"))
    report("prefill+scores", run(*qkv), ref(*qkv), 5e-2)
    return ok


def define_flags():
    """``--config`` (ml_collections config file, or a plain loader without ml_collections) and
    ``--workdir``; defined here, not at import, so the module imports cleanly in tests."""
    try:
        from ml_collections import config_flags

        config = config_flags.DEFINE_config_file("config", "configs/bench_kernels.py:smoke")
    except ImportError:  # the GPU image has no ml_collections: --config=path:arg, no overrides
        arg = flags.DEFINE_string("config", "configs/bench_kernels.py:smoke", "config")

        class _ConfigFile:
            @property
            def value(self):
                import importlib.util

                path, _, variant = arg.value.partition(":")
                spec = importlib.util.spec_from_file_location("bench_config", path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                return module.get_config(variant) if variant else module.get_config()

        config = _ConfigFile()
    return config, flags.DEFINE_string("workdir", "runs/bench_kernels", "output directory")


def main(argv):
    del argv
    run(_FLAGS[0].value, _FLAGS[1].value)


def run(c, workdir):
    """Checks, then the prioritised measurements; writes ``workdir/bench_kernels.csv``."""
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    ok = check_kernels(c)
    bench = Bench(c, t0)
    path = os.path.join(workdir, "bench_kernels.csv")
    skipped = []
    for what, task in bench.tasks():
        if bench.elapsed() > c.time_budget_s:
            skipped.append(what)
            continue
        task()
        bench.write(path)  # rewritten as rows come in
    bench.write(path)
    bench.summary()
    if skipped:
        print(f"# time budget ({c.time_budget_s:.0f} s) reached; not run: {'; '.join(skipped)}",
              flush=True)
    print(f"# wrote {path} ({len(bench.rows)} rows) in {bench.elapsed():.0f} s; kernel checks "
          f"{'ok' if ok else 'FAILED'}", flush=True)


if __name__ == "__main__":
    _FLAGS = define_flags()
    app.run(main)
