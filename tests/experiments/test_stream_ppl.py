"""Streaming perplexity: the smoke config end to end and the bad inputs (a stream longer than
the text, a budget a policy cannot hold, a checkpoint that does not match its config)."""

import csv
import json
import shutil

import numpy as np
import pytest

from configs.stream_ppl import get_config
from experiments import stream_ppl
from lcache.cache import registry
from lcache.data.heldout import heldout_stream
from lcache.eval import Engine, load_reference, streaming_runs


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_smoke_end_to_end(tmp_path):
    rows = stream_ppl.run(get_config("smoke"), str(tmp_path))
    table = read_csv(tmp_path / "stream_ppl.csv")
    assert list(table[0])[:5] == ["policy", "num_sinks", "cache_size", "tokens", "ppl"]
    assert [r["policy"] for r in table] == ["window", "streaming_llm", "dense", "recompute"]
    assert all(np.isfinite(r["ppl"]) and r["ppl"] > 1 for r in rows)
    assert int(table[-1]["tokens"]) == 75  # recompute: every 4th of 300 targets
    curve = read_csv(tmp_path / "stream_ppl_curve.csv")
    assert list(curve[0]) == ["policy", "num_sinks", "cache_size", "end_token", "ppl"]
    assert (tmp_path / "stream_ppl.png").stat().st_size > 0


def test_stream_longer_than_the_text_raises():
    _, tok = load_reference("random")
    with pytest.raises(ValueError, match="longer than the held-out text"):
        heldout_stream(tok, 10**9)


def test_budget_the_policy_cannot_hold_raises():
    model, _ = load_reference("random")
    with pytest.raises(ValueError, match="cannot hold"):
        registry.build("streaming_llm(sinks=4)", 4)
    with pytest.raises(ValueError, match="cannot hold"):
        registry.build("snapkv(window=8)", 8, prompt_len=256)
    with pytest.raises(ValueError, match="nothing would be compressed"):
        registry.build("pyramidkv", 300, prompt_len=256, num_layers=model.cfg.num_layers)
    with pytest.raises(ValueError, match="cannot hold"):
        streaming_runs(Engine.create(model), np.zeros(10, np.int32), cache_size=4, sinks=(4,))


def test_checkpoint_that_does_not_match_its_config_raises(tmp_path):
    bad = tmp_path / "model"
    shutil.copytree("models/softmax", bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"]["ffn_dim"] = 640
    (bad / "config.json").write_text(json.dumps(cfg))
    c = get_config(f"smoke,model={bad}")
    with pytest.raises(ValueError, match="config expects|does not match its config"):
        stream_ppl.run(c, str(tmp_path / "out"))
