"""``experiments/speculative.py``: the smoke config end to end (cut to two policies, batch 1),
and clear errors before any work."""

import csv

import pytest

from configs.speculative import get_config
from experiments import speculative


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_smoke_end_to_end(tmp_path):
    c = get_config("smoke,new=8,repeats=1")
    c.policies, c.batches = ("dense", "streaming_llm(sinks=2)"), (1,)
    speculative.run(c, str(tmp_path))
    table = _read(tmp_path / "speculative.csv")
    assert list(table[0]) == ["model", "draft_len", "policy", "batch", "acceptance_rate",
                              "tokens_per_s", "speedup"]
    assert [(r["policy"], r["draft_len"]) for r in table] == [
        (p, n) for p in c.policies for n in ("0", "1", "2")]
    assert all(float(r["tokens_per_s"]) > 0 for r in table)
    assert all(float(r["speedup"]) == 1.0 for r in table if r["draft_len"] == "0")
    assert all(0 <= float(r["acceptance_rate"]) <= 1 for r in table if r["draft_len"] != "0")
    per_position = _read(tmp_path / "speculative_positions.csv")
    assert [int(r["position"]) for r in per_position] == [1, 1, 2] * 2


@pytest.mark.parametrize("arg,match", [("models=random=random", "trained without them"),
                                       ("models=nonsense", "name=dir")])
def test_bad_input_raises_before_any_work(tmp_path, arg, match):
    with pytest.raises(ValueError, match=match):
        speculative.run(get_config(f"smoke,{arg}"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="unknown speculative variant"):
        get_config("bogus")
