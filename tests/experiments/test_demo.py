"""The headline demo (the README's main command), smoke config, on the committed models."""

import csv

from configs.demo import get_config
from experiments import demo


def test_smoke_end_to_end(tmp_path, capsys):
    demo.run(get_config("smoke"), str(tmp_path))
    with open(tmp_path / "demo.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:6] == ["model", "policy", "num_sinks", "cache_size", "tokens", "ppl"]
    assert {r["model"] for r in table} == {"softmax", "sinktoken"}
    assert {r["policy"] for r in table} == {"window", "streaming_llm", "dense", "recompute"}
    out = capsys.readouterr().out
    header = "| model | cache | window only | window only* | 1 sink + window | recompute* | dense |"
    assert header in out
    assert "sink rate, first token" in out
    for name in ("demo_curve.csv", "demo_sink_rate.csv", "sample.txt", "demo_nll.npz",
                 "demo_softmax_cache16.png", "demo_sinktoken_cache16.png"):
        assert (tmp_path / name).stat().st_size > 0
