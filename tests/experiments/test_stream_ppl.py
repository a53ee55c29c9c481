"""Streaming perplexity: the smoke config end to end, the recomputation baseline against dense
attention, and the bad inputs (a stream longer than the text, a budget a policy cannot hold, a
checkpoint that does not match its config)."""

import csv
import json
import shutil

import numpy as np
import pytest

from configs.stream_ppl import get_config
from experiments import stream_ppl, streaming
from lcache.cache import Dense


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


@pytest.mark.parametrize("name", ["random", "random-sink"])
def test_recompute_equals_dense_when_the_window_covers_the_stream(name):
    model, tok = streaming.load_reference(name)
    stream = streaming.heldout_stream(tok, 40)
    dense = streaming.dense_nll(model, stream, chunk=16)
    recompute = streaming.recompute_nll(model, stream, window=64, stride=1, batch=8)
    decoded = streaming.stream_nll(model, stream, Dense(48), chunk=16)
    np.testing.assert_allclose(recompute, dense, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(decoded, dense, rtol=2e-4, atol=2e-4)
    assert streaming.ppl(recompute) == pytest.approx(streaming.ppl(dense), rel=1e-4)


def test_stream_longer_than_the_text_raises():
    _, tok = streaming.load_reference("random")
    with pytest.raises(ValueError, match="longer than the held-out text"):
        streaming.heldout_stream(tok, 10**9)


def test_budget_the_policy_cannot_hold_raises():
    model, _ = streaming.load_reference("random")
    with pytest.raises(ValueError, match="cannot hold"):
        streaming.make_policy("streaming_llm", 4, model.cfg, num_sinks=4)
    with pytest.raises(ValueError, match="cannot hold"):
        streaming.make_policy("snapkv", 8, model.cfg, 256, window=8)
    with pytest.raises(ValueError, match="nothing would be compressed"):
        streaming.make_policy("pyramidkv", 300, model.cfg, 256)
    with pytest.raises(ValueError, match="cannot hold"):
        streaming.streaming_runs(model, np.zeros(10, np.int32), cache_size=4, sinks=(4,))


def test_checkpoint_that_does_not_match_its_config_raises(tmp_path):
    bad = tmp_path / "model"
    shutil.copytree("models/softmax", bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"]["ffn_dim"] = 640
    (bad / "config.json").write_text(json.dumps(cfg))
    c = get_config(f"smoke,model={bad}")
    with pytest.raises(ValueError, match="config expects|does not match its config"):
        stream_ppl.run(c, str(tmp_path / "out"))
