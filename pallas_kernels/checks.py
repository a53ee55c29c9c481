"""Kernel checks on the current device: every kernel against its ``jnp`` reference.

``small_cases``: odd shapes, random masks, slot probabilities, in-kernel RoPE, a sink logit,
every quantized bit width and dequantization path. ``large_cases`` (GPU): one shape per kernel
whose largest operand exceeds ``2**31`` bytes (the 4 GiB int8 codes of B = 32, 128K among
them), compared with the reference on its first and last batch rows, where element offsets
are smallest and largest. Inputs are pseudo-random (``benchtools.fake``), never zeros.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels.benchtools import fake, make_quant, nbytes
from pallas_kernels.decode import decode_attention
from pallas_kernels.mla_decode import mla_decode_attention
from pallas_kernels.prefill import observation_scores, prefill_attention, prefill_reference
from pallas_kernels.quant_decode import quant_decode_attention
from pallas_kernels.quant_decode.gpu import quant_decode_gpu


class Case(NamedTuple):
    """``run()`` the kernel and ``ref()`` the reference on fixed inputs (both return the same
    pytree), compared by max abs error against ``tol``; ``bytes``: largest operand."""

    name: str
    run: Callable
    ref: Callable
    tol: float
    bytes: int = 0


def _err(got, want):
    got, want = jax.tree.leaves(got), jax.tree.leaves(want)
    return max(float(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)).max())
               for a, b in zip(got, want, strict=True))


def _row(tree, i):
    """Batch row ``i`` (negative counts from the end) of every array in ``tree``, kept 1-long."""
    return jax.tree.map(lambda x: x[i % x.shape[0]][None], tree)


def _case(name, kernel, reference, args, tol, rows=None):
    """A ``Case`` comparing ``kernel(*args)`` with ``reference``; with ``rows``, only those
    batch rows, the reference running on those rows of the inputs alone."""
    def run():
        out = jax.jit(kernel)(*args)
        return out if rows is None else [_row(out, i) for i in rows]

    def ref():
        fn = jax.jit(reference)
        return fn(*args) if rows is None else [fn(*_row(args, i)) for i in rows]

    return Case(name, run, ref, tol, max(nbytes(a) for a in jax.tree.leaves(args)))


def _decode_args(seed, b, hkv, hq, c, d, dt, density=0.5):
    return (fake(seed, (b, hq, d), dt), fake(seed + 1, (b, hkv, c, d), dt),
            fake(seed + 2, (b, hkv, c, d), dt),
            fake(seed + 3, (b, hkv, c), jnp.float32) < 2 * density - 1)


def small_cases(c) -> Iterator[Case]:
    """Every kernel on small shapes (``c``: the bench config: heads, head dim, dtype, MLA and
    quantization settings; ``c.interpret`` shrinks the shapes)."""
    dt, hq, hkv, d = jnp.dtype(c.dtype), c.hq, c.hkv, c.d
    n = 100 if c.interpret else 1000
    kw = dict(interpret=c.interpret, return_slot_probs=True)
    args = _decode_args(0, 2, hkv, hq, n + 3, d, dt)
    sink = fake(9, (hq,), jnp.float32) * 3
    ref = functools.partial(decode_attention, impl="xla", return_slot_probs=True)
    if "decode" in c.check_ops:
        for name, extra in (("decode", {}), ("decode+sink", dict(sink_logit=sink))):
            yield _case(name, functools.partial(decode_attention, impl="pallas", **kw, **extra),
                        functools.partial(ref, **extra), args, 5e-2)
        if not c.interpret:  # B = 1, 70K: few long programs (decode.gpu.long_programs)
            yield _case("decode (long programs)", functools.partial(
                decode_attention, impl="pallas", **kw), ref, _decode_args(5, 1, hkv, hq, 70001,
                                                                          d, dt), 5e-2)
    for bits in c.quant_bits if "quant" in c.check_ops else ():
        codes, segs, q = make_quant(bits, 2, hkv, hq, n + 5, d, bits, c.quant_group,
                                    c.quant_residual, c.quant_sinks, dt)
        codes = codes._replace(valid=fake(bits, codes.valid.shape, jnp.float32) < 0.2)
        ref = functools.partial(quant_decode_attention, impl="xla", return_slot_probs=True)
        for how in ("jnp",) if c.interpret else c.check_dequant:
            yield _case(f"quant_decode int{bits} {how}", functools.partial(
                quant_decode_gpu, dequant=how, **kw), ref, (q, codes, segs), 5e-2)
    if "mla" in c.check_ops:
        dc, dr, h = c.mla_dc, c.mla_dr, max(c.mla_heads)
        args = (fake(0, (2, h, dc), dt), fake(1, (2, h, dr), dt), fake(2, (2, 1, n, dc), dt),
                fake(3, (2, 1, n, dr), dt), fake(4, (2, 1, n), jnp.float32) < 0.2)
        yield _case("mla_decode", functools.partial(mla_decode_attention, scale=0.05,
                                                    impl="pallas", **kw),
                    functools.partial(mla_decode_attention, scale=0.05, impl="xla",
                                      return_slot_probs=True), args, 5e-2)
    if "prefill" in c.check_ops:
        t = 40 if c.interpret else 300
        args = (fake(0, (1, hq, t, d), dt), fake(1, (1, hkv, t, d), dt),
                fake(2, (1, hkv, t, d), dt))
        yield _case("prefill+scores", functools.partial(
            prefill_attention, obs_window=c.prefill_window, impl="pallas",
            interpret=c.interpret), functools.partial(
            prefill_attention, obs_window=c.prefill_window, impl="xla"), args, 5e-2)
        # the model's H2O mass: every real query of ragged rows observes (W = T, padded)
        q, k = fake(3, (2, hq, t, d), dt), fake(4, (2, hkv, t, d), dt)
        lse = prefill_reference(q, k, k, return_lse=True)[1]
        idx = jnp.where(jnp.arange(t) < jnp.array([[t], [t - 7]]), jnp.arange(t), -1)
        yield _case("prefill mass (every query)", functools.partial(
            observation_scores, impl="pallas", interpret=c.interpret), functools.partial(
            observation_scores, impl="xla"), (q, idx, lse, k), 5e-2)


def large_cases(c) -> Iterator[Case]:
    """One shape per kernel with an operand over ``2**31`` bytes (GPU; ~9 GiB at most)."""
    dt, hq, hkv, d = jnp.dtype(c.dtype), c.hq, c.hkv, c.d
    rows = (0, -1)
    b = 16
    args = _decode_args(10, b, hkv, hq, 70001, d, dt)  # keys 2.3 GB
    yield _case("decode (keys 2.3 GB)", functools.partial(decode_attention, impl="pallas"),
                functools.partial(decode_attention, impl="xla"), args, 5e-2, rows)
    for bits, ctx in ((8, 131072), (4, 139264)):  # int8: 4 GiB of codes, the B=32 crash
        codes, segs, q = make_quant(bits + 20, 32, hkv, hq, ctx, d, bits, c.quant_group,
                                    c.quant_residual, c.quant_sinks, dt)
        codes = codes._replace(valid=fake(bits, codes.valid.shape, jnp.float32) < 0.0)
        yield _case(f"quant_decode int{bits} (codes {nbytes(codes.k_codes) / 1e9:.1f} GB)",
                    functools.partial(quant_decode_attention, impl="pallas"),
                    functools.partial(quant_decode_attention, impl="xla"), (q, codes, segs),
                    5e-2, rows)
    dc, dr, h = c.mla_dc, c.mla_dr, max(c.mla_heads)
    b, n = 8, 300007
    args = (fake(30, (b, h, dc), dt), fake(31, (b, h, dr), dt), fake(32, (b, 1, n, dc), dt),
            fake(33, (b, 1, n, dr), dt), fake(34, (b, 1, n), jnp.float32) < 0.0)
    yield _case("mla_decode (latent 2.5 GB)", functools.partial(
        mla_decode_attention, scale=0.05, impl="pallas"), functools.partial(
        mla_decode_attention, scale=0.05, impl="xla"), args, 5e-2, rows)
    b, t = 2100, 128
    args = (fake(40, (b, hq, t, d), dt), fake(41, (b, hkv, t, d), dt),
            fake(42, (b, hkv, t, d), dt))
    yield _case("prefill+scores (q 2.2 GB)", functools.partial(
        prefill_attention, obs_window=c.prefill_window, impl="pallas"), functools.partial(
        prefill_attention, obs_window=c.prefill_window, impl="xla"), args, 5e-2, rows)


def run_checks(cases) -> bool:
    """Runs each case (a failure to run counts as a failed check); prints one line each."""
    ok = True
    for case in cases:
        try:
            err = _err(case.run(), case.ref())
            good = err < case.tol
            msg = f"max err {err:.2e} {'ok' if good else 'FAIL'}"
        except Exception as e:  # noqa: BLE001 - a crashing kernel is a failed check
            good, msg = False, f"FAIL {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        ok &= good
        print(f"check {case.name}: {msg}", flush=True)
    return ok
