"""Test helpers for Pallas kernels on a CPU-only machine.

* ``lower_for_cuda``: ``jax.jit(f).trace(...).lower(lowering_platforms=("cuda",))`` needs a GPU
  only to read the compute capability; with it faked (an H200, sm_90) the Pallas -> Triton IR
  lowering runs, which catches unsupported primitives, non-power-of-2 tiles and dtype
  mismatches in CI. Compiling that IR (Triton -> PTX) still happens only on a GPU.
* ``lower_for_tpu``: the same for Mosaic (``tpu_custom_call``).
* ``run``: jit + compile with XLA's backend optimisations off: interpret-mode kernels are large
  HLO programs run once on tiny inputs, so this halves the test time (numerics unchanged).
"""

import contextlib
from unittest import mock

import jax
from jax._src.pallas.triton import gpu_info, pallas_call_registration


@contextlib.contextmanager
def fake_h200():
    """Pretend the default backend is an H200 (sm_90) for Pallas' Triton lowering."""
    info = gpu_info.GpuInfo(gpu_version=gpu_info.GpuVersion.H200, arch_name="9.0",
                            compute_capability=90)
    with mock.patch.object(pallas_call_registration.gpu_info_lib, "get_gpu_info",
                           lambda *a, **k: info), \
            mock.patch.object(jax, "default_backend", lambda: "gpu"):
        yield


def lower_for_cuda(f, *args) -> str:
    """StableHLO text of ``jit(f)(*args)`` lowered for cuda (Triton custom calls inside)."""
    with fake_h200():
        return jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def lower_for_tpu(f, *args) -> str:
    """StableHLO text of ``jit(f)(*args)`` lowered for tpu (Mosaic custom calls inside)."""
    return jax.jit(f).trace(*args).lower(lowering_platforms=("tpu",)).as_text()


def compile_fast(f, *args):
    """``jit(f)`` compiled for ``args`` with ``xla_backend_optimization_level=0``."""
    return jax.jit(f).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})


def run(f, *args):
    """``jit(f)(*args)``, compiled by ``compile_fast``."""
    return compile_fast(f, *args)(*args)
