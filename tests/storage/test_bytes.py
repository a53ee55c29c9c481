"""Bytes-per-token accounting equals the arrays the model actually allocates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lcache.cache import (
    AdaKV,
    Compensated,
    Dense,
    HeadGroups,
    SnapKV,
    SnapVote,
    StreamingLLM,
    quantized,
)
from lcache.cache.bytes import cache_bytes_per_token, markdown_table, table_rows
from lcache.model import ModelConfig, Transformer

GQA = ModelConfig(dim=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=128)
MLA = GQA.replace(mla_kv_lora_rank=32, mla_qk_nope_dim=16, mla_qk_rope_dim=8, mla_v_dim=16)


def _allocated(cfg, policy) -> list[int]:
    caches = Transformer(cfg, nnx.Rngs(0)).init_cache(policy, 1, jnp.bfloat16)
    return [sum(x.nbytes for x in jax.tree.leaves(c)) for c in caches]


@pytest.mark.parametrize("cfg, policy", [
    (GQA, Dense(64)),
    (GQA, quantized(Dense(64), bits=4, group=8, residual=16, keep_sinks=4)),
    (GQA, quantized(SnapKV(budget=32, window=8, gqa="per_query_head", decode_capacity=0),
                    bits=2, group=16, residual=16)),
    (MLA, Dense(64)),
    (MLA, quantized(StreamingLLM(window=60), bits=8, group=8, residual=32, keep_sinks=2)),
], ids=["gqa-bf16", "gqa-int4", "gqa-snapkv-int2", "mla-bf16", "mla-int8"])
def test_matches_allocated_arrays(cfg, policy):
    per_layer = _allocated(cfg, policy)
    assert cache_bytes_per_token(cfg, policy) == pytest.approx(sum(per_layer) / policy.capacity)


def test_head_wise_states_count_every_part():
    """Composite states (head groups, pools, compensation sums) count all their arrays."""
    duo = HeadGroups((((0,), Dense(64)), ((1,), Compensated(StreamingLLM(
        window=12, num_sinks=4, positions="original")))))
    for policy in (duo, AdaKV(16, SnapVote(4), decode_capacity=8)):
        per_layer = _allocated(GQA, policy)
        assert cache_bytes_per_token(GQA, policy) == pytest.approx(
            sum(per_layer) / policy.capacity)
        assert np.isfinite(cache_bytes_per_token(GQA, policy, metadata=False))


def test_per_layer_capacities():
    policies = [quantized(Dense(64), bits=4, group=8, residual=16),
                quantized(Dense(96), bits=2, group=8, residual=16)]
    per_layer = _allocated(GQA, policies)
    assert cache_bytes_per_token(GQA, policies) == pytest.approx(per_layer[0] / 64
                                                                 + per_layer[1] / 96)


def test_dense_kv_bytes_and_table():
    kv = cache_bytes_per_token(GQA, Dense(64), metadata=False)
    assert kv == 2 * GQA.num_layers * GQA.num_kv_heads * GQA.head_size * 2  # K and V in bf16
    rows = table_rows(GQA, capacity=1024, group=16, residual=64)
    assert len(rows) == 3 * 7 and rows[0]["vs_mha_bf16"] == 1.0
    by = {(r["attention"], r["storage"], r["sinks"]): r["bytes_per_token"] for r in rows}
    assert by[("MLA", "int2", 0)] < by[("GQA-2", "int2", 0)] < by[("GQA-2", "int4", 0)]
    assert by[("GQA-2", "int4", 0)] < by[("GQA-2", "bf16", 0)] < by[("MHA", "bf16", 0)]
    assert by[("GQA-2", "int4", 4)] > by[("GQA-2", "int4", 0)]  # sinks cost a little
    assert markdown_table(rows).count("\n") == len(rows) + 1
