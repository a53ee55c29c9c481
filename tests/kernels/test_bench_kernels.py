"""experiments/bench_kernels.py without running kernels: configs, task order, synthetic data."""

import jax.numpy as jnp
import numpy as np
import pytest

from configs.bench_kernels import get_config
from experiments import bench_kernels as bk
from pallas_kernels.benchtools import fake


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
    first_sweep = next(i for i, n in enumerate(names) if "splits" in n)
    assert all(not n.startswith(("quant8", "quant2", "mla h16")) for n in names[:first_sweep])
    assert len(names) == len(set(names))


def test_fake_data():
    a = fake(3, (4, 5), jnp.bfloat16)
    assert a.shape == (4, 5) and a.dtype == jnp.bfloat16
    np.testing.assert_array_equal(a, fake(3, (4, 5), jnp.bfloat16))
    assert float(jnp.abs(a.astype(jnp.float32)).max()) <= 1.0
    b = fake(3, (1000,), jnp.uint8)
    assert b.dtype == jnp.uint8 and len(np.unique(np.asarray(b))) > 200
