"""Passkey experiment: the smoke config end to end and its up-front input checks."""

import csv

import pytest

from configs.passkey import get_config
from experiments import passkey


def test_smoke_end_to_end(tmp_path):
    rows = passkey.run(get_config("smoke"), str(tmp_path))
    with open(tmp_path / "passkey.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:5] == ["policy", "budget", "context_len", "depth", "accuracy"]
    assert len(table) == len(rows) == 2 * 2  # 2 policies x 2 depths at one context and budget
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    assert (tmp_path / "passkey_check.csv").exists()
    assert (tmp_path / "passkey.png").stat().st_size > 0


@pytest.mark.parametrize("field, value, match", [
    ("depths", (0.5, 1.5), r"depths must lie in \[0, 1\]"),
    ("depths", (-0.1,), r"depths must lie in \[0, 1\]"),
    ("budgets", (2,), "cannot hold a budget of 2"),
    ("contexts", (64,), "too short for the passkey task"),
])
def test_bad_grid_fails_before_any_work(tmp_path, field, value, match):
    c = get_config("smoke")
    setattr(c, field, value)
    with pytest.raises(ValueError, match=match):
        passkey.run(c, str(tmp_path))
    assert not (tmp_path / "passkey_check.csv").exists()
