"""experiments.head_gates smoke: proxy gates, razor heads and a few optimisation steps on the
committed softmax model, written in save_gates' format and loadable against the model."""

import numpy as np

from configs.head_gates import get_config
from experiments.head_gates import run
from lcache.cache import duo
from lcache.eval import load_reference


def test_smoke(tmp_path):
    c = get_config("smoke,steps=2,t=48")
    out = run(c, str(tmp_path))
    model, _ = load_reference(c.model)
    shape = dict(num_layers=model.cfg.num_layers, num_kv_heads=model.cfg.num_kv_heads)
    for name in ("duo_proxy", "razor", "duo_gates"):
        gates = duo.load_gates(tmp_path / f"{name}.json", **shape)
        np.testing.assert_allclose(gates, out[name])
        assert ((gates >= 0) & (gates <= 1)).all()
    assert set(np.unique(out["razor"])) <= {0.0, 1.0} and out["razor"].any()
