"""``experiments/sinks.py``: the smoke config end to end, and clear errors on bad input."""

import csv
import importlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _modules():
    """``(experiments.sinks, configs.sinks)``: repo-root packages, not installed ones."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("experiments.sinks"), importlib.import_module("configs.sinks")


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _tiny_text_checkpoint(path) -> str:
    """A random byte-level model with one learnable sink token, saved like a trained one."""
    from flax import nnx

    from lcache.checkpoint import save_model
    from lcache.data import ByteTokenizer
    from lcache.model import ModelConfig, Transformer

    cfg = ModelConfig(vocab_size=259, dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      ffn_dim=48, num_sink_tokens=1)
    return save_model(str(path), Transformer(cfg, nnx.Rngs(0)), ByteTokenizer(),
                      dict(steps=0, tokens_seen=0))


def test_smoke_end_to_end(tmp_path, monkeypatch):
    """The smoke config (Bigram-Backcopy) plus a random text model with a sink token."""
    sinks, configs = _modules()
    monkeypatch.chdir(ROOT)  # checkpoint paths of the config are relative to the repo
    c = configs.get_config("smoke")
    c.checkpoints += f",tiny={_tiny_text_checkpoint(tmp_path / 'tiny')}"
    summary = sinks.run(c, str(tmp_path / "out"))
    out = tmp_path / "out"
    with open(out / "sinks.csv") as f:
        assert f.readline().strip() == ("variant,layer,head,sink_rate,first_token_share,"
                                        "sink_value_norm,other_value_norm")
    rows = _read(out / "sinks.csv")
    # backcopy: 3 layers x 4 heads; tiny: 2 x 4, with the sink token and with BOS first
    assert [r["variant"] for r in rows] == ["backcopy"] * 12 + ["tiny"] * 8 + ["tiny@bos"] * 8
    for r in rows:
        assert 0 <= float(r["sink_rate"]) <= 1 and 0 <= float(r["first_token_share"]) <= 1
        assert float(r["sink_value_norm"]) > 0 and float(r["other_value_norm"]) > 0
    assert [s["variant"] for s in _read(out / "summary.csv")] == ["backcopy", "tiny", "tiny@bos"]
    ppl = {s["variant"]: s["heldout_ppl"] for s in summary}
    assert 1 < ppl["backcopy"] < 5 and 200 < ppl["tiny"] < 300  # trained vs ~uniform over 259
    assert [s["first_token"] for s in summary] == ["<bos>", "<sink>", "<bos>"]
    assert len(_read(out / "backcopy_heads.csv")) == 12
    assert len(_read(out / "massive.csv")) == 4 + 3
    for name in ("sink_map_backcopy", "sink_map_tiny", "sink_map_tiny_bos", "value_norms_tiny",
                 "first_token_share", "massive_activations", "backcopy_share_other_backcopy"):
        assert os.path.getsize(out / f"{name}.png") > 1000


@pytest.mark.parametrize("key,value,match", [("eps", 1.5, r"eps must lie in \(0, 1\)"),
                                             ("eps", 0.0, r"eps must lie in \(0, 1\)"),
                                             ("num_sequences", 0, "num_sequences"),
                                             ("seq_len", 1, "seq_len")])
def test_bad_config_values(tmp_path, key, value, match):
    sinks, configs = _modules()
    c = configs.get_config("smoke")
    c[key] = value
    with pytest.raises(ValueError, match=match):
        sinks.run(c, str(tmp_path))


def test_unknown_variant():
    _, configs = _modules()
    with pytest.raises(ValueError, match="unknown sinks config variant 'huge'"):
        configs.get_config("huge")


@pytest.mark.parametrize("spec,match", [("a=x,a=y", "duplicate"), ("a=", "name=dir"),
                                        ("a@b=x", "name=dir"), (" , ", "empty")])
def test_bad_checkpoint_list(spec, match):
    sinks, _ = _modules()
    with pytest.raises(ValueError, match=match):
        sinks.parse_checkpoints(spec)


def test_checkpoint_names():
    sinks, _ = _modules()
    assert sinks.parse_checkpoints("runs/gpu/softmax/model") == [("softmax",
                                                                  "runs/gpu/softmax/model")]
    assert sinks.parse_checkpoints("a=d1, b=d2") == [("a", "d1"), ("b", "d2")]


def test_mismatched_or_missing_checkpoint(tmp_path):
    sinks, configs = _modules()
    bad = tmp_path / "bad"
    shutil.copytree(ROOT / "models" / "backcopy", bad)
    raw = json.loads((bad / "config.json").read_text())
    raw["model"]["num_layers"] += 1  # weights of 3 layers, config of 4
    (bad / "config.json").write_text(json.dumps(raw))
    c = configs.get_config("smoke")
    c.checkpoints = f"bad={bad}"
    with pytest.raises(ValueError, match="checkpoint 'bad'.*does not match its config"):
        sinks.run(c, str(tmp_path / "out"))
    c.checkpoints = f"gone={tmp_path / 'nowhere'}"
    with pytest.raises(ValueError, match="checkpoint 'gone'.*no config.json"):
        sinks.run(c, str(tmp_path / "out"))
