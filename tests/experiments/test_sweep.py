"""Quality-vs-bytes sweep: the smoke config end to end, and the Pareto front."""

import csv

import numpy as np

from configs.sweep import get_config
from experiments import sweep
from lcache.cache import registry
from lcache.eval import load_reference


def test_smoke_end_to_end(tmp_path):
    rows = sweep.run(get_config("smoke"), str(tmp_path))
    with open(tmp_path / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["policy", "budget", "cache_bytes", "ppl", "answer_nll", "accuracy"]
    by_policy = {r["policy"]: r for r in rows}
    snapkv = "snapkv(window=8,kernel=7,pool=max)"
    assert by_policy[snapkv]["cache_bytes"] < by_policy["dense@int4+sinks4"]["cache_bytes"]
    assert (tmp_path / "sweep.png").stat().st_size > 0


def test_policy_bytes_count_every_layer():
    cfg = get_config("smoke")
    model, _ = load_reference(cfg.model_dir)
    policy = registry.build("snapkv(window=8,kernel=7,pool=max)", 32, prompt_len=64)
    one = sweep.policy_bytes(policy, model.cfg)
    per_layer = sweep.policy_bytes((policy,) * model.cfg.num_layers, model.cfg)
    assert one == per_layer > 0


def test_pareto_front():
    x = np.array([1.0, 2.0, 3.0, 4.0, 2.0])
    y = np.array([5.0, 3.0, 4.0, 1.0, 6.0])
    assert sweep.pareto(x, y).tolist() == [0, 1, 3]
