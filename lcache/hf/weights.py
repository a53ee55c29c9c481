"""HF safetensors checkpoints -> our parameter names, shapes and arrays.

HF linear weights are ``[out, in]``; our kernels are ``[in, out]``, so every ``*.kernel`` is the
transpose of its HF tensor. Embeddings ``[V, dim]`` and norm scales ``[dim]`` map as they are.
Pickle checkpoints (``*.bin``, ``*.pt``, ``*.pth``) are refused, never opened.
"""

from __future__ import annotations

import glob
import os

from lcache.files import check_finite as finite
from lcache.files import open_safetensors, read_json

INDEX_FILE = "model.safetensors.index.json"
_PICKLE = ("*.bin", "*.pt", "*.pth", "*.ckpt")
_TOP = {"embed.embedding": "model.embed_tokens.weight", "norm.scale": "model.norm.weight",
        "lm_head.kernel": "lm_head.weight"}
_BLOCK = {"attn_norm.scale": "input_layernorm.weight",
          "mlp_norm.scale": "post_attention_layernorm.weight",
          **{f"attn.{p}.kernel": f"self_attn.{p}_proj.weight" for p in "qkvo"},
          **{f"attn.{p}.bias": f"self_attn.{p}_proj.bias" for p in "qkv"},
          **{f"mlp.{p}.kernel": f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")}}
_IGNORED_SUFFIX = ".rotary_emb.inv_freq"  # a buffer some old checkpoints saved


def hf_name(ours: str) -> str:
    """``blocks.3.attn.q.kernel`` -> ``model.layers.3.self_attn.q_proj.weight``."""
    if ours.startswith("blocks."):
        _, layer, rest = ours.split(".", 2)
        if rest in _BLOCK:
            return f"model.layers.{layer}.{_BLOCK[rest]}"
    elif ours in _TOP:
        return _TOP[ours]
    raise ValueError(f"parameter {ours!r} has no Hugging Face counterpart (was a config "
                     "override given that adds parameters?)")


def hf_shape(ours: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The HF tensor shape of our parameter ``ours`` of ``shape``."""
    return shape[::-1] if ours.endswith(".kernel") else shape


def tensor_files(directory: str) -> dict[str, str]:
    """``{tensor name: safetensors file}`` from ``model.safetensors.index.json`` or every
    ``*.safetensors`` file in ``directory``."""
    index = os.path.join(directory, INDEX_FILE)
    if os.path.isfile(index):
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{INDEX_FILE}: missing field 'weight_map'")
        for shard in sorted(set(weight_map.values())):
            if not os.path.isfile(os.path.join(directory, shard)):
                raise FileNotFoundError(f"{INDEX_FILE} lists shard {shard!r}, which is not in "
                                        f"{directory!r}")
        return {name: os.path.join(directory, shard) for name, shard in weight_map.items()}
    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if not files:
        pickles = sorted(os.path.basename(p) for pat in _PICKLE
                         for p in glob.glob(os.path.join(directory, pat)))
        if pickles:
            raise ValueError(f"{directory!r} holds only pickle checkpoints {pickles}; they are "
                             "never loaded (arbitrary code execution). Convert them to "
                             "safetensors, e.g. save_pretrained(..., safe_serialization=True)")
        raise FileNotFoundError(f"no *.safetensors or {INDEX_FILE} in HF model folder "
                                f"{directory!r}")
    names = {}
    for path in files:
        with open_safetensors(path) as f:
            names.update(dict.fromkeys(f.keys(), path))
    return names


def check_tensors(files: dict[str, str], expected: dict[str, tuple[int, ...]],
                  tied: bool) -> None:
    """Raise unless the files hold exactly the ``expected {hf name: shape}`` tensors (reads
    headers only). ``tied``: a stored ``lm_head.weight`` is ignored, as transformers does."""
    missing = sorted(expected.keys() - files.keys())
    if missing:
        raise ValueError(f"tensor {missing[0]!r} (and {len(missing) - 1} more) required by "
                         f"config.json is missing from the safetensors files")
    ignored = {n for n in files if n.endswith(_IGNORED_SUFFIX) or (tied and n == "lm_head.weight")}
    extra = sorted(files.keys() - expected.keys() - ignored)
    if extra:
        raise ValueError(f"{os.path.basename(files[extra[0]])}: tensor {extra[0]!r} (and "
                         f"{len(extra) - 1} more) is not used by config.json's architecture")
    for name, shape in expected.items():
        with open_safetensors(files[name]) as f:
            got = tuple(f.get_slice(name).get_shape())
        if got != shape:
            raise ValueError(f"{os.path.basename(files[name])}: {name} has shape {list(got)}, "
                             f"config.json implies {list(shape)}")


def read_tensors(files: dict[str, str], names: dict[str, str], check_finite: bool = True):
    """Yield ``(our name, array)`` for ``names {our name: hf name}``, one file open at a time;
    kernels come back transposed to ``[in, out]``, in the stored dtype (bf16 via ml_dtypes).
    With ``check_finite`` a tensor holding NaN or inf raises, naming the file and tensor."""
    by_file: dict[str, list[str]] = {}
    for ours, theirs in names.items():
        by_file.setdefault(files[theirs], []).append(ours)
    for path, ours_list in by_file.items():
        with open_safetensors(path) as f:
            for ours in ours_list:
                arr = f.get_tensor(names[ours])
                if check_finite:
                    finite(path, names[ours], arr)
                yield ours, arr.T if ours.endswith(".kernel") else arr
