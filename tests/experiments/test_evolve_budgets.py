"""EvolKV-style budget search: the smoke config end to end and the budget allocation."""

import csv

import numpy as np
import pytest

from configs.evolve_budgets import get_config
from experiments import evolve_budgets


def test_smoke_end_to_end(tmp_path):
    rows = evolve_budgets.run(get_config("smoke"), str(tmp_path))
    with open(tmp_path / "evolve.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["method", "split", "budgets", "ppl", "answer_nll", "accuracy",
                              "fitness"]
    assert {(r["method"], r["split"]) for r in rows} == {
        (m, s) for m in ("uniform", "evolved") for s in ("search", "test")}
    for r in rows:
        assert sum(map(int, r["budgets"].split("-"))) == 32 * 2
    fit = {(r["method"], r["split"]): r["fitness"] for r in rows}
    assert fit["evolved", "search"] <= fit["uniform", "search"]  # the search keeps its start
    assert (tmp_path / "evolve_history.csv").exists()
    assert (tmp_path / "evolve.png").stat().st_size > 0


@pytest.mark.parametrize("seed", range(5))
def test_allocate_sums_exactly(seed):
    logits = np.random.default_rng(seed).normal(size=6) * 3
    budgets = evolve_budgets.allocate(logits, 387, 16, 8)
    assert sum(budgets) == 387 and min(budgets) >= 16
    assert evolve_budgets.allocate(np.zeros(6), 384, 16, 8) == (64,) * 6


def test_allocate_rejects_a_total_below_the_minimum():
    with pytest.raises(ValueError, match="cannot give 6 layers"):
        evolve_budgets.allocate(np.zeros(6), 90, 16, 8)
