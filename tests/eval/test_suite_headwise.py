"""The suite with head-wise specs: real bytes per head, head scores checked against the model
before any work, the headwise config's cells accepted at the reference model shape."""

import numpy as np
import pytest

from configs.ruler import get_config
from lcache.cache import duo, registry
from lcache.data import ruler
from lcache.eval import suite
from lcache.model import ModelConfig

# the reference models' shape: 8 layers, 4 query and 4 KV heads of 64
REF = ModelConfig(vocab_size=259, dim=256, num_layers=8, num_heads=4, num_kv_heads=4,
                  ffn_dim=960, max_seq_len=2048)
L, H, D = 8, 4, 64
SLOT = 2 * D * 2 + 4 + 4  # bf16 key and value, int32 position, f32 score per slot and head
SEEN = 4  # int32 seen [B] of each state
GATES = np.random.default_rng(0).random((L, H))
MAX_NEW = max(ruler.MAX_NEW_TOKENS.values())


def test_headwise_cells_accepted_at_reference_shape():
    c = get_config("headwise")
    cells = suite.grid(c.policies, c.budget_fracs, c.contexts)
    scores = {name: GATES for name in c.gate_files}
    suite.check_cells(cells, REF, MAX_NEW, scores)
    assert {registry.parse(x.spec).name for x in cells} >= {
        "duo", "razor", "headkv", "adakv", "expected_attention", "compaction", "snapkv",
        "streaming_llm", "dense"}


@pytest.mark.parametrize("scores, match", [
    ({}, r"cell duo at 0.1 .*duo reads the model's head scores: give head_scores\['duo'\]"),
    ({"duo": GATES[:, :2]}, r"head_scores\['duo'\] has shape \(8, 2\), the model has 8 layers "
                            r"x 4 KV heads"),
])
def test_head_scores_checked_before_work(scores, match):
    with pytest.raises(ValueError, match=match):
        suite.check_cells(suite.grid(["duo"], (0.1,), (1024,)), REF, MAX_NEW, scores)


def test_gate_file_of_another_model_refused(tmp_path):
    duo.save_gates(tmp_path / "g.json", GATES[:4], source="a 4-layer model")
    with pytest.raises(ValueError, match=r"g.json: gates for 4 layers x 4 KV heads, the model "
                                         r"has 8 x 4"):
        suite.load_head_scores({"duo": str(tmp_path / "g.json")}, REF)
    duo.save_gates(tmp_path / "ok.json", GATES, source="this shape")
    np.testing.assert_array_equal(
        suite.load_head_scores({"duo": str(tmp_path / "ok.json")}, REF)["duo"], GATES)


def _bytes(spec, budget, prompt_len=1024):
    return suite.policy_bytes(registry.build(spec, budget, prompt_len=prompt_len, num_layers=L,
                                             max_new=MAX_NEW, head_scores=GATES), REF)


def test_policy_bytes_count_what_each_head_keeps():
    """Uniform: every head at the capacity; head groups: each head at its group's capacity;
    AdaKV pools: ``H * budget`` entries (plus an int32 owner) and a per-head decode ring."""
    full = 1024 + MAX_NEW
    assert _bytes("streaming_llm(sinks=4)", 102) == L * (H * 102 * SLOT + SEEN)
    assert _bytes("dense", 102) == L * (H * full * SLOT + SEEN)
    streaming = duo.streaming_heads(GATES, 0.5)
    groups = sum(len({*row}) for row in streaming)  # one state per group per layer
    assert _bytes("duo", 102) == (streaming.sum() * 102 + (~streaming).sum() * full) * SLOT \
        + groups * SEEN
    pool, ring = H * 102 * (SLOT + 4), H * MAX_NEW * (SLOT - 4)  # ring: no score
    assert _bytes("adakv(window=32)", 102) == L * (pool + ring + 2 * SEEN)  # seen, start
    # HeadKV spreads the layer total over its heads: snapkv's slots, one state per group
    heads = registry.build("headkv(window=32)", 102, prompt_len=1024, num_layers=L,
                           max_new=MAX_NEW, head_scores=GATES)
    extra = sum(len(layer.groups) - 1 for layer in heads) * SEEN
    assert _bytes("headkv(window=32)", 102) == _bytes("snapkv(window=32)", 102) + extra
