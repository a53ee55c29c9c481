"""experiments.ruler on the headwise config, smoke-sized (untrained ``random`` model, CPU): the
proxy gates computed at run start, every head-wise spec next to the uniform ones, and a gate
file of another model refused before any cell runs."""

import numpy as np
import pytest

from configs.ruler import get_config
from experiments import ruler
from lcache.cache import duo


def smoke_headwise():
    c = get_config("headwise,model=random,trials=1")
    c.contexts, c.budget_fracs, c.depths = (600,), (0.2,), (0.0,)
    c.tasks, c.batch, c.threads = ("passkey", "multiquery"), 2, 2
    c.compute_dtype, c.fast_compile = "float32", True
    c.head_gates.texts, c.head_gates.tokens = 2, 64
    return c


def test_smoke_end_to_end(tmp_path):
    c = smoke_headwise()
    rows = ruler.run(c, str(tmp_path))
    assert {r["policy"] for r in rows} == set(c.policies)
    assert len(rows) == len(c.policies) * len(c.tasks)
    for name in ("duo_proxy", "razor"):  # the proxies this run computed for its model
        assert duo.load_gates(tmp_path / "gates" / f"{name}.json", num_layers=2,
                              num_kv_heads=2).shape == (2, 2)
    nbytes = {r["policy"]: r["cache_bytes"] for r in rows}
    assert nbytes["streaming_llm(sinks=4)"] < nbytes["duo"] < nbytes["dense"]
    assert (tmp_path / "ruler_pareto_600.png").stat().st_size > 0


def test_gates_of_another_model_refused(tmp_path):
    duo.save_gates(tmp_path / "duo_proxy.json", np.ones((8, 4)), source="the reference shape")
    c = smoke_headwise()
    c.gates = str(tmp_path)
    with pytest.raises(ValueError, match=r"duo_proxy.json: gates for 8 layers x 4 KV heads, "
                                         r"the model has 2 x 2"):
        ruler.run(c, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "ruler.csv").exists()
