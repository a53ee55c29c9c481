"""experiments.ruler end to end on the smoke config (untrained model, CPU)."""

import csv

import pytest

from configs.ruler import get_config
from experiments import ruler


def test_smoke_end_to_end(tmp_path, capsys):
    rows = ruler.run(get_config("smoke"), str(tmp_path))
    with open(tmp_path / "ruler.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and list(table[0]) == [
        "policy", "budget_frac", "task", "context", "depth", "trials", "accuracy", "cache_bytes"]
    assert {r["policy"] for r in table} == {"dense", "streaming_llm(sinks=4)",
                                            "snapkv(window=32,kernel=29,pool=max)"}
    out = capsys.readouterr().out
    assert "| policy | budget | passkey | multikey |" in out and "generate" in out
    for name in ("ruler_heatmap_0.2.png", "ruler_pareto_600.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_resume_runs_only_missing_cells(tmp_path):
    c = get_config("smoke")
    first = ruler.run(c, str(tmp_path))
    with open(tmp_path / "ruler.csv") as f:
        lines = f.readlines()
    kept = [ln for ln in lines if not ln.startswith("dense,")]
    (tmp_path / "ruler.csv").write_text("".join(kept))  # as if the run was cut before dense
    c.resume = True
    again = ruler.run(c, str(tmp_path))
    key = lambda r: (r["policy"], r["budget_frac"], r["task"], r["depth"])  # noqa: E731
    assert sorted(map(key, again)) == sorted(map(key, first))
    assert {r["policy"]: r["accuracy"] for r in again} == {r["policy"]: r["accuracy"]
                                                          for r in first}


def test_questions_after_compression_smoke(tmp_path, capsys):
    c = get_config("smoke,split=true")
    assert c.question_after_compression
    assert not get_config("reuse,split=no").question_after_compression
    rows = ruler.run(c, str(tmp_path))
    assert {r["task"] for r in rows} == {"passkey", "multikey"}
    assert "questions after compression" in capsys.readouterr().out


def test_bad_split_value():
    with pytest.raises(ValueError, match="split='maybe' is not a bool"):
        get_config("reuse,split=maybe")
