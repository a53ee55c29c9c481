"""Generate HF-transformers logits-parity fixtures: tests/fixtures/hf/<family>/ for llama, qwen2, mistral.

What
----
A random tiny fp32 model per family (vocab 512, hidden 64, 2 layers, 4 q-heads, 2 kv-heads,
head_dim 16, intermediate 128, max_position_embeddings 512, eager attention), saved with
`model.save_pretrained(dir, safe_serialization=True)` (config.json + model.safetensors), a tiny
WordLevel `tokenizer.json` (vocab 512), and `reference.npz` with reference outputs:

  input_ids [2,40] int32, logits [2,40,512] f32       full forward, no padding / attention mask
  greedy_prompt [1,12] int32, greedy_tokens [1,20]    model.generate(do_sample=False, max_new_tokens=20),
                                                      EOS stopping disabled; new tokens only
  rope_inv_freq [8] f32                               the model's RoPE inverse frequencies
  (mistral only) long_ids [1,48], long_logits [1,48,512]   48 > sliding_window = 16

Family specifics: llama = Llama-3.1 "llama3" RoPE scaling (factor 8, low 1, high 4,
original_max_position_embeddings 64; with rope_theta 1e4 and head_dim 16 this puts 1 frequency in
the high band, 2 in the smoothed band, 5 in the low band); qwen2 = q/k/v bias, tied embeddings,
rope_theta 1e6; mistral = sliding_window 16 on every layer.

Checks done here (the script fails otherwise): generate() == a greedy loop of full uncached
forwards; Mistral's sliding window semantics measured from the eager attention weights (the
answer is written to tests/fixtures/hf/README.md); tokenizer round trip.

How to run
----------
    bash tools/setup_torch_venv.sh          # once
    HF_HUB_OFFLINE=1 tools/.venv-torch/bin/python tools/make_hf_fixtures.py

Versions for the committed fixtures: transformers 5.2.0, torch 2.13.0+cpu, tokenizers 0.22.2
(written to tests/fixtures/hf/versions.json).
"""

# ruff: noqa: E501, E741  (long formula strings are data; `l` = layer index as in the formulas)

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "hf"

VOCAB = 512
SEED = 0
INIT_RANGE = 0.1  # HF default 0.02 gives near-uniform attention/logits; 0.1 makes the check sharper
SLIDING_WINDOW = 16

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    initializer_range=INIT_RANGE,
    bos_token_id=1,
    eos_token_id=2,
    attn_implementation="eager",
)

FAMILIES = {
    "llama": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            attention_bias=False,
        ),
    ),
    # Qwen2Attention always has q/k/v bias (no config flag); tied input/output embeddings.
    "qwen2": (
        Qwen2Config,
        Qwen2ForCausalLM,
        dict(
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
        ),
    ),
    "mistral": (
        MistralConfig,
        MistralForCausalLM,
        dict(
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            sliding_window=SLIDING_WINDOW,
        ),
    ),
}

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]


def save_npz(path: Path, arrays: dict, compress: bool = False) -> None:
    """np.savez equivalent with fixed zip timestamps, so re-running the script gives identical bytes."""
    import io
    import zipfile

    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=mode) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = mode
            zf.writestr(info, buf.getvalue())


def build_tokenizer() -> Tokenizer:
    """WordLevel tokenizer, vocab 512: 0 <unk>, 1 <s>, 2 </s>, 3 <pad>, then 'w004' .. 'w511' (id = number)."""
    vocab = {t: i for i, t in enumerate(SPECIAL)}
    for i in range(len(SPECIAL), VOCAB):
        vocab[f"w{i:03d}"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIAL)
    assert tok.get_vocab_size() == VOCAB
    enc = tok.encode("<s> w004 w511 nope w100")
    assert enc.ids == [1, 4, 511, 0, 100], enc.ids
    return tok


def randomize_extras(model, std: float = 0.1) -> None:
    """HF init leaves RMSNorm weights at 1 and biases at 0; perturb them so a loader must read them."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + std * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(std * torch.randn_like(p))


def greedy_by_full_forward(model, prompt: torch.Tensor, n: int) -> tuple[torch.Tensor, float]:
    """Greedy decoding with an uncached full forward per step; also the min top1-top2 logit gap."""
    ids = prompt
    min_gap = float("inf")
    for _ in range(n):
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits[:, -1]
        top2 = logits.topk(2, dim=-1).values
        min_gap = min(min_gap, float((top2[:, 0] - top2[:, 1]).min()))
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids[:, prompt.shape[1] :], min_gap


def check_sliding_window(model, ids: torch.Tensor, W: int) -> dict:
    """Measure which keys query t attends to, from the eager attention weights of every layer/head."""
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True, use_cache=False)
    T = ids.shape[1]
    for layer, att in enumerate(out.attentions):  # [B, Hq, T, T]
        nz = (att[0] > 0).numpy()
        for t in range(T):
            cols = np.nonzero(nz.all(axis=0)[t])[0]  # keys with nonzero weight for every head
            anycols = np.nonzero(nz.any(axis=0)[t])[0]
            assert np.array_equal(cols, anycols), (layer, t)
            lo = max(0, t - W + 1)
            assert np.array_equal(cols, np.arange(lo, t + 1)), (layer, t, cols)
    return {
        "rule": f"query t attends to keys j with t - W < j <= t, i.e. (t-W, t]: exactly min(t+1, W) keys "
        f"including itself (W = sliding_window = {W})",
        "mask_predicate": "transformers.masking_utils.sliding_window_overlay: kv_idx > q_idx - sliding_window "
        "(on top of causal kv_idx <= q_idx)",
        "verified": f"eager attention weights of all {len(out.attentions)} layers and all heads on a length-{T} "
        f"input: nonzero exactly on j in [max(0, t-{W}+1), t] for every t; e.g. t={W} does not see key 0",
        "layers": "every layer of MistralForCausalLM uses the window (config.sliding_window applies to all layers)",
    }


def make_family(family: str, tok: Tokenizer) -> dict:
    cfg_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(SEED)
    model = model_cls(cfg_cls(**COMMON, **extra)).eval().float()
    randomize_extras(model)
    assert model.config._attn_implementation == "eager"

    gen = torch.Generator().manual_seed(SEED + 100)
    input_ids = torch.randint(0, VOCAB, (2, 40), generator=gen)
    greedy_prompt = torch.randint(0, VOCAB, (1, 12), generator=gen)
    with torch.no_grad():
        logits = model(input_ids=input_ids, use_cache=False).logits
        out = model.generate(
            greedy_prompt,
            attention_mask=torch.ones_like(greedy_prompt),
            do_sample=False,
            max_new_tokens=20,
            min_new_tokens=20,
            eos_token_id=None,
            pad_token_id=3,
        )
    greedy_tokens = out[:, greedy_prompt.shape[1] :]
    assert greedy_tokens.shape == (1, 20), greedy_tokens.shape
    ref_tokens, min_gap = greedy_by_full_forward(model, greedy_prompt, 20)
    assert torch.equal(ref_tokens, greedy_tokens), (ref_tokens, greedy_tokens)

    inv_freq = model.model.rotary_emb.inv_freq.float()
    ref = {
        "input_ids": input_ids.numpy().astype(np.int32),
        "logits": logits.numpy().astype(np.float32),
        "greedy_prompt": greedy_prompt.numpy().astype(np.int32),
        "greedy_tokens": greedy_tokens.numpy().astype(np.int32),
        "rope_inv_freq": inv_freq.numpy().astype(np.float32),
    }
    info = {
        "greedy_min_top2_logit_gap": min_gap,
        "greedy_tokens_contain_eos": bool((greedy_tokens == 2).any()),
        "logits_abs_max": float(logits.abs().max()),
    }
    if family == "mistral":
        long_ids = torch.randint(0, VOCAB, (1, 48), generator=gen)
        with torch.no_grad():
            long_logits = model(input_ids=long_ids, use_cache=False).logits
        ref["long_ids"] = long_ids.numpy().astype(np.int32)
        ref["long_logits"] = long_logits.numpy().astype(np.float32)
        info["sliding_window"] = check_sliding_window(model, long_ids, SLIDING_WINDOW)
        # The window must matter: the same model without a window gives different logits past t=W-1.
        full = model_cls(cfg_cls(**COMMON, **{**extra, "sliding_window": None})).eval().float()
        full.load_state_dict(model.state_dict())
        with torch.no_grad():
            ll_full = full(input_ids=long_ids, use_cache=False).logits
        assert torch.allclose(
            ll_full[:, :SLIDING_WINDOW], long_logits[:, :SLIDING_WINDOW], atol=1e-5
        )
        diff = float((ll_full[:, SLIDING_WINDOW:] - long_logits[:, SLIDING_WINDOW:]).abs().max())
        assert diff > 1e-2, diff
        info["long_logits_vs_no_window_maxdiff_after_W"] = diff
    if family == "llama":
        # the three llama3 bands are all exercised
        base = 1.0 / (10000.0 ** (torch.arange(0, 16, 2).float() / 16))
        ratio = (base / inv_freq).numpy()
        info["llama3_inv_freq_divisor"] = [float(r) for r in ratio]
        assert (
            np.isclose(ratio[0], 1.0)
            and np.isclose(ratio[-1], 8.0)
            and ((ratio > 1.001) & (ratio < 7.999)).any()
        )

    d = OUT / family
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    model.save_pretrained(d, safe_serialization=True)
    for f in d.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            f.unlink()
    tok.save(str(d / "tokenizer.json"))
    save_npz(d / "reference.npz", ref)
    print(f"  {family}: {info}")
    return info


def main():
    torch.set_num_threads(1)
    tok = build_tokenizer()
    versions = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "attn_implementation": "eager",
        "dtype": "float32",
    }
    infos = {}
    for family in FAMILIES:
        infos[family] = make_family(family, tok)
    (OUT / "versions.json").write_text(
        json.dumps({"versions": versions, "checks": infos}, indent=2) + "\n"
    )
    write_readme(versions, infos)
    print("wrote", OUT)


def write_readme(versions: dict, infos: dict) -> None:
    sw = infos["mistral"]["sliding_window"]
    div = ", ".join(f"{x:.4f}" for x in infos["llama"]["llama3_inv_freq_divisor"])
    gaps = ", ".join(f"{f} {i['greedy_min_top2_logit_gap']:.4f}" for f, i in infos.items())
    text = f"""# HF transformers logits-parity fixtures

Generated by `tools/make_hf_fixtures.py` (do not edit by hand; re-run the script). Reference:
transformers {versions["transformers"]}, torch {versions["torch"]}, tokenizers {versions["tokenizers"]};
CPU, float32, `attn_implementation="eager"`, no attention mask / padding. Load with numpy + safetensors
(+ `tokenizers` for tokenizer.json) only. `versions.json` has the versions and the script's check values.

## Layout (`llama/`, `qwen2/`, `mistral/`)

| file | content |
|---|---|
| `config.json`, `model.safetensors` | `model.save_pretrained(dir, safe_serialization=True)`, fp32, HF key names |
| `tokenizer.json` | `tokenizers` WordLevel, vocab 512: 0 `<unk>`, 1 `<s>`, 2 `</s>`, 3 `<pad>`, id i>=4 is the word `w%03d` (e.g. `w004`, `w511`); WhitespaceSplit pre-tokenizer; no post-processor (no BOS added). Same file in every family |
| `reference.npz` | `input_ids` int32 [2,40]; `logits` f32 [2,40,512] (full forward, eager); `greedy_prompt` int32 [1,12]; `greedy_tokens` int32 [1,20] (new tokens only); `rope_inv_freq` f32 [8]; mistral only: `long_ids` int32 [1,48], `long_logits` f32 [1,48,512] |

All: vocab 512, hidden 64, 2 layers, 4 heads, 2 KV heads, head_dim 16, intermediate 128, SiLU MLP,
max_position_embeddings 512, bos 1, eos 2; random init (initializer_range 0.1) then RMSNorm weights
1 + 0.1*N(0,1) and biases 0.1*N(0,1) so that a loader which ignores them fails.

| family | specifics |
|---|---|
| llama | `rope_parameters` = llama3: rope_theta 1e4, factor 8, low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings 64; rms_norm_eps 1e-5; untied. inv_freq divisors vs plain RoPE: [{div}] (1 high-freq band, 2 smoothed, 5 divided by 8) |
| qwen2 | q/k/v bias (always on in Qwen2; config.json has no flag); `tie_word_embeddings: true`, so **model.safetensors has no `lm_head.weight`** (use `model.embed_tokens.weight`); rope_theta 1e6; rms_norm_eps 1e-6 |
| mistral | `sliding_window: 16` on every layer; rope_theta 1e4; rms_norm_eps 1e-5; untied |

Notes for loaders:
- transformers 5.x config.json puts RoPE in `rope_parameters` (`rope_theta`, `rope_type`, scaling keys);
  there is no top-level `rope_theta` / `rope_scaling`. Older checkpoints use those; accept both.
- llama3 inv_freq (transformers `_compute_llama3_parameters`): inv = theta^(-2i/D); wavelen = 2*pi/inv;
  lo_wl = old/low_freq_factor, hi_wl = old/high_freq_factor; inv' = inv/factor where wavelen > lo_wl;
  where hi_wl <= wavelen <= lo_wl: s = (old/wavelen - low)/(high - low), inv' = (1-s)*inv/factor + s*inv;
  else inv. Attention scaling 1. Compare with `rope_inv_freq`.
- RoPE layout: HF rotate_half (first half / second half of head_dim), cos/sin of `concat(f, f)`.

## Greedy generation

`model.generate(greedy_prompt, attention_mask=ones, do_sample=False, max_new_tokens=20, min_new_tokens=20,
eos_token_id=None, pad_token_id=3)`: no EOS stopping, exactly 20 new tokens (with the KV cache; for
mistral the cache is the sliding-window cache and 12+20 > 16). The script checks these equal a greedy loop of
uncached full forwards. Smallest top-1/top-2 logit gap along the path: {gaps}.

## Mistral sliding window (transformers {versions["transformers"]}), measured

**Token t attends to keys j with t - W < j <= t, i.e. the half-open window (t-W, t]: exactly
min(t+1, W) keys including itself** (W = `sliding_window` = 16). So t = 16 no longer sees key 0; it is NOT [t-W, t]
(W+1 keys).

- Mask predicate: {sw["mask_predicate"]}.
- Verified: {sw["verified"]}.
- {sw["layers"]}.
- `long_logits` differ from the same model without a window by up to
  {infos["mistral"]["long_logits_vs_no_window_maxdiff_after_W"]:.2f} at positions >= 16 (identical before),
  so the window is exercised. (Also checked once by hand when these fixtures were made: an independent
  float64 NumPy forward from model.safetensors with mask (t-W, t] reproduces `long_logits` to ~2e-6; with
  [t-W, t] it is off by > 1e-2.)
"""
    (OUT / "README.md").write_text(text)


if __name__ == "__main__":
    main()
