"""Plots write non-empty PNG files."""

import numpy as np

from lcache.analysis import plots

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(p):
    with open(p, "rb") as f:
        head = f.read(8)
    return head == PNG and len(head) == 8


def test_all_plots(tmp_path):
    rng = np.random.default_rng(0)
    paths = [
        plots.plot_sink_map(rng.random((4, 8)), tmp_path / "a" / "map.png", "sinks"),
        plots.plot_first_token_share({"softmax": rng.random(4), "softpick": rng.random(4)},
                                     tmp_path / "fts.png"),
        plots.plot_value_norms(rng.random((4, 2)), rng.random((4, 2)) + 1, tmp_path / "v.png"),
        plots.plot_massive_activations(rng.random((5, 3)) * 100, rng.random(5),
                                       tmp_path / "m.png"),
        plots.plot_lines([1, 2, 4], {"a": [1.0, 2.0, 3.0], "b": [3.0, 1.0, 0.5]},
                         tmp_path / "l.png", "x", "y", "t", logy=True),
    ]
    for p in paths:
        assert isinstance(p, str) and _is_png(p)
