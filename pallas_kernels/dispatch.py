"""The one door to the kernels: which implementation runs an op, and the logged fallback.

``impl``: 'xla' = the op's pure-``jnp`` reference; 'pallas' = the kernel of the backend (the TPU
kernel on TPU, the Triton kernel on GPU, the Triton kernel interpreted elsewhere); 'auto' = the
kernel on GPU and TPU, the reference elsewhere. A size or feature a kernel cannot take raises
``ValueError`` under 'pallas' and logs a warning and runs the reference under 'auto': never a
wrong result. Every op (``decode``, ``quant_decode``, ``mla_decode``, ``prefill``) and the
model's attention (``lcache.attention``) decide through here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
from absl import logging

IMPLS = ("xla", "pallas", "auto")
KERNEL_BACKENDS = ("gpu", "tpu")


class Kernel(NamedTuple):
    """One backend's kernel for an op: ``reason`` it cannot run these inputs (None = it can)
    and ``call(interpret)`` running it."""

    reason: str | None
    call: Callable


def check_impl(impl):
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def kernel_family(impl):
    """'tpu' or 'gpu' (the kernel family ``impl`` runs here; 'gpu' is interpreted off a GPU),
    or None for the reference."""
    check_impl(impl)
    backend = jax.default_backend()
    if impl == "xla" or (impl == "auto" and backend not in KERNEL_BACKENDS):
        return None
    return "tpu" if backend == "tpu" else "gpu"


def run(op, impl, reference, *, gpu: Kernel, tpu: Kernel | None = None, interpret=None):
    """Runs ``op`` by ``impl``: ``reference()`` or the backend's kernel.

    ``interpret``: None = interpret off GPU/TPU. A backend without a kernel (``tpu=None``) or
    a kernel's ``reason`` falls back to the reference (logged) under 'auto' and raises under
    'pallas'.
    """
    family = kernel_family(impl)
    if family is None:
        return reference()
    backend = jax.default_backend()
    kernel = gpu if family == "gpu" else tpu
    reason = "no kernel for this backend" if kernel is None else kernel.reason
    if reason is None:
        return kernel.call(backend not in KERNEL_BACKENDS if interpret is None else interpret)
    if impl == "pallas":
        raise ValueError(f"{op}(impl='pallas') on {backend}: {reason}; use impl='auto' to fall "
                         "back to XLA")
    logging.warning("%s: %s on %s; using the XLA reference", op, reason, backend)
    return reference()
