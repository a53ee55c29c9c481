"""Hugging Face ``config.json`` (Llama, Qwen2, Mistral) -> ``ModelConfig``.

RoPE settings are read from ``rope_parameters`` (transformers >= 5) or from top-level
``rope_theta`` / ``rope_scaling`` (older checkpoints). Supported rope types: 'default', 'linear'
(inv_freq / factor, our 'linear') and 'llama3' (Llama-3.1, our 'llama3'). 'dynamic' NTK changes
the base with the running sequence length, so our static 'ntk' is not equivalent and it is
refused, like every other type. Anything the model cannot express raises a ``ValueError`` naming
the file and field.
"""

from __future__ import annotations

import json
import os

from lcache.model import ModelConfig

CONFIG_FILE = "config.json"
ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
                 "MistralForCausalLM": "mistral"}
ROPE_TYPES = ("default", "linear", "llama3")
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size", "rms_norm_eps", "max_position_embeddings")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                "original_max_position_embeddings")


def read_config(directory: str) -> dict:
    """The parsed ``config.json`` of an HF model folder."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {CONFIG_FILE} in HF model folder {directory!r}")
    with open(path) as f:
        return json.load(f)


def family(hf: dict) -> str:
    """'llama', 'qwen2' or 'mistral', from ``architectures`` (or ``model_type``)."""
    archs = hf.get("architectures") or []
    known = [ARCHITECTURES[a] for a in archs if a in ARCHITECTURES]
    if known:
        return known[0]
    if not archs and hf.get("model_type") in ARCHITECTURES.values():
        return hf["model_type"]
    raise ValueError(f"{CONFIG_FILE}: architectures={archs} (model_type="
                     f"{hf.get('model_type')!r}) is not supported; expected one of "
                     f"{sorted(ARCHITECTURES)}")


def _field(d: dict, name: str, where: str = ""):
    if d.get(name) is None:
        raise ValueError(f"{CONFIG_FILE}: missing field {where + name!r}")
    return d[name]


def _unsupported(field: str, value, why: str) -> ValueError:
    return ValueError(f"{CONFIG_FILE}: {field}={value!r} is not supported ({why})")


def rope_fields(hf: dict) -> dict:
    """``ModelConfig`` RoPE fields from ``rope_parameters`` or ``rope_theta``/``rope_scaling``."""
    where = "rope_parameters" if "rope_parameters" in hf else "rope_scaling"
    params = hf.get(where) or {}
    kind = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta", hf.get("rope_theta"))
    if theta is None:
        raise ValueError(f"{CONFIG_FILE}: missing field 'rope_parameters.rope_theta' "
                         "(or top-level 'rope_theta')")
    rotary = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if rotary != 1.0:
        raise _unsupported("partial_rotary_factor", rotary, "RoPE covers the whole head")
    out = dict(rope_theta=float(theta))
    if kind == "default":
        return out
    if kind not in ROPE_TYPES:
        raise _unsupported(f"{where}.rope_type", kind, f"supported: {ROPE_TYPES}; 'dynamic' NTK "
                           "depends on the running sequence length and has no exact equivalent")
    for key in _LLAMA3_KEYS if kind == "llama3" else ("factor",):
        _field(params, key, where + ".")
    out.update(rope_scaling=kind, rope_factor=float(params["factor"]))
    if kind == "llama3":
        out.update(rope_low_freq_factor=float(params["low_freq_factor"]),
                   rope_high_freq_factor=float(params["high_freq_factor"]),
                   rope_original_max_pos=int(params["original_max_position_embeddings"]))
    return out


def sliding_window(hf: dict, fam: str) -> int:
    """The window every layer uses (0 = none); per-layer mixes are refused."""
    layer_types = set(hf.get("layer_types") or [])
    if len(layer_types) > 1:
        raise _unsupported("layer_types", sorted(layer_types), "one attention type for all layers")
    if fam == "qwen2" and hf.get("use_sliding_window"):
        raise _unsupported("use_sliding_window", True, "Qwen2 windows only the layers above "
                           "max_window_layers")
    return int(hf.get("sliding_window") or 0) if fam == "mistral" else 0


def model_config(hf: dict, **overrides) -> ModelConfig:
    """Our ``ModelConfig`` for a parsed HF ``config.json``; ``overrides`` replace fields."""
    fam = family(hf)
    for name in _REQUIRED:
        _field(hf, name)
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise _unsupported("hidden_act", act, "the MLP is SwiGLU")
    for flag in ("attention_bias", "mlp_bias"):
        if fam != "qwen2" and hf.get(flag):
            raise _unsupported(flag, True, "only q/k/v biases exist (Qwen2)")
    heads = int(hf["num_attention_heads"])
    fields = dict(
        vocab_size=int(hf["vocab_size"]), dim=int(hf["hidden_size"]),
        num_layers=int(hf["num_hidden_layers"]), num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or 0), ffn_dim=int(hf["intermediate_size"]),
        norm_eps=float(hf["rms_norm_eps"]), tie_embeddings=bool(hf.get("tie_word_embeddings")),
        qkv_bias=fam == "qwen2", max_seq_len=int(hf["max_position_embeddings"]),
        sliding_window=sliding_window(hf, fam), **rope_fields(hf))
    return ModelConfig(**{**fields, **overrides})
