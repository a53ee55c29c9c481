"""The headline demo (the README's main command), smoke config, on the committed models."""

import csv

import pytest

from configs.demo import get_config
from experiments import demo


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_smoke_end_to_end(tmp_path, capsys):
    demo.run(get_config("smoke"), str(tmp_path))
    table = read_csv(tmp_path / "demo.csv")
    assert list(table[0]) == ["model", "policy", "num_sinks", "cache_size", "tokens", "ppl",
                              "common_ppl", "ppl_in_context", "ppl_past_context"]
    assert {r["model"] for r in table} == {"softmax", "sinktoken"}
    assert {r["policy"] for r in table} == {"window", "streaming_llm(sinks=1)", "dense",
                                            "recompute"}
    retrieval = read_csv(tmp_path / "demo_retrieval.csv")
    assert [r["policy"] for r in retrieval] == [
        "dense", "dense", "streaming_llm(sinks=4)", "streaming_llm(sinks=4)",
        "snapkv(window=32,kernel=29,pool=max)", "snapkv(window=32,kernel=29,pool=max)"]
    assert {r["depth"] for r in retrieval} == {"0.0", "1.0"}
    captured = capsys.readouterr()
    assert ("| model | cache | window | streaming_llm(sinks=1) | streaming_llm(sinks=1)* | "
            "recompute* | dense, in context | dense, past context | sink rate |") in captured.out
    assert ("| model | task | context | dense | streaming_llm(sinks=4) | "
            "snapkv(window=32,kernel=29,pool=max) |") in captured.out
    assert "] 14/14 runs" in captured.err  # one progress bar over every run and cell
    for name in ("demo_curve.csv", "demo_sink_rate.csv", "sample.txt", "demo_nll.npz",
                 "demo_softmax_cache16.png", "demo_sinktoken_cache16.png"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.parametrize("override, match", [
    ({"cache_sizes": (4,), "sinks": (4,)}, "streaming_llm.* cannot hold"),
    ({"sample_model": "nope"}, "model 'nope' is not one of the demo's models"),
    ({"retrieval.budget_frac": 0.05}, "cell snapkv.* at 0.05 of context 320"),
    ({"retrieval.context": 200}, "too short for the passkey task"),
])
def test_bad_config_raises_before_any_work(tmp_path, override, match):
    c = get_config("smoke")
    c.update_from_flattened_dict(override)
    with pytest.raises(ValueError, match=match):
        demo.run(c, str(tmp_path))
    assert not list(tmp_path.iterdir())
