"""Model export/import: ``config.json`` + ``params.safetensors`` (+ the tokenizer files).

Training checkpoints (params + optimizer + step, for resuming) are orbax's; this is the small,
portable artefact a trained model ships as (bf16 by default), checked against its config on load.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from lcache import files
from lcache.data import load_tokenizer
from lcache.model import ModelConfig, Transformer


def _flat(params) -> dict:
    """``nnx.State`` -> ``{"blocks.0.attn.q.kernel": leaf}`` in tree order."""
    flat = jax.tree_util.tree_flatten_with_path(params.to_pure_dict())[0]
    return {".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): v
            for path, v in flat}


def flatten_params(params) -> dict[str, np.ndarray]:
    """``nnx.State`` -> ``{"blocks.0.attn.q.kernel": array}``."""
    return {name: np.asarray(v) for name, v in _flat(params).items()}


def save_model(directory: str, model: Transformer, tokenizer=None, meta: dict | None = None,
               dtype=jnp.bfloat16) -> str:
    """Write the model (params cast to ``dtype``), its config and tokenizer to ``directory``."""
    os.makedirs(directory, exist_ok=True)
    _, params = nnx.split(model, nnx.Param)
    tensors = {k: np.asarray(jnp.asarray(v).astype(dtype)) for k, v in
               flatten_params(params).items()}
    save_file(tensors, os.path.join(directory, "params.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({"model": model.cfg.to_dict(), "meta": meta or {}}, f, indent=1)
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


def _config(cfg_path: str, overrides: dict) -> tuple[ModelConfig, dict]:
    """``(ModelConfig, meta)`` from an exported ``config.json``; errors name the file."""
    raw = files.read_json(cfg_path)
    fields = raw.get("model")
    if not isinstance(fields, dict):
        raise ValueError(f"{cfg_path}: missing the 'model' object (ModelConfig fields)")
    unknown = sorted(fields.keys() - {f.name for f in dataclasses.fields(ModelConfig)})
    if unknown:
        raise ValueError(f"{cfg_path}: unknown ModelConfig fields {unknown}")
    try:
        return ModelConfig(**{**fields, **overrides}), raw.get("meta", {})
    except (TypeError, ValueError) as e:
        raise type(e)(f"{cfg_path}: {e}") from e


def load_model(directory: str, dtype=jnp.float32, check_finite: bool = True, **overrides):
    """-> ``(model, tokenizer, meta)``. ``overrides`` replace config fields that do not change
    parameter shapes (e.g. ``attention_impl``). Raises, naming the file, if ``config.json`` is
    not valid, the weights are unreadable, do not match the config or (``check_finite``) hold
    NaN or infinite values."""
    cfg_path = os.path.join(directory, "config.json")
    if not os.path.isfile(cfg_path):
        raise ValueError(f"no config.json in checkpoint directory {directory!r}")
    cfg, meta = _config(cfg_path, overrides)
    # abstract init: shapes only, the weights come from the file
    graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))),
                                       nnx.Param, ...)
    expected = _flat(params)
    weights = os.path.join(directory, "params.safetensors")
    with files.open_safetensors(weights) as f:
        loaded = {name: f.get_tensor(name) for name in f.keys()}
    missing, extra = expected.keys() - loaded.keys(), loaded.keys() - expected.keys()
    if missing or extra:
        raise ValueError(f"checkpoint {directory!r} does not match its config: missing "
                         f"{sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}")
    for name, ref in expected.items():
        if loaded[name].shape != ref.shape:
            raise ValueError(f"checkpoint {directory!r}: {name} has shape {loaded[name].shape}, "
                             f"config expects {ref.shape}")
        if check_finite:
            files.check_finite(weights, name, loaded[name])
    treedef = jax.tree_util.tree_structure(params.to_pure_dict())
    new = jax.tree_util.tree_unflatten(
        treedef, [jnp.asarray(loaded[n], dtype=dtype) for n in expected])
    nnx.replace_by_pure_dict(params, new)
    model = nnx.merge(graphdef, params, rest)
    tokenizer = None
    if os.path.isfile(os.path.join(directory, "tokenizer_meta.json")):
        tokenizer = load_tokenizer(directory)
    return model, tokenizer, meta
