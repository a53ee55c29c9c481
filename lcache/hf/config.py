"""Hugging Face ``config.json`` (Llama, Qwen2, Mistral) -> ``ModelConfig``.

RoPE settings are read from ``rope_parameters`` (transformers >= 5) or from top-level
``rope_theta`` / ``rope_scaling`` (older checkpoints). Supported rope types: 'default', 'linear'
(inv_freq / factor, our 'linear') and 'llama3' (Llama-3.1, our 'llama3'). 'dynamic' NTK changes
the base with the running sequence length, so our static 'ntk' is not equivalent and it is
refused, like every other type. Anything the model cannot express raises a ``ValueError`` naming
the file and field.
"""

from __future__ import annotations

import os

from lcache.files import read_json
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
    return read_json(path)


def family(hf: dict) -> str:
    """'llama', 'qwen2' or 'mistral', from ``model_type`` and ``architectures``.

    transformers' ``AutoModelForCausalLM`` picks the config class by ``model_type`` and uses
    ``architectures`` only to choose among that config's model classes, so a folder whose two
    fields name different families loads as ``model_type`` there. We refuse such a folder rather
    than guess which field is the mistake; either field alone is enough.
    """
    archs = hf.get("architectures") or []
    if not isinstance(archs, list):
        raise ValueError(f"{CONFIG_FILE}: architectures={archs!r} is not a list")
    model_type = hf.get("model_type")
    supported = f"supported: architectures {sorted(ARCHITECTURES)}, model_type " \
                f"{sorted(ARCHITECTURES.values())}"
    if archs:
        known = [ARCHITECTURES[a] for a in archs if a in ARCHITECTURES]
        if not known:
            raise ValueError(f"{CONFIG_FILE}: architectures={archs} (model_type={model_type!r}) "
                             f"is not supported; {supported}")
        if model_type is not None and model_type != known[0]:
            raise ValueError(f"{CONFIG_FILE}: architectures={archs} and model_type="
                             f"{model_type!r} name different families (transformers would load "
                             f"a {model_type!r} model); fix one of them")
        return known[0]
    if model_type in ARCHITECTURES.values():
        return model_type
    raise ValueError(f"{CONFIG_FILE}: model_type={model_type!r} without architectures is not "
                     f"supported; {supported}")


def _field(d: dict, name: str, where: str = ""):
    if d.get(name) is None:
        raise ValueError(f"{CONFIG_FILE}: missing field {where + name!r}")
    return d[name]


def _number(d: dict, name: str, kind: type, where: str = ""):
    """``d[name]`` as ``kind`` (int or float); JSON strings, bools and fractional ints raise."""
    value = _field(d, name, where)
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            kind is int and value != int(value)):
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{CONFIG_FILE}: {where + name}={value!r} is not {what}")
    return kind(value)


def _unsupported(field: str, value, why: str) -> ValueError:
    return ValueError(f"{CONFIG_FILE}: {field}={value!r} is not supported ({why})")


def rope_fields(hf: dict) -> dict:
    """``ModelConfig`` RoPE fields from ``rope_parameters`` or ``rope_theta``/``rope_scaling``."""
    where = "rope_parameters" if "rope_parameters" in hf else "rope_scaling"
    params = hf.get(where) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{CONFIG_FILE}: {where}={params!r} is not an object")
    kind = params.get("rope_type", params.get("type", "default"))
    if params.get("rope_theta") is None and hf.get("rope_theta") is None:
        raise ValueError(f"{CONFIG_FILE}: missing field 'rope_parameters.rope_theta' "
                         "(or top-level 'rope_theta')")
    rotary = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if rotary != 1.0:
        raise _unsupported("partial_rotary_factor", rotary, "RoPE covers the whole head")
    out = dict(rope_theta=_number(params, "rope_theta", float, where + ".")
               if params.get("rope_theta") is not None else _number(hf, "rope_theta", float))
    if kind == "default":
        return out
    if kind not in ROPE_TYPES:
        raise _unsupported(f"{where}.rope_type", kind, f"supported: {ROPE_TYPES}; 'dynamic' NTK "
                           "depends on the running sequence length and has no exact equivalent")
    keys = _LLAMA3_KEYS if kind == "llama3" else ("factor",)
    got = {key: _number(params, key, int if key.startswith("original") else float, where + ".")
           for key in keys}
    out.update(rope_scaling=kind, rope_factor=got["factor"])
    if kind == "llama3":
        out.update(rope_low_freq_factor=got["low_freq_factor"],
                   rope_high_freq_factor=got["high_freq_factor"],
                   rope_original_max_pos=got["original_max_position_embeddings"])
    return out


def sliding_window(hf: dict, fam: str) -> int:
    """The window every layer uses (0 = none); per-layer mixes are refused."""
    layer_types = set(hf.get("layer_types") or [])
    if len(layer_types) > 1:
        raise _unsupported("layer_types", sorted(layer_types), "one attention type for all layers")
    if fam == "qwen2" and hf.get("use_sliding_window"):
        raise _unsupported("use_sliding_window", True, "Qwen2 windows only the layers above "
                           "max_window_layers")
    return _number(hf, "sliding_window", int) if fam == "mistral" and hf.get(
        "sliding_window") else 0


def model_config(hf: dict, **overrides) -> ModelConfig:
    """Our ``ModelConfig`` for a parsed HF ``config.json``; ``overrides`` replace fields."""
    fam = family(hf)
    for name in _REQUIRED:
        _number(hf, name, float if name == "rms_norm_eps" else int)
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise _unsupported("hidden_act", act, "the MLP is SwiGLU")
    for flag in ("attention_bias", "mlp_bias"):
        if fam != "qwen2" and hf.get(flag):
            raise _unsupported(flag, True, "only q/k/v biases exist (Qwen2)")
    heads = _number(hf, "num_attention_heads", int)

    def optional(name, default):
        return _number(hf, name, int) if hf.get(name) else default

    fields = dict(
        vocab_size=_number(hf, "vocab_size", int), dim=_number(hf, "hidden_size", int),
        num_layers=_number(hf, "num_hidden_layers", int), num_heads=heads,
        num_kv_heads=optional("num_key_value_heads", heads), head_dim=optional("head_dim", 0),
        ffn_dim=_number(hf, "intermediate_size", int),
        norm_eps=_number(hf, "rms_norm_eps", float),
        tie_embeddings=bool(hf.get("tie_word_embeddings")), qkv_bias=fam == "qwen2",
        max_seq_len=_number(hf, "max_position_embeddings", int),
        sliding_window=sliding_window(hf, fam), **rope_fields(hf))
    try:
        return ModelConfig(**{**fields, **overrides})
    except (TypeError, ValueError) as e:  # a field (or an override) the model cannot take
        raise type(e)(f"{CONFIG_FILE}: {e}") from e
