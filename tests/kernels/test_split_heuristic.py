"""The split-K cost model (``pallas_kernels.splits``) and the bf16 decode plan (pure Python:
no kernels run)."""

import pytest

from pallas_kernels import splits as sp
from pallas_kernels.decode import gpu

SMS = 132


@pytest.mark.parametrize("batch", [1, 8, 32])
@pytest.mark.parametrize("context", [4096, 32768, 131072])
def test_plans_fill_the_gpu(batch, context):
    """32q/8kv heads, D=128 bf16 (the bench shapes): every split has work, and there are
    enough programs for about two per SM (H200 data: one per SM streams at ~70%)."""
    heads = batch * 8
    bk, splits, nb = gpu.plan(heads, context, 128, 128)
    nblocks = -(-context // bk)
    assert (splits - 1) * nb < nblocks <= splits * nb
    assert 1 <= splits <= 64
    assert heads * splits >= min(256, heads * nblocks // 4)


def test_more_splits_where_one_program_per_sm_lost():
    """B=8 at >= 32K ran 2 splits (128 programs, 1 per SM) and lost to cuDNN."""
    for context in (32768, 131072):
        assert gpu.plan(64, context, 128, 128)[1] >= 4


def test_cost_model_shape():
    cost = lambda s, **kw: sp.split_cost(64, 256, s, SMS, **kw)  # noqa: E731
    assert cost(4) < cost(2) < cost(1)  # 256 programs (2/SM) beat 128 (1/SM)
    assert cost(64) > cost(4)  # partial outputs and per-program overhead grow with splits
    # B=32 at 32K, 3 programs resident per SM: 2 splits leave a 1-per-SM last round (H100:
    # 1674 us against 1510 us for 1 split), so 1 split; at 128K 3 splits make 2 full rounds.
    assert sp.auto_num_splits(256, 256, SMS, occ=3) == 1
    assert sp.auto_num_splits(256, 1024, SMS, occ=3) == 3
    assert sp.occupancy(64 << 10) == 3 and sp.occupancy(16 << 10) == 4


def test_long_programs_get_deeper_tiles():
    """B=1 at 128K (32 splits of 4096 slots) streams with 8 warps, 64-slot blocks, 3 stages."""
    assert gpu.long_programs(8, 32, 4096, SMS)
    assert not gpu.long_programs(8, 32, 1024, SMS)  # 32K
    assert not gpu.long_programs(256, 1, 32768, SMS)  # B=32
