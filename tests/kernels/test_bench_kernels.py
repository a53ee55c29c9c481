"""experiments/bench_kernels.py without running kernels: configs, task order, synthetic data."""

import jax.numpy as jnp
import numpy as np
import pytest

from configs.bench_kernels import get_config
from experiments import bench_kernels as bk
from pallas_kernels.benchtools import fake, peak_gbps


def test_configs():
    smoke, default = get_config("smoke"), get_config("default")
    assert smoke.interpret and not default.interpret
    assert default.batches == (1, 8, 32) and default.contexts == (4096, 32768, 131072)
    assert (default.hq, default.hkv, default.d) == (32, 8, 128)
    assert get_config("default,ops=decode+mla").ops == ("decode", "mla")
    with pytest.raises(ValueError, match="unknown ops"):
        get_config("default,ops=decode+nope")
    with pytest.raises(ValueError, match="variant"):
        get_config("large")


def test_tasks_put_target_rows_first():
    c = get_config("default")
    bench = bk.Bench.__new__(bk.Bench)  # no device work: only the task generator
    bench.c, bench.rows, bench.dtype = c, [], jnp.dtype(c.dtype)
    names = [name for name, _ in bench.tasks()]
    assert names[:9] == [f"decode B={b} C={x}" for b in c.batches for x in c.contexts]
    first_int8 = names.index("quant8 B=1 C=4096")
    assert all(n.startswith(("decode B", "quant4", "mla B", "prefill B"))
               for n in names[:first_int8])
    first_sweep = next(i for i, n in enumerate(names) if "decode sweep" in n)
    assert all(not n.startswith(("mla h16", "decode xla")) for n in names[:first_sweep])
    assert len(names) == len(set(names))


def test_tags_and_peaks():
    assert bk.tag({}) == "pallas"
    assert bk.tag(dict(dequant="jnp", block_k=32, num_stages=3)) == "pallas[jnp,bk=32,s=3]"
    assert peak_gbps("NVIDIA H100 80GB HBM3") == 3350.0
    assert peak_gbps("NVIDIA H200") == 4800.0 and peak_gbps("cpu") is None


def test_checks_pass_on_cpu():
    """``--check``'s small cases (interpreted kernels) against their references."""
    from pallas_kernels import checks

    assert checks.run_checks(checks.small_cases(get_config("smoke")))


def test_fake_data():
    a = fake(3, (4, 5), jnp.bfloat16)
    assert a.shape == (4, 5) and a.dtype == jnp.bfloat16
    np.testing.assert_array_equal(a, fake(3, (4, 5), jnp.bfloat16))
    assert float(jnp.abs(a.astype(jnp.float32)).max()) <= 1.0
    b = fake(3, (1000,), jnp.uint8)
    assert b.dtype == jnp.uint8 and len(np.unique(np.asarray(b))) > 200
