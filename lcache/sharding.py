"""Device layouts for generation: a (``data``, ``model``) mesh under ``jit``, or ``pmap``.

Mesh layout (``MeshLayout``): the batch is split over ``data``; KV heads, the caches and the
attention/MLP weights over ``model`` (Megatron-style tensor parallelism: q/k/v/gate/up split by
output columns = heads or ffn units, o/down by input rows, so each layer ends in one all-reduce).
Weights follow the rule table ``PARAM_RULES``; every cache leaf of rank >= 3 is ``[B, H, ...]``
(head-major, as all cache states are) and is split ``P('data', 'model')``, lower ranks ``[B, ...]``
over ``data`` only. The layout is pinned with sharding constraints inside the compiled steps; the
compiler propagates it to everything else.

Pmap layout (``PmapLayout``): classic TPU-VM data parallelism: replicated params, the batch split
over local devices with a leading device axis, one cache per device.

Multi-host: call ``initialize_distributed()`` (``jax.distributed.initialize``) first;
``make_mesh`` then spans every process's devices, host arrays (identical on every process) are
placed with ``make_array_from_callback`` and read back with ``process_allgather``, so the same
code runs on one host or a pod slice. ``PmapLayout`` stays within one host.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lcache.attention.decode import uses_kernel
from pallas_kernels.decode import decode_attention

DATA, MODEL = "data", "model"

# (regex on the dotted param name, spec); anything unmatched is replicated.
PARAM_RULES = (
    (r"attn\.(q|k|v|gate)\.kernel$", P(None, MODEL)),  # [dim, heads*D]: columns are heads
    (r"attn\.(q|k|v|gate)\.bias$", P(MODEL)),
    (r"attn\.o\.kernel$", P(MODEL, None)),  # [heads*D, dim]: partial sums, then all-reduce
    (r"attn\.sink_logit$", P(MODEL)),  # [Hq]
    (r"mlp\.(gate|up)\.kernel$", P(None, MODEL)),  # [dim, ffn]
    (r"mlp\.down\.kernel$", P(MODEL, None)),  # [ffn, dim]
)


def make_mesh(data: int = 1, model: int = 1, devices: Sequence | None = None) -> Mesh:
    """A ``(data, model)`` mesh over the first ``data * model`` devices (of every process).

    Axis types are ``Auto``, not the ``Explicit`` default of ``jax.make_mesh``: the model and the
    policies are written for the global view (reshapes of sharded head axes, ``vmap`` over a
    sharded batch), which Explicit mode rejects unless every op names its output sharding; with
    Auto the compiler propagates the layout from our parameter placement and cache constraints.
    """
    devices = list(jax.devices() if devices is None else devices)
    if data < 1 or model < 1:
        raise ValueError(f"mesh axes must be >= 1, got data={data}, model={model}")
    if data * model > len(devices):
        raise ValueError(f"a {data}x{model} (data x model) mesh needs {data * model} devices, "
                         f"only {len(devices)} present")
    return jax.make_mesh((data, model), (DATA, MODEL), axis_types=(AxisType.Auto,) * 2,
                         devices=devices[: data * model])


def initialize_distributed(coordinator: str = "", num_processes: int = 0,
                           process_id: int = -1) -> None:
    """``jax.distributed.initialize`` with the values given; unset ones (``""``, 0, -1) are
    detected (TPU pod slices, Slurm, Open MPI). Call before any other jax work."""
    jax.distributed.initialize(coordinator_address=coordinator or None,
                               num_processes=num_processes or None,
                               process_id=None if process_id < 0 else process_id)


def _name(path) -> str:
    """Dotted name of an ``nnx.State`` leaf path: ``blocks.0.attn.q.kernel``."""
    parts = [getattr(k, "key", getattr(k, "idx", None)) for k in path]
    return ".".join(str(p) for p in parts if p is not None)


def param_spec(name: str) -> P:
    """The ``PartitionSpec`` of a parameter from its dotted name (``PARAM_RULES``)."""
    return next((spec for pattern, spec in PARAM_RULES if re.search(pattern, name)), P())


def cache_spec(leaf) -> P:
    """Cache leaves: ``[B, H, ...]`` at rank >= 3 (head-major states), ``[B, ...]`` below."""
    return P(DATA, MODEL) if leaf.ndim >= 3 else P(DATA) if leaf.ndim else P()


def place(x, sharding) -> jax.Array:
    """A host array (the same on every process) as a global array with ``sharding``."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _divides(what: str, n: int, axis: str, size: int) -> None:
    if n % size:
        raise ValueError(f"{what} = {n} is not divisible by the {axis!r} mesh axis ({size})")


@dataclasses.dataclass(frozen=True)
class MeshLayout:
    """``jit`` over a ``(data, model)`` mesh. Host arrays are ``[B, ...]`` in and out."""

    mesh: Mesh

    def check(self, model, policy) -> None:
        """Raises ``ValueError`` for a model the ``model`` axis cannot split (before any work)."""
        tp = self.mesh.shape[MODEL]
        cfg = model.cfg
        _divides("num_kv_heads", cfg.num_kv_heads, MODEL, tp)
        _divides("ffn_dim", cfg.ffn_dim, MODEL, tp)
        caches = jax.eval_shape(lambda: model.init_cache(policy, 1))
        for leaf in jax.tree.leaves(caches):
            if leaf.ndim >= 3:
                _divides("cache heads", leaf.shape[1], MODEL, tp)
        if self.mesh.size > 1 and uses_kernel(cfg.attention_impl, cfg.attention):
            raise ValueError(
                f"attention_impl={cfg.attention_impl!r} calls the Pallas decode kernel, which jit "
                "cannot partition (it would gather the whole cache every step); use "
                "attention_impl='xla' on a mesh, or PmapLayout for data parallelism with kernels")

    def check_batch(self, batch: int) -> None:
        _divides("batch", batch, DATA, self.mesh.shape[DATA])

    def put_params(self, params):
        """Params sharded by ``PARAM_RULES``."""
        return jax.tree_util.tree_map_with_path(
            lambda path, x: place(x, NamedSharding(self.mesh, param_spec(_name(path)))), params)

    def put(self, x) -> jax.Array:
        """A host array ``[B, ...]`` (or a scalar) split over ``data``."""
        x = np.asarray(x)
        return place(x, NamedSharding(self.mesh, P(DATA) if x.ndim else P()))

    def get(self, x) -> np.ndarray:
        """The global value on every process (a mesh may span processes)."""
        if x.is_fully_addressable:
            return np.asarray(x)
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    def constrain(self, tree):
        """Pins cache-like pytrees (``cache_spec``) inside a compiled function."""
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
            x, NamedSharding(self.mesh, cache_spec(x))), tree)

    def compile(self, fn: Callable, in_axes: tuple, donate: tuple) -> Callable:
        del in_axes  # every operand is a global array placed by ``put``/``put_params``
        return jax.jit(fn, donate_argnums=donate)


@dataclasses.dataclass(frozen=True)
class PmapLayout:
    """``pmap`` over local devices: replicated params, ``[D, B/D, ...]`` operands on device."""

    num_devices: int = 0  # the first ``num_devices`` local devices; 0 = all of them

    def __post_init__(self):
        present = jax.local_device_count()
        if not 0 <= self.num_devices <= present:
            raise ValueError(f"pmap over {self.num_devices} devices, only {present} local "
                             "devices present")

    @property
    def devices(self) -> tuple:
        local = jax.local_devices()
        return tuple(local[: self.num_devices or len(local)])

    def check(self, model, policy) -> None:
        del model, policy  # any model: params are replicated

    def check_batch(self, batch: int) -> None:
        _divides("batch", batch, "pmap device", len(self.devices))

    def _sharding(self, spec: P) -> NamedSharding:
        return NamedSharding(Mesh(np.array(self.devices), ("devices",)), spec)

    def put_params(self, params):
        """Replicated on the pmap devices: ``in_axes=None`` then moves nothing per call."""
        return jax.device_put(params, self._sharding(P()))

    def put(self, x) -> jax.Array:
        """A host array ``[B, ...]`` as ``[D, B/D, ...]``, row block ``i`` on device ``i``."""
        x = np.asarray(x)
        if not x.ndim:
            return jax.device_put(x, self._sharding(P()))
        return jax.device_put(x.reshape(len(self.devices), -1, *x.shape[1:]),
                              self._sharding(P("devices")))

    def get(self, x) -> np.ndarray:
        x = np.asarray(x)
        return x.reshape(-1, *x.shape[2:])

    def constrain(self, tree):
        return tree

    def compile(self, fn: Callable, in_axes: tuple, donate: tuple) -> Callable:
        return jax.pmap(fn, in_axes=in_axes, devices=self.devices, donate_argnums=donate)


def shard_decode_attention(mesh: Mesh, **kernel_kw) -> Callable:
    """``pallas_kernels.decode.decode_attention`` run per device inside ``jax.shard_map``.

    Same arguments and results as the kernel (``q [B, Hq, D]``, ``keys [B, Hkv, C, D]``,
    ``values [B, Hkv, C, Dv]``, ``valid``/``rope_pos [B, Hkv, C]``, ``inv_freq [D/2]``) with the
    batch over ``data`` and KV heads over ``model``: query heads split in the same contiguous
    blocks, so each device holds whole GQA groups and no communication is needed.
    ``check_vma=False``: ``pallas_call`` outputs carry no varying-axes type.
    """
    bh = P(DATA, MODEL)

    def attend(q, keys, values, valid, rope_pos=None, inv_freq=None, return_slot_probs=False):
        rope = () if rope_pos is None else (rope_pos, inv_freq)

        def local(q, keys, values, valid, *rope):
            rope_kw = dict(rope_pos=rope[0], inv_freq=rope[1]) if rope else {}
            return decode_attention(q, keys, values, valid, **rope_kw,
                                    return_slot_probs=return_slot_probs, **kernel_kw)

        in_specs = (bh,) * 4 + ((bh, P()) if rope else ())
        out_specs = (bh, bh) if return_slot_probs else bh
        return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                             check_vma=False)(q, keys, values, valid, *rope)

    return attend
