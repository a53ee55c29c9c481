"""``load_hf``: a local Hugging Face model folder -> our ``Transformer`` and tokenizer."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from lcache.hf.config import model_config, read_config
from lcache.hf.tokenizer import HFTokenizer
from lcache.hf.weights import check_tensors, hf_name, hf_shape, read_tensors, tensor_files
from lcache.model import Transformer

DTYPES = ("float32", "bfloat16")


def _abstract_params(cfg):
    """``(graphdef, params, rest)`` of an unallocated model (no random init)."""
    abstract = nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))
    return nnx.split(abstract, nnx.Param, ...)


def _flat_names(params) -> tuple[list[str], list, jax.tree_util.PyTreeDef]:
    """Dotted names (``blocks.0.attn.q.kernel``) and leaves of ``params``, and its treedef."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))
    names = [".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
             for path, _ in flat]
    return names, [leaf for _, leaf in flat], treedef


def _placer(mesh):
    """``(our name, host array) -> jax.Array``: the default device, or on a ``mesh`` the layout
    of ``lcache.sharding.param_spec`` (q/k/v/gate/up by columns, o/down by rows over 'model')."""
    if mesh is None:
        return lambda name, x: jax.device_put(x)
    from lcache.sharding import MODEL, param_spec, place

    if MODEL not in mesh.axis_names:
        raise ValueError(f"the mesh needs a {MODEL!r} axis (lcache.sharding.make_mesh), got axes "
                         f"{mesh.axis_names}")
    return lambda name, x: place(x, NamedSharding(mesh, param_spec(name)))


def load_hf(path: str | os.PathLike, dtype=jnp.float32, mesh: jax.sharding.Mesh | None = None,
            with_tokenizer: bool = True, check_finite: bool = True, **overrides):
    """Load an HF Llama / Qwen2 / Mistral folder -> ``(model, tokenizer, hf_config)``.

    ``path`` holds ``config.json``, ``model.safetensors`` (or shards plus
    ``model.safetensors.index.json``) and ``tokenizer.json``. Params are stored in ``dtype``
    (float32 or bfloat16); ``compute_dtype`` follows it unless given in ``overrides``, which
    replace ``ModelConfig`` fields (e.g. ``attention_impl``). With a ``mesh`` (``data`` x ``model``,
    ``lcache.sharding.make_mesh``) params are split over ``model`` by ``lcache.sharding``'s rules,
    one tensor at a time. ``hf_config`` is the parsed ``config.json``. ``with_tokenizer=False``
    loads the model only (``tokenizer`` is None; no ``tokenizer.json`` or BOS/EOS ids needed).
    ``check_finite`` refuses weights holding NaN or inf. Bad input raises ``FileNotFoundError`` /
    ``ValueError`` naming the file and field or tensor (corrupt JSON, truncated safetensors too).
    """
    directory = os.fspath(path)
    dtype = jnp.dtype(dtype)
    if dtype.name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype.name}")
    hf_config = read_config(directory)
    cfg = model_config(hf_config, **{"compute_dtype": dtype.name, **overrides})
    tokenizer = HFTokenizer.from_dir(directory, hf_config) if with_tokenizer else None
    files = tensor_files(directory)
    graphdef, params, rest = _abstract_params(cfg)
    ours, leaves, treedef = _flat_names(params)
    names = {k: hf_name(k) for k in ours}
    expected = {names[k]: hf_shape(k, leaf.shape) for k, leaf in zip(ours, leaves, strict=True)}
    check_tensors(files, expected, tied=cfg.tie_embeddings)
    put = _placer(mesh)
    arrays = {k: put(k, arr.astype(dtype)) for k, arr in read_tensors(files, names, check_finite)}
    loaded = jax.tree_util.tree_unflatten(treedef, [arrays[k] for k in ours])
    nnx.replace_by_pure_dict(params, loaded)
    return nnx.merge(graphdef, params, rest), tokenizer, hf_config
