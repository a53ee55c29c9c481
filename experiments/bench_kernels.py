"""Kernel benchmark: decode (bf16, quantized, MLA) and prefill, against cuDNN, XLA and a copy.

    python -m experiments.bench_kernels --config=configs/bench_kernels.py:default --workdir=DIR
    python -m experiments.bench_kernels --config=configs/bench_kernels.py:default --check \
        --notime --workdir=DIR

``--check`` first runs ``pallas_kernels.checks``: every kernel against its reference on small
odd shapes and, on a GPU, on one shape per kernel with an operand over ``2**31`` bytes.
Timing (``--time``, the default) measures the copy ceiling, then rows in priority order until
``time_budget_s`` (``Bench.tasks``: the rows the targets are read from, then sweeps and
references), into ``DIR/bench_kernels.csv``: ``op,impl,batch,context,bits,time_us,gbps,
frac_copy_bw,frac_peak_bw,ratio_vs_cudnn``. ``gbps`` counts the bytes an op must move (cache
read once, queries, outputs); ``frac_copy_bw = gbps / copy`` (the measured copy ceiling,
``benchtools.copy_gbps``) and ``frac_peak_bw = gbps / peak`` (the datasheet bandwidth);
``ratio_vs_cudnn = t_cudnn / t`` (> 1: faster than cuDNN; quantized and bf16 decode both
against bf16 cuDNN decode at the same batch and context; prefill against cuDNN prefill, i.e.
the TFLOP/s ratio). Impl tags: ``pallas`` is the default plan; ``pallas[S=4,bk=64,w=8,s=3]``
(splits, block, warps, stages), ``pallas[jnp,...]`` (quantized: 'jnp' dequantization),
``pallas[bh=16]``, ``pallas[128x64w8s3]`` are sweep points. Ops: ``decode``,
``quant_decode`` (bits 8/4/2, with 4 sinks and a 128-token bf16 residual ring),
``mla_decode_h{heads}``, ``prefill`` (with SnapKV scores). A summary table ends the output.

Timing (``pallas_kernels.benchtools.device_time``): ``calls`` kernel calls with distinct
queries inside one jitted executable, launched back to back, median of ``iters`` measurements.
Shapes needing more than ``mem_fraction`` of the device memory are skipped with a logged note.
Runs without ml_collections too (GPU image).
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

from pallas_kernels import checks
from pallas_kernels.benchtools import copy_gbps, device_time, fake, make_quant, nbytes, peak_gbps
from pallas_kernels.decode import decode_attention
from pallas_kernels.decode import gpu as dgpu
from pallas_kernels.mla_decode import mla_decode_attention
from pallas_kernels.prefill import prefill_attention
from pallas_kernels.prefill.gpu import prefill_attention_gpu
from pallas_kernels.quant_decode import quant_decode_attention
from pallas_kernels.quant_decode.gpu import quant_decode_gpu

COLUMNS = ("op", "impl", "batch", "context", "bits", "time_us", "gbps", "frac_copy_bw",
           "frac_peak_bw", "ratio_vs_cudnn")
SHORT = dict(dequant="", num_splits="S", block_k="bk", num_warps="w", num_stages="s")


def tag(variant):
    """``pallas`` or ``pallas[S=4,bk=64,...]`` for a dict of kernel keyword arguments."""
    if not variant:
        return "pallas"
    return "pallas[" + ",".join(f"{SHORT[k]}={v}" if SHORT[k] else str(v)
                                for k, v in variant.items()) + "]"


class Bench:
    """Measurements, one printed line and one CSV row each, run as a prioritised task list."""

    def __init__(self, c, t_start):
        self.c, self.t_start = c, t_start
        self.dtype = jnp.dtype(c.dtype)
        self.gpu = jax.default_backend() == "gpu"
        self.rows, self.cudnn = [], {}  # cudnn: (op, B, C) -> seconds
        self.best = {}  # (op, bits) -> fastest swept variant at the sweep shape
        dev = jax.devices()[0]
        stats = dev.memory_stats() or {}
        self.mem = stats.get("bytes_limit", 0) * c.mem_fraction or float("inf")
        self.copy = copy_gbps(c.copy_bytes, c.iters)
        self.peak = peak_gbps(dev.device_kind)
        peak = f"{self.peak:.0f} GB/s" if self.peak else "unknown"
        print(f"# {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}, copy "
              f"ceiling {self.copy:.0f} GB/s, datasheet peak {peak}, memory budget "
              f"{self.mem / 2**30:.1f} GiB", flush=True)
        if self.peak and self.copy > self.peak:
            print("# WARNING: the copy ceiling exceeds the datasheet peak", flush=True)
        self.rows.append(dict(op="copy", impl="xla_copy", batch=0, context=0, bits=32,
                              time_us="", gbps=round(self.copy, 1), frac_copy_bw=1.0,
                              frac_peak_bw=self._frac_peak(self.copy), ratio_vs_cudnn=""))

    def _frac_peak(self, gbps):
        return round(gbps / self.peak, 3) if self.peak else ""

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
            print(f"{op:<15} {impl:<26} B={b:<3} C={ctx:<7} ERROR {msg}", flush=True)
            return None
        gbps = moved / t / 1e9
        t_ref = self.cudnn.get((cudnn, b, ctx))
        ratio = "" if t_ref is None else round(t_ref / t, 3)
        self.rows.append(dict(op=op, impl=impl, batch=b, context=ctx, bits=bits,
                              time_us=round(t * 1e6, 2), gbps=round(gbps, 1),
                              frac_copy_bw=round(gbps / self.copy, 3),
                              frac_peak_bw=self._frac_peak(gbps), ratio_vs_cudnn=ratio))
        if flops:
            extra = f"{flops / t / 1e12:.0f} TFLOP/s {extra}"
        print(f"{op:<15} {impl:<26} B={b:<3} C={ctx:<7} {bits:>2}b {t * 1e6:10.1f} us "
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
    def decode(self, b, ctx, impls=("cudnn", "pallas"), variants=({},)):
        """bf16 decode at one shape: cudnn, pallas (each ``variants`` dict of
        ``decode_attention_gpu`` arguments; ``{}`` = the default plan), xla."""
        c, dt = self.c, self.dtype
        kv = 2 * b * c.hkv * ctx * c.d * dt.itemsize
        if not self.fits(f"decode B={b} C={ctx}", (5 if "xla" in impls else 2.2) * kv):
            return
        q = fake(ctx + b, (b, c.hq, c.d), dt)
        keys = fake(ctx + b + 1, (b, c.hkv, ctx, c.d), dt)
        values = fake(ctx + b + 2, (b, c.hkv, ctx, c.d), dt)
        args, moved = (q, keys, values, jnp.ones((b, c.hkv, ctx), bool)), nbytes(keys, values,
                                                                               q, q)
        if "cudnn" in impls and self.gpu:
            kt, vt = keys.transpose(0, 2, 1, 3), values.transpose(0, 2, 1, 3)
            cudnn = lambda q, k, v: jax.nn.dot_product_attention(  # noqa: E731
                q[:, None], k, v, implementation="cudnn")[:, 0]
            self.cudnn["decode", b, ctx] = self.measure("decode", "cudnn", b, ctx, 16, cudnn,
                                                        (q, kt, vt), moved, "decode")
            del kt, vt
        if "pallas" in impls:
            auto = dgpu.plan(b * c.hkv, ctx, c.d, c.d, itemsize=dt.itemsize)[1]
            for v in variants:
                fn = functools.partial(dgpu.decode_attention_gpu, interpret=c.interpret, **v)
                self.measure("decode", tag(v), b, ctx, 16, fn, args, moved, "decode",
                             extra=f"S={v.get('num_splits', auto)}")
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
    def quant(self, b, ctx, bits, impl="pallas", variant=None):
        """Quantized decode; ``variant``: ``quant_decode_gpu`` arguments (None = the best
        swept one so far, or the default plan)."""
        c = self.c
        if not self.fits(f"quant{bits} B={b} C={ctx}", 3 * b * c.hkv * ctx * c.d * bits // 8):
            return None
        codes, segs, q = make_quant(bits + ctx + b, b, c.hkv, c.hq, ctx, c.d, bits,
                                    c.quant_group, c.quant_residual, c.quant_sinks, self.dtype)
        moved = nbytes(codes[:6], segs, q, q) + b * c.hkv * ctx  # + 1 byte/slot of validity
        if impl == "xla":
            fn = functools.partial(quant_decode_attention, impl="xla")
        else:
            variant = self.best.get(("quant", bits), {}) if variant is None else variant
            fn = functools.partial(quant_decode_gpu, interpret=c.interpret, **variant)
            impl = tag(variant)
        return self.measure("quant_decode", impl, b, ctx, bits, fn, (q, codes, segs), moved,
                            "decode")

    def quant_sweep(self, b, ctx, bits, variants):
        """Times each variant; the fastest becomes the one later quant rows of ``bits`` use."""
        times = [(self.quant(b, ctx, bits, variant=v), i) for i, v in enumerate(variants)]
        ok = [(t, i) for t, i in times if t]
        if ok:
            self.best["quant", bits] = variants[min(ok)[1]]

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
        tag_ = impl if block_h is None else f"pallas[bh={block_h}]"
        self.measure(f"mla_decode_h{hq}", tag_, b, ctx, 16, fn, (ql, qr, latent, k_rope, valid),
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
            fn = functools.partial(prefill_attention_gpu, obs_window=c.prefill_window,
                                   block_q=bq, block_k=bk, num_warps=warps, num_stages=stages,
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
                if (r["op"], r["batch"], r["context"]) == (op, b, x) and (
                        impl is None or r["impl"] == impl) and (bits is None or r["bits"] == bits):
                    return r[key]
            return None

        def fmt(v, spec):
            return format(v, spec) if isinstance(v, (int, float)) else "-"

        hmax = max(c.mla_heads)
        print("# summary: x = t_cudnn / t (bf16 target >= 1); %copy / %peak of the bf16 Pallas "
              "row; best = fastest bf16 variant; int8/4/2 = t / t_cudnn bf16 (targets <= 0.60 / "
              f"0.40 (B=1: 0.5) / 0.30 at >= 32K); MLA h{hmax} %copy (target >= 60% at B >= 8)")
        print("#  B  context  cudnn_us  pallas_us  x     %copy %peak best(x)            int8  "
              "int4  int2  mla%")
        for b in c.batches:
            for x in c.contexts:
                tc, tp = get("decode", "cudnn", b, x), get("decode", "pallas", b, x)
                sw = [(r["time_us"], r["impl"]) for r in self.rows if r["op"] == "decode" and
                      r["impl"].startswith("pallas") and (r["batch"], r["context"]) == (b, x)]
                best = min(sw) if sw else None
                bs = (f"{best[1].replace('pallas', '') or 'auto'},{tc / best[0]:.2f}"
                      if best and tc else "-")
                qs = [min((r["time_us"] for r in self.rows if r["op"] == "quant_decode" and
                           r["impl"] != "xla" and (r["batch"], r["context"], r["bits"]) ==
                           (b, x, bits)), default=None) for bits in (8, 4, 2)]
                qr = [fmt(t / tc if t and tc else None, ".2f") for t in qs]
                mla = get(f"mla_decode_h{hmax}", "pallas", b, x, key="frac_copy_bw")
                frac = get("decode", "pallas", b, x, key="frac_copy_bw")
                peak = get("decode", "pallas", b, x, key="frac_peak_bw")
                print(f"# {b:>2} {x:>8} {fmt(tc, '9.1f')} {fmt(tp, '10.1f')} "
                      f"{fmt(tc / tp if tc and tp else None, '5.2f')} "
                      f"{fmt(100 * frac if frac else None, '5.0f')}% "
                      f"{fmt(100 * peak if peak else None, '4.0f')}% {bs:<18} "
                      f"{qr[0]:>5} {qr[1]:>5} {qr[2]:>5} {fmt(100 * mla if mla else None, '5.0f')}")
        for b, t in c.prefill_shapes:
            tc = get("prefill", "cudnn", b, t)
            tp = min((r["time_us"] for r in self.rows if r["op"] == "prefill" and
                      r["impl"].startswith("pallas") and (r["batch"], r["context"]) == (b, t)),
                     default=None)
            if tp:
                fl = 4 * b * c.hq * c.d * t * t / 2
                print(f"# prefill B={b} T={t}: best pallas+scores {fl / tp / 1e6:.0f} TFLOP/s, "
                      f"cuDNN {fmt(fl / tc / 1e6 if tc else None, '.0f')} TFLOP/s, x "
                      f"{fmt(tc / tp if tc else None, '.2f')} (target >= 0.8)")

    # -- the plan ----------------------------------------------------------------------------
    def _decode_sweeps(self, shapes):
        """bf16 split counts and tilings at the ``sweep_worst`` shapes of lowest ratio."""
        c = self.c
        if "decode" not in c.ops or not c.sweep:
            return
        for b, x in sorted(shapes, key=lambda s: self.ratio("decode", *s))[:c.sweep_worst]:
            vs = [dict(num_splits=s) for s in self.split_candidates(b, x, c.split_factors)]
            vs += [dict(v) for v in c.decode_variants]
            yield f"decode sweep B={b} C={x}", functools.partial(
                self.decode, b, x, ("pallas",), vs)

    def tasks(self):
        """Yields ``(description, thunk)`` in priority order: the rows the issue's targets are
        read from first, then sweeps and references. Generated lazily: sweep candidates
        depend on the rows measured before them."""
        c = self.c
        shapes = [(b, x) for b in c.batches for x in c.contexts]
        small = [(b, x) for b, x in shapes if b * x <= c.xla_max_tokens]
        hmax = max(c.mla_heads)
        if "decode" in c.ops:
            for b, x in shapes:
                yield f"decode B={b} C={x}", functools.partial(self.decode, b, x)
        if "quant" in c.ops and c.sweep:
            yield "quant4 sweep", functools.partial(self.quant_sweep, *c.sweep_shape, 4,
                                                    c.quant_variants)
        if c.sweeps_early:
            yield from self._decode_sweeps(shapes)
        quant_shapes = [s for s in shapes if s in c.quant_shapes] if c.quant_shapes else shapes
        if "quant" in c.ops and 4 in c.quant_bits:
            for b, x in quant_shapes:
                yield f"quant4 B={b} C={x}", functools.partial(self.quant, b, x, 4)
        if "mla" in c.ops:
            for b, x in shapes:
                yield f"mla B={b} C={x}", functools.partial(self.mla, b, x, hmax)
        if "prefill" in c.ops:
            for b, t in c.prefill_shapes[:3]:
                yield f"prefill B={b} T={t}", functools.partial(self.prefill, b, t)
        if "quant" in c.ops:
            for bits in (8, 2):
                for b, x in quant_shapes if bits in c.quant_bits else ():
                    yield f"quant{bits} B={b} C={x}", functools.partial(self.quant, b, x, bits)
        if not c.sweeps_early:
            yield from self._decode_sweeps(shapes)
        if c.sweep and "mla" in c.ops:
            for bh in c.mla_block_h:
                yield f"mla bh={bh}", functools.partial(self.mla, *c.sweep_shape, hmax,
                                                        block_h=bh)
        if c.sweep and "prefill" in c.ops:
            for blocks in c.prefill_blocks[1:]:
                yield f"prefill {blocks}", functools.partial(
                    self.prefill, *c.prefill_sweep, ("pallas",), tuple(blocks))
        if "prefill" in c.ops:
            for b, t in c.prefill_shapes[3:]:
                yield f"prefill B={b} T={t}", functools.partial(self.prefill, b, t)
        if "mla" in c.ops:
            for hq in c.mla_heads:
                for b, x in shapes if hq != hmax else ():
                    yield f"mla h{hq} B={b} C={x}", functools.partial(self.mla, b, x, hq)
        for b, x in small:
            if "decode" in c.ops:
                yield f"decode xla B={b} C={x}", functools.partial(self.decode, b, x, ("xla",))
            if "quant" in c.ops:
                yield f"quant xla B={b} C={x}", functools.partial(self.quant, b, x, 4, "xla")
            if "mla" in c.ops:
                yield f"mla xla B={b} C={x}", functools.partial(self.mla, b, x, hmax, "xla")
        if "prefill" in c.ops and c.interpret:
            b, t = c.prefill_shapes[0]
            yield "prefill xla", functools.partial(self.prefill, b, t, ("xla",))


def define_flags():
    """``--config`` (ml_collections config file, or a plain loader without ml_collections),
    ``--workdir``, ``--check``, ``--time``; defined here, not at import, so the module imports
    cleanly in tests."""
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
    return (config, flags.DEFINE_string("workdir", "runs/bench_kernels", "output directory"),
            flags.DEFINE_bool("check", False, "check every kernel against its reference first "
                              "(small shapes; on a GPU also one > 2**31-byte shape each)"),
            flags.DEFINE_bool("time", True, "measure (the prioritised rows)"))


def main(argv):
    del argv
    config, workdir, check, timed = (f.value for f in _FLAGS)
    if not run(config, workdir, check, timed):
        raise SystemExit("kernel checks FAILED")


def run(c, workdir, check=False, timed=True):
    """Checks (``check``), then the prioritised measurements (``timed``) into
    ``workdir/bench_kernels.csv``. Returns whether the checks passed (True without checks)."""
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    ok = True
    if check:
        cases = list(checks.small_cases(c))
        if jax.default_backend() == "gpu":  # the large shapes first: the point of --check
            cases = list(checks.large_cases(c)) + cases
        ok = checks.run_checks(cases)
        print(f"# kernel checks {'ok' if ok else 'FAILED'} ({time.time() - t0:.0f} s)",
              flush=True)
    if not timed:
        return ok
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
    print(f"# wrote {path} ({len(bench.rows)} rows) in {bench.elapsed():.0f} s", flush=True)
    return ok


if __name__ == "__main__":
    _FLAGS = define_flags()
    app.run(main)
