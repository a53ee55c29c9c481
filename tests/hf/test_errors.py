"""Bad HF folders raise clear errors naming the file and field (or tensor)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hf_fixtures import copy_fixture, edit_config
from safetensors.numpy import load_file, save_file

from lcache.hf import load_hf


def rope_config(folder, **changes):
    """Edit ``rope_parameters`` (value ``...`` deletes a key)."""
    params = json.loads((folder / "config.json").read_text())["rope_parameters"]
    for key, value in changes.items():
        if value is ...:
            params.pop(key)
        else:
            params[key] = value
    edit_config(folder, rope_parameters=params)


def test_missing_config(tmp_path):
    folder = copy_fixture(tmp_path, "llama")
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf(folder)


def test_missing_tokenizer(tmp_path):
    folder = copy_fixture(tmp_path, "llama")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_hf(folder)


def test_missing_weights(tmp_path):
    folder = copy_fixture(tmp_path, "llama")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no \*.safetensors"):
        load_hf(folder)


def test_pickle_only_checkpoint_is_refused_unopened(tmp_path):
    folder = copy_fixture(tmp_path, "llama")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not even a pickle: must never be opened")
    with pytest.raises(ValueError, match=r"only pickle checkpoints \['pytorch_model.bin'\]"):
        load_hf(folder)


def test_index_names_missing_shard(tmp_path):
    folder = copy_fixture(tmp_path, "llama")
    names = load_file(folder / "model.safetensors")
    index = {"weight_map": {k: "model-00002-of-00002.safetensors" for k in names}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        load_hf(folder)


@pytest.mark.parametrize("change, match", [
    (dict(architectures=["GPT2LMHeadModel"]), r"architectures=\['GPT2LMHeadModel'\]"),
    (dict(hidden_size=...), "missing field 'hidden_size'"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(attention_bias=True), "attention_bias=True"),
    (dict(partial_rotary_factor=0.5), "partial_rotary_factor=0.5"),
    (dict(layer_types=["full_attention", "sliding_attention"]), "layer_types="),
], ids=["architecture", "missing_field", "hidden_act", "attention_bias", "partial_rotary",
        "mixed_layers"])
def test_unsupported_config_fields(tmp_path, change, match):
    folder = copy_fixture(tmp_path, "llama")
    edit_config(folder, **change)
    with pytest.raises(ValueError, match=f"config.json: .*{match}"):
        load_hf(folder)


def test_qwen2_per_layer_sliding_window(tmp_path):
    folder = copy_fixture(tmp_path, "qwen2")
    edit_config(folder, use_sliding_window=True, sliding_window=16)
    with pytest.raises(ValueError, match="config.json: use_sliding_window=True"):
        load_hf(folder)


@pytest.mark.parametrize("rope_type", ["dynamic", "yarn", "longrope"])
def test_unsupported_rope_type(tmp_path, rope_type):
    folder = copy_fixture(tmp_path, "llama")
    rope_config(folder, rope_type=rope_type)
    with pytest.raises(ValueError, match=f"rope_parameters.rope_type='{rope_type}'"):
        load_hf(folder)


def test_llama3_rope_missing_key(tmp_path):
    folder = copy_fixture(tmp_path, "llama")
    rope_config(folder, low_freq_factor=...)
    with pytest.raises(ValueError, match="missing field 'rope_parameters.low_freq_factor'"):
        load_hf(folder)


def test_shape_mismatch_between_config_and_weights(tmp_path):
    folder = copy_fixture(tmp_path, "mistral")
    edit_config(folder, intermediate_size=96)
    with pytest.raises(ValueError, match=r"model.safetensors: model\.layers\.0\.mlp\.\w+_proj"
                                         r"\.weight has shape \[\d+, \d+\], config.json implies"):
        load_hf(folder)


def test_missing_tensor(tmp_path):
    folder = copy_fixture(tmp_path, "llama")
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.self_attn.v_proj.weight"]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ValueError, match="'model.layers.1.self_attn.v_proj.weight'"):
        load_hf(folder)


def test_unexpected_tensor(tmp_path):
    folder = copy_fixture(tmp_path, "llama")
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.0.self_attn.o_proj.bias"] = np.zeros(64, np.float32)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ValueError, match="model.safetensors: tensor "
                                         "'model.layers.0.self_attn.o_proj.bias'"):
        load_hf(folder)


def test_unsupported_dtype():
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_hf("unused", dtype=np.float16)
