"""Bad model files: ``load_model`` (our exports) and ``load_hf`` (Hugging Face folders) name the
file and what is wrong with it (corrupt JSON, truncated safetensors, NaN weights...)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from lcache.checkpoint import load_model, save_model
from lcache.hf import load_hf
from lcache.model import ModelConfig, Transformer

HF = Path(__file__).resolve().parents[1] / "fixtures" / "hf"
CFG = ModelConfig(vocab_size=64, dim=16, num_layers=1, num_heads=2, num_kv_heads=1, ffn_dim=32,
                  max_seq_len=64)


def edit_json(path: Path, **changes):
    """Set top-level fields of the JSON object in ``path`` (``...`` deletes one)."""
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def truncate(path: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def poison(path: Path, name: str | None = None):
    """One weight (the first, or ``name``) gets a NaN."""
    tensors = load_file(path)
    name = name or sorted(tensors)[0]
    tensors[name] = tensors[name].copy()
    tensors[name].flat[0] = np.nan
    save_file(tensors, path)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return save_model(str(tmp_path_factory.mktemp("export") / "m"),
                      Transformer(CFG, nnx.Rngs(0)))


EXPORTS = [
    ("corrupt_config", lambda d: (d / "config.json").write_text('{"model": {'), ValueError,
     r"config\.json: not valid JSON"),
    ("config_not_object", lambda d: (d / "config.json").write_text("[1, 2]"), ValueError,
     r"config\.json: expected a JSON object, got a list"),
    ("no_model_section", lambda d: edit_json(d / "config.json", model=...), ValueError,
     r"config\.json: missing the 'model' object"),
    ("unknown_field", lambda d: edit_json(d / "config.json", model=dict(CFG.to_dict(), dims=3)),
     ValueError, r"config\.json: unknown ModelConfig fields \['dims'\]"),
    ("bad_rope_theta", lambda d: edit_json(d / "config.json",
                                           model=dict(CFG.to_dict(), rope_theta=0)),
     ValueError, r"config\.json: ModelConfig\.rope_theta must be > 0"),
    ("corrupt_tokenizer_meta", lambda d: (d / "tokenizer_meta.json").write_text("{"),
     ValueError, r"tokenizer_meta\.json: not valid JSON"),
    ("truncated_weights", lambda d: truncate(d / "params.safetensors"), ValueError,
     r"params\.safetensors: not a readable safetensors file, truncated or corrupt"),
    ("missing_weights", lambda d: (d / "params.safetensors").unlink(), FileNotFoundError,
     r"params\.safetensors: no such file"),
    ("nan_weights", lambda d: poison(d / "params.safetensors"), ValueError,
     r"params\.safetensors: tensor '.*' holds 1 non-finite values"),
]


@pytest.mark.parametrize("damage,error,match", [c[1:] for c in EXPORTS],
                         ids=[c[0] for c in EXPORTS])
def test_bad_export(export, tmp_path, damage, error, match):
    folder = Path(shutil.copytree(export, tmp_path / "m"))
    damage(folder)
    with pytest.raises(error, match=match):
        load_model(str(folder))


def test_nan_weights_load_when_asked_by_name(export, tmp_path):
    folder = Path(shutil.copytree(export, tmp_path / "m"))
    poison(folder / "params.safetensors")
    model, _, _ = load_model(str(folder), check_finite=False)
    assert model.cfg == CFG


def hf_folder(tmp_path, family="llama") -> Path:
    return Path(shutil.copytree(HF / family, tmp_path / family))


HF_CASES = [
    ("corrupt_config", "llama", lambda d: (d / "config.json").write_text("{'a': 1}"), ValueError,
     r"llama/config\.json: not valid JSON"),
    ("windowed_mistral_as_llama", "mistral",
     lambda d: edit_json(d / "config.json", architectures=["LlamaForCausalLM"]), ValueError,
     r"architectures=\['LlamaForCausalLM'\] and model_type='mistral' name different families"),
    ("architectures_str", "llama",
     lambda d: edit_json(d / "config.json", architectures="LlamaForCausalLM"), ValueError,
     "architectures='LlamaForCausalLM' is not a list"),
    ("vocab_str", "llama", lambda d: edit_json(d / "config.json", vocab_size="512"), ValueError,
     r"config\.json: vocab_size='512' is not an integer"),
    ("fractional_layers", "llama", lambda d: edit_json(d / "config.json",
                                                       num_hidden_layers=2.5), ValueError,
     r"config\.json: num_hidden_layers=2\.5 is not an integer"),
    ("rope_theta_zero", "mistral", lambda d: edit_json(
        d / "config.json", rope_parameters=dict(rope_type="default", rope_theta=0)),
     ValueError, r"config\.json: ModelConfig\.rope_theta must be > 0"),
    ("truncated_weights", "llama", lambda d: truncate(d / "model.safetensors"), ValueError,
     r"model\.safetensors: not a readable safetensors file"),
    ("nan_weights", "qwen2",
     lambda d: poison(d / "model.safetensors", "model.layers.0.mlp.up_proj.weight"), ValueError,
     r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.up_proj\.weight' holds 1 non-finite"),
    ("corrupt_index", "llama", lambda d: (d / "model.safetensors.index.json").write_text("{"),
     ValueError, r"model\.safetensors\.index\.json: not valid JSON"),
    ("corrupt_tokenizer_config", "llama",
     lambda d: (d / "tokenizer_config.json").write_text("nope"), ValueError,
     r"tokenizer_config\.json: not valid JSON"),
]


@pytest.mark.parametrize("family,damage,error,match", [c[1:] for c in HF_CASES],
                         ids=[c[0] for c in HF_CASES])
def test_bad_hf_folder(tmp_path, family, damage, error, match):
    folder = hf_folder(tmp_path, family)
    damage(folder)
    with pytest.raises(error, match=match):
        load_hf(folder)


def test_hf_model_without_tokenizer(tmp_path):
    """Only the model is wanted: no tokenizer.json, no BOS/EOS ids needed."""
    folder = hf_folder(tmp_path)
    (folder / "tokenizer.json").unlink()
    edit_json(folder / "config.json", bos_token_id=..., eos_token_id=...)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_hf(folder)
    model, tokenizer, _ = load_hf(folder, with_tokenizer=False)
    assert tokenizer is None and model.cfg.vocab_size == 512
