"""Head-wise kvpress fixtures: tests/fixtures/kvpress/<family>/headwise.npz (+ headwise.json).

On the same random tiny models and prompt as ``make_kvpress_fixtures.py`` (imported from it,
so ``tensors.npz`` there holds the post-RoPE q/k/v these presses saw), run kvpress 0.5.5's
head-wise presses on the prefill and record, per (layer, KV head), which of the T tokens each
keeps, as a bool mask ``[L, Hkv, T]``:

* ``adakv_snapkv_r0.5`` / ``_r0.75``: ``AdaKVPress(SnapKVPress(ratio, window 8, kernel 5),
  alpha_safeguard=0.2)``;
* ``expected_r0.5``: ``ExpectedAttentionPress(0.5, n_future_positions=512, n_sink=4)`` (a
  ScorerPress: per-head top-k, the cache is physically compressed);
* ``adakv_expected_r0.5``: ``AdaKVPress(ExpectedAttentionPress(0.5, epsilon=1e-2))`` (kvpress's
  leaderboard "expected_attention");
* ``duo_r0.5``: ``DuoAttentionPress(head_compression_ratio=0.5)`` with given head scores
  (``duo_head_scores`` [L, Hkv], seeded uniform; sink 4, recent 16), not downloaded;
* ``kvzip_r0.5``: ``KVzipPress(0.5)`` (one reconstruction chunk, sinks 4); the fixture models
  have no tokenizer, so a stand-in one encodes the repeat prompt and suffix as fixed ids
  (``kvzip_repeat_ids``, read by our test).

Masked presses (AdaKV, DuoAttention) run with sdpa attention (kvpress refuses eager) and their
kept set is the complement of ``module.masked_key_indices``; the scorer press's kept set is
recovered from its compressed cache as in the main script.

    HF_HUB_OFFLINE=1 tools/.venv-torch/bin/python tools/make_kvpress_head_fixtures.py
"""

# ruff: noqa: E741  (`l` = layer index as in the main script)

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import transformers
from kvpress import (
    AdaKVPress,
    DuoAttentionPress,
    ExpectedAttentionPress,
    KVzipPress,
    SnapKVPress,
)
from kvpress.presses import kvzip_press
from kvpress.utils import compute_n_kept
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_kvpress_fixtures import (  # noqa: E402
    KERNEL,
    OUT,
    SEEDS,
    WINDOW,
    T,
    build_model,
    capture_prefill,
    recover_kept,
    save_npz,
)

DUO_SINK, DUO_RECENT = 4, 16
KVZIP_PROMPT, KVZIP_SUFFIX = [11, 12, 13, 14, 15], [16]  # stand-in ids of kvpress's texts


class StandInTokenizer:
    """What KVzipPress asks of a tokenizer: no chat template, fixed ids for its two texts."""

    chat_template = None

    @staticmethod
    def encode(text, return_tensors="pt", add_special_tokens=False):
        ids = {"": [], "\n": KVZIP_SUFFIX}.get(text, KVZIP_PROMPT)
        return torch.tensor([ids], dtype=torch.long).reshape(1, len(ids))


def run_kvzip(model, ids, num_layers, num_kv_heads):
    kvzip_press.AutoTokenizer.from_pretrained = staticmethod(lambda name: StandInTokenizer())
    return run_masked(model, ids, KVzipPress(0.5, n_sink=4), num_layers, num_kv_heads)


def masked_presses(head_scores):
    def duo():
        DuoAttentionPress.load_attention_pattern = staticmethod(
            lambda model: (DUO_SINK, DUO_RECENT, head_scores))
        return DuoAttentionPress(head_compression_ratio=0.5)

    return {
        "adakv_snapkv_r0.5": lambda: AdaKVPress(SnapKVPress(0.5, WINDOW, KERNEL), 0.2),
        "adakv_snapkv_r0.75": lambda: AdaKVPress(SnapKVPress(0.75, WINDOW, KERNEL), 0.2),
        "adakv_expected_r0.5": lambda: AdaKVPress(ExpectedAttentionPress(0.5, epsilon=1e-2), 0.2),
        "duo_r0.5": duo,
    }


def run_masked(model, ids, press, num_layers, num_kv_heads):
    model.config._attn_implementation = "sdpa"
    try:
        with torch.no_grad(), press(model):
            model.model(input_ids=ids, past_key_values=DynamicCache())
    finally:
        model.config._attn_implementation = "eager"
    kept = np.ones((num_layers, num_kv_heads, T), bool)
    for l, layer in enumerate(model.model.layers):
        b, h, s = (x.numpy() for x in layer.self_attn.masked_key_indices)
        assert (b == 0).all()
        kept[l, h, s] = False
    return kept


def make_family(family: str) -> dict:
    model = build_model(family)
    cfg = model.config
    L, hkv = cfg.num_hidden_layers, cfg.num_key_value_heads
    gen = torch.Generator().manual_seed(SEEDS[family] + 1)
    ids = torch.randperm(cfg.vocab_size, generator=gen)[:T].unsqueeze(0)
    q, k, v = capture_prefill(model, ids)
    saved = np.load(OUT / family / "tensors.npz")
    assert np.allclose(saved["k"], k.numpy(), atol=1e-5), "tensors.npz is from another model"
    head_scores = np.random.default_rng(SEEDS[family]).random((L, hkv))
    out = {"duo_head_scores": head_scores}
    for key, factory in masked_presses(head_scores).items():
        out[key] = run_masked(model, ids, factory(), L, hkv)
        print(f"  {family} {key}: kept per layer {out[key].sum((1, 2)).tolist()}")
    out["kvzip_r0.5"] = run_kvzip(model, ids, L, hkv)
    out["kvzip_repeat_ids"] = np.asarray(KVZIP_PROMPT + KVZIP_SUFFIX, np.int32)
    print(f"  {family} kvzip_r0.5: kept per layer {out['kvzip_r0.5'].sum((1, 2)).tolist()}")
    cache = DynamicCache()
    with torch.no_grad(), ExpectedAttentionPress(0.5, n_future_positions=512, n_sink=4)(model):
        model.model(input_ids=ids, past_key_values=cache)
    kept = np.zeros((L, hkv, T), bool)
    for l, rows in enumerate(recover_kept(v, cache, k)):
        for g, idx in enumerate(rows):
            kept[l, g, idx] = True
    out["expected_r0.5"] = kept
    n = compute_n_kept(T, 0.5)
    assert (out["expected_r0.5"].sum(-1) == n).all()
    assert (out["adakv_snapkv_r0.5"].sum((1, 2)) == hkv * n).all()
    return out


def main():
    for family in SEEDS:
        arrays = make_family(family)
        save_npz(OUT / family / "headwise.npz", arrays, compress=True)
        meta = {
            "presses": {
                "adakv_snapkv_r<ratio>": f"AdaKVPress(SnapKVPress(ratio, window_size={WINDOW}, "
                                         f"kernel_size={KERNEL}), alpha_safeguard=0.2)",
                "expected_r0.5": "ExpectedAttentionPress(0.5, n_future_positions=512, n_sink=4, "
                                 "epsilon=0.0)",
                "adakv_expected_r0.5": "AdaKVPress(ExpectedAttentionPress(0.5, epsilon=1e-2), "
                                       "alpha_safeguard=0.2)",
                "duo_r0.5": f"DuoAttentionPress(head_compression_ratio=0.5), sink_size={DUO_SINK},"
                            f" recent_size={DUO_RECENT}, head scores = duo_head_scores",
                "kvzip_r0.5": "KVzipPress(0.5, n_sink=4), repeat input = kvzip_repeat_ids + the "
                              "context (stand-in tokenizer ids for kvpress's prompt and suffix)",
            },
            "kept": "bool [L, Hkv, T]: token kept by (layer, kv head)",
            "attention": "sdpa for the masked presses (AdaKV, DuoAttention), eager otherwise",
            "versions": {"kvpress": version("kvpress"), "transformers": transformers.__version__,
                         "torch": torch.__version__},
        }
        (OUT / family / "headwise.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
