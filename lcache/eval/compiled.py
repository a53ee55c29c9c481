"""Ahead-of-time compiled programs, keyed by (program, graphdef, static arguments, argument
shapes), with the bookkeeping that says where the time went.

``jax.jit(f).lower(...).compile()`` makes compilation explicit: it can run ahead of time, in a
thread pool (XLA compiles in parallel across threads), and be counted and timed apart from the
runs. Runs are timed to completion (``block_until_ready``), so run seconds are device time plus
dispatch, never hidden in a later transfer.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
from absl import logging


def signature(args) -> tuple:
    """Hashable (tree structure, leaf shapes and dtypes) of concrete or abstract arguments."""
    leaves, tree = jax.tree.flatten(args)
    return tree, tuple((tuple(x.shape), str(x.dtype)) for x in leaves)


def spec(shape, dtype="int32") -> jax.ShapeDtypeStruct:
    """An abstract array of ``shape`` and ``dtype`` (an argument of an ahead-of-time job)."""
    return jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype) if isinstance(dtype, str)
                                else dtype)


def abstract(args):
    """``jax.ShapeDtypeStruct`` leaves of ``args`` (for ahead-of-time lowering)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), args)


@dataclasses.dataclass(frozen=True)
class Job:
    """One program instance: ``fn(graphdef, params, *args, **static)`` with ``args`` given as
    concrete arrays or ``ShapeDtypeStruct``s; ``donate`` indexes ``args`` (caches)."""

    fn: Callable
    static: tuple[tuple[str, Any], ...]
    args: tuple
    donate: tuple[int, ...] = ()

    @classmethod
    def of(cls, fn: Callable, *args, donate: tuple[int, ...] = (), **static) -> Job:
        return cls(fn, tuple(sorted(static.items())), args, donate)

    @property
    def name(self) -> str:
        return self.fn.__name__


@dataclasses.dataclass
class ProgramStats:
    """Totals of one program (all its static variants and shapes)."""

    compiles: int = 0
    lower_s: float = 0.0  # tracing + lowering to StableHLO (Python, holds the GIL)
    compile_s: float = 0.0  # XLA compilation (releases the GIL)
    calls: int = 0
    run_s: float = 0.0


class ProgramCache:
    """Compiled programs and their statistics; safe to share between threads and engines."""

    def __init__(self):
        self._compiled: dict[tuple, concurrent.futures.Future] = {}
        self._lock = threading.Lock()
        self.stats: dict[str, ProgramStats] = collections.defaultdict(ProgramStats)

    def _key(self, graphdef, params_sig, job: Job) -> tuple:
        return job.fn, graphdef, job.static, params_sig, signature(job.args), job.donate

    def compiled(self, graphdef, params, params_sig, job: Job):
        """The executable of ``job`` (compiled now unless cached or in flight elsewhere)."""
        key = self._key(graphdef, params_sig, job)
        with self._lock:
            future = self._compiled.get(key)
            owner = future is None
            if owner:
                future = self._compiled[key] = concurrent.futures.Future()
        if not owner:
            return future.result()
        start = time.perf_counter()
        try:
            fn = functools.partial(job.fn, graphdef, **dict(job.static))
            lowered = jax.jit(fn, donate_argnums=tuple(i + 1 for i in job.donate)).lower(
                abstract(params), *abstract(job.args))
            lowered_at = time.perf_counter()
            exe = lowered.compile()
        except BaseException as e:
            with self._lock:
                del self._compiled[key]
            future.set_exception(e)
            raise
        done = time.perf_counter()
        with self._lock:
            s = self.stats[job.name]
            s.compiles += 1
            s.lower_s += lowered_at - start
            s.compile_s += done - lowered_at
        logging.info("compiled %s %s: lowered in %.2f s, compiled in %.2f s", job.name,
                     dict(job.static), lowered_at - start, done - lowered_at)
        future.set_result(exe)
        return exe

    def run(self, graphdef, params, params_sig, job: Job):
        """Compile if needed, run to completion -> the program's outputs (device arrays)."""
        exe = self.compiled(graphdef, params, params_sig, job)
        start = time.perf_counter()
        out = jax.block_until_ready(exe(params, *job.args))
        seconds = time.perf_counter() - start
        with self._lock:
            s = self.stats[job.name]
            s.calls += 1
            s.run_s += seconds
        return out

    def precompile(self, graphdef, params, params_sig, jobs: Iterable[Job],
                   threads: int = 8) -> float:
        """Compile every job not yet compiled, ``threads`` at a time -> wall seconds."""
        if threads < 1:
            raise ValueError(f"precompile threads must be >= 1, got {threads}")
        unique = list({self._key(graphdef, params_sig, j): j for j in jobs}.values())
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda j: self.compiled(graphdef, params, params_sig, j), unique))
        wall = time.perf_counter() - start
        logging.info("precompiled %d programs in %.1f s wall (%d threads)", len(unique), wall,
                     threads)
        return wall

    @property
    def compiles(self) -> int:
        return sum(s.compiles for s in self.stats.values())

    def summary(self) -> list[dict]:
        """One row per program: ``program, compiles, compile_s, calls, run_s``, then a total."""
        rows = [dict(program=name, **dataclasses.asdict(s)) for name, s in self.stats.items()]
        total = dict(program="total", compiles=sum(r["compiles"] for r in rows),
                     lower_s=sum(r["lower_s"] for r in rows),
                     compile_s=sum(r["compile_s"] for r in rows),
                     calls=sum(r["calls"] for r in rows), run_s=sum(r["run_s"] for r in rows))
        return rows + [total]

    def report(self) -> str:
        """``summary`` as aligned text: where the time went (lower and compile seconds are
        summed over threads, so they can exceed the wall time of a parallel ``precompile``)."""
        lines = [f"{'program':18s} {'compiles':>8s} {'lower s':>8s} {'compile s':>10s} "
                 f"{'calls':>6s} {'run s':>8s}"]
        lines += [f"{r['program']:18s} {r['compiles']:8d} {r['lower_s']:8.2f} "
                  f"{r['compile_s']:10.2f} {r['calls']:6d} {r['run_s']:8.2f}"
                  for r in self.summary()]
        return "\n".join(lines)

