"""experiments.quant end to end on the smoke config (a subprocess: the module defines its absl
flags at import): every storage, KVSink's outlier sinks included, whose score reaches the
quantized policy through ``WithSinkScore``."""

import csv
import os
import subprocess
import sys


def test_smoke_end_to_end(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-m", "experiments.quant", "--config=configs/quant.py:smoke",
                    f"--workdir={tmp_path}"], check=True, env=env, capture_output=True,
                   cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    with open(tmp_path / "quant.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["storage"] for r in rows] == ["bf16", "kivi", "kivi+pfn", "kivi+kvsink"]
    assert all(float(r["ppl"]) > 1 for r in rows)
    assert float(rows[0]["bytes_per_token"]) > float(rows[-1]["bytes_per_token"])
