"""experiments.bench_decode end to end on the smoke config (a subprocess: the module defines its
absl flags at import): one row per impl, policy and context; 'cudnn' is skipped off a GPU."""

import csv
import os
import subprocess
import sys


def test_smoke_end_to_end(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-m", "experiments.bench_decode",
                    "--config=configs/bench_decode.py:smoke",
                    "--config.impls=('xla','cudnn','pallas')", f"--workdir={tmp_path}"],
                   check=True, env=env, capture_output=True,
                   cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    with open(tmp_path / "bench_decode.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["impl"], r["policy"]) for r in rows] == [("xla", "recompute")] + [
        (impl, policy) for impl in ("xla", "pallas") for policy in ("dense", "streaming_llm")
        for _ in (128, 512)]
    assert all(float(r["tokens_per_s"]) > 0 for r in rows)
    assert all(r["speedup_vs_recompute"] for r in rows if r["policy"] == "streaming_llm")
