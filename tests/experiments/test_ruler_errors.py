"""experiments.ruler_errors end to end on the smoke config (untrained model, CPU)."""

import csv

from configs.ruler_errors import get_config
from experiments import ruler_errors


def test_smoke_end_to_end(tmp_path, capsys):
    rows = ruler_errors.run(get_config("smoke"), str(tmp_path))
    with open(tmp_path / "ruler_errors.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["policy", "budget_frac", "task", "context", "trials", "correct",
                              "distractor", "other"]
    assert [(r["policy"], r["budget_frac"]) for r in rows] == [
        ("dense", 1.0), ("snapkv(window=32,kernel=29,pool=max)", 0.2)]
    for r in rows:
        assert r["trials"] == 4 and abs(r["correct"] + r["distractor"] + r["other"] - 1) < 1e-9
    assert "| policy |" in capsys.readouterr().out
