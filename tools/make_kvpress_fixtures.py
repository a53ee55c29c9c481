"""Generate kvpress-oracle fixtures: tests/fixtures/kvpress/<family>/ for family in (llama, qwen2).

What
----
For a random tiny fp32 HF model (Llama / Qwen2, 4 layers, 4 q-heads, 2 kv-heads, head_dim 16,
vocab 512, eager attention) and one prompt of T=96 unique token ids, run NVIDIA kvpress 0.5.5
presses on the prefill and record, per (layer, kv_head), the sorted token indices each press
keeps. Also dump the post-RoPE q/k/v of the uncompressed prefill so that an independent
implementation can recompute every score without re-running the model. Files per family:

  model.safetensors  HF state dict (fp32, HF key names)       config.json  the HF config
  kept.npz           input_ids [1,T] int32; "<press>_r<ratio>" -> int32 [L, Hkv, n_kept] (sorted);
                     PyramidKV is ragged across layers: "pyramidkv_r0.5_layer{l}" -> int32 [Hkv, n_l]
  tensors.npz        q [L,Hq,T,D], k [L,Hkv,T,D], v [L,Hkv,T,D] (float32, post-RoPE, prefill)
  meta.json          exact press parameters + scoring formulas + versions + tie margins

The scoring formulas written into meta.json / tests/fixtures/kvpress/README.md were read from the
kvpress 0.5.5 source and are *checked here*: a NumPy (float64) re-implementation working only from
tensors.npz must reproduce every kept set exactly, or the script fails.

How to run
----------
    bash tools/setup_torch_venv.sh            # once: tools/.venv-torch (torch 2.13.0 CPU, kvpress 0.5.5)
    HF_HUB_OFFLINE=1 tools/.venv-torch/bin/python tools/make_kvpress_fixtures.py

Deterministic (fixed seeds, CPU, fp32). Versions used for the committed fixtures: kvpress 0.5.5,
transformers 5.2.0, torch 2.13.0+cpu (recorded in meta.json).
"""

# ruff: noqa: E501, E741  (long formula strings are data; `l` = layer index as in the formulas)

from __future__ import annotations

import json
import os
import shutil
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import transformers
from kvpress import (
    KnormPress,
    ObservedAttentionPress,
    PyramidKVPress,
    SnapKVPress,
    StreamingLLMPress,
    TOVAPress,
)
from kvpress.utils import compute_n_kept
from transformers import (
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "kvpress"

# Per-family seed (model init: torch.manual_seed(seed); prompt: randperm with Generator seed+1).
# Chosen as the seed in 0..15 whose kept sets are farthest from a top-k tie (largest min_rel_gap:
# >=1.5e-4, i.e. >300x the fp32-vs-fp64 score noise of ~5e-7 measured on these models).
SEEDS = {"llama": 13, "qwen2": 8}
T = 96
# HF's default initializer_range (0.02) gives almost uniform attention on a 64-wide model, so
# attention-based scores sit within ~1e-6 of each other and kept sets become fragile under a
# different summation order. 0.1 gives peaked attention and comfortable top-k margins (see
# meta.json "min_rel_gap").
INIT_RANGE = 0.1

COMMON = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    initializer_range=INIT_RANGE,
    attn_implementation="eager",
)
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, dict(attention_bias=False)),
    # Qwen2Attention hard-codes bias=True on q/k/v (o_proj has none); Qwen2Config has no
    # attention_bias field, so config.json does not mention it.
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict()),
}

WINDOW, KERNEL, BETA = 8, 5, 20

# (key, press factory, ratio)
PRESSES = [
    ("streamingllm_r0.5", lambda: StreamingLLMPress(compression_ratio=0.5, n_sink=4)),
    (
        "snapkv_r0.5",
        lambda: SnapKVPress(compression_ratio=0.5, window_size=WINDOW, kernel_size=KERNEL),
    ),
    (
        "snapkv_r0.25",
        lambda: SnapKVPress(compression_ratio=0.25, window_size=WINDOW, kernel_size=KERNEL),
    ),
    (
        "pyramidkv_r0.5",
        lambda: PyramidKVPress(
            compression_ratio=0.5, window_size=WINDOW, kernel_size=KERNEL, beta=BETA
        ),
    ),
    ("knorm_r0.5", lambda: KnormPress(compression_ratio=0.5)),
    ("knorm_r0.25", lambda: KnormPress(compression_ratio=0.25)),
    ("tova_r0.5", lambda: TOVAPress(compression_ratio=0.5)),
    ("observedattention_r0.5", lambda: ObservedAttentionPress(compression_ratio=0.5)),
]

# --------------------------------------------------------------------------------------------
# Exact scoring semantics of kvpress 0.5.5 (read from kvpress/presses/*.py). Notation:
#   T = prompt length, L layers, Hq query heads, Hkv kv heads, G = Hq/Hkv, D = head_dim.
#   q[l,h,i], k[l,g,j], v[l,g,j] = post-RoPE query/key/value (tensors.npz).
#   A[l,h,i,j] = softmax_j( q[l,h,i].k[l,h//G,j] / sqrt(D) ) over j <= i (causal; fp32 softmax),
#                i.e. the eager prefill attention matrix of the full (uncompressed) prompt.
#   Query head h belongs to kv head h // G (HF repeat_kv order), so "mean over the GQA group"
#   of kv head g is the mean over query heads g*G .. g*G+G-1.
#   Every ScorerPress keeps, independently per (layer, kv_head), topk(score, n_kept) with
#   n_kept = max(1, int(T*(1-ratio))) (kvpress.utils.compute_n_kept; python int() truncates).
#   kvpress gathers in top-k order; the fixtures store the indices sorted ascending.
# --------------------------------------------------------------------------------------------
COMMON_RULES = {
    "keep_rule": "per (layer, kv_head) independently: kept = topk(score[l, g, :], n_kept); fixtures store sorted(kept)",
    "n_kept": "n_kept = max(1, int(T * (1 - compression_ratio)))  (kvpress.utils.compute_n_kept; int() truncates)",
    "attention": "A[l,h,i,j] = softmax_j(q[l,h,i] . k[l,h//G,j] / sqrt(D)) over keys j <= i (causal), fp32 softmax, "
    "computed over ALL T keys of the prompt (eager attention of the uncompressed prefill)",
    "gqa": "query head h belongs to kv head h // G (G = Hq/Hkv, HF repeat_kv layout); 'mean over group' of kv head g "
    "= mean over query heads g*G .. g*G+G-1",
    "positions": "keys/queries are post-RoPE at their original positions 0..T-1; kvpress does NOT re-rotate kept keys",
    "ties": "forced-keep positions get score max+1 (global max over batch/heads/positions of the pre-pad scores); "
    "no other exact ties occur in these fixtures (see min_rel_gap)",
}

SCORING = {
    "streamingllm": {
        "class": "StreamingLLMPress",
        "params": {"n_sink": 4},
        "formula": "n_pruned = T - int(T*(1-ratio)); score[j] = 0 for n_sink <= j < n_sink + n_pruned, else 1. "
        "Kept = [0, n_sink) U [n_sink + n_pruned, T). Same for every layer and kv head.",
    },
    "snapkv": {
        "class": "SnapKVPress",
        "params": {"window_size": WINDOW, "kernel_size": KERNEL},
        "formula": "w = window_size. For j < T-w: a[h,j] = mean_{i = T-w .. T-1} A[h,i,j] (MEAN over the w window "
        "queries; A's softmax is over all keys j' <= i including the window keys, NOT renormalised after "
        "dropping the window columns). p[h,j] = avg_pool1d(a[h,:], kernel_size=k, stride=1, padding=k//2, "
        "count_include_pad=True) = (1/k) * sum_{m=j-k//2}^{j+k//2} a[h,m] with a[h,m] = 0 for m < 0 or m >= T-w "
        "(zero padding, always divided by k). s[g,j] = mean_{h in group(g)} p[h,j]. Window positions "
        "j >= T-w get score max(s)+1, so the whole window is always kept and counts inside n_kept.",
    },
    "pyramidkv": {
        "class": "PyramidKVPress",
        "params": {"window_size": WINDOW, "kernel_size": KERNEL, "beta": BETA},
        "formula": "Scores exactly as snapkv (same w, k). Per-layer budget (PyramidKVPress.get_layer_budget, floats): "
        "mcp = w + T*(1-ratio); min_num = (mcp-w)/beta; max_num = 2*(mcp-w) - min_num; "
        "if max_num >= T-w: max_num = T-w; min_num = 2*(mcp-w) - max_num. "
        "If not (T >= max_num >= min_num >= w): n_kept_l = max(1, round(T*(1-ratio))) for all layers; "
        "else n_kept_l = round(max_num - l*(max_num-min_num)/(L-1)) (python round = banker's rounding; "
        "steps = 0 if L == 1). n_kept_l INCLUDES the w window tokens. "
        "For T=96, ratio=0.5, w=8, beta=20, L=4: n_kept = [88, 61, 35, 8].",
    },
    "knorm": {
        "class": "KnormPress",
        "params": {},
        "formula": "s[g,j] = -||k[l,g,j]||_2 (fp32 norm of the cached post-RoPE key; RoPE preserves the norm). "
        "Keeps the n_kept keys with the SMALLEST norm.",
    },
    "tova": {
        "class": "TOVAPress",
        "params": {},
        "formula": "For j < T-1: s[j] = mean_{h = 0..Hq-1} A[h, T-1, j] (last query's attention, averaged over ALL "
        "query heads, not per group; softmax includes the last key itself, not renormalised). The same score "
        "is used for every kv head (identical kept sets across kv heads). Last position j = T-1 gets max(s)+1 "
        "(always kept).",
    },
    "observedattention": {
        "class": "ObservedAttentionPress",
        "params": {},
        "formula": "c[h,j] = sum_{i=0}^{T-1} A[h,i,j] (column sum of the causal prefill attention; zeros above the "
        "diagonal); o[h,j] = c[h,j] / (T - j) (number of queries i >= j that see key j); "
        "s[g,j] = mean_{h in group(g)} o[h,j]. Requires eager attention (uses the attention weights).",
    },
}


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


def n_kept_pyramid(T: int, ratio: float, w: int, beta: int, L: int, layer: int) -> int:
    mcp = w + T * (1 - ratio)
    min_num = (mcp - w) / beta
    max_num = (mcp - w) * 2 - min_num
    if max_num >= T - w:
        max_num = T - w
        min_num = (mcp - w) * 2 - max_num
    if not (T >= max_num >= min_num >= w):
        return max(1, round(T * (1 - ratio)))
    steps = (max_num - min_num) / (L - 1) if L > 1 else 0.0
    return round(max_num - layer * steps)


# ------------------------------- independent NumPy re-implementation ---------------------------
def _attention(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """q [Hq,T,D], k [Hkv,T,D] -> causal softmax attention [Hq,T,T] (float64)."""
    Hq, T_, D = q.shape
    G = Hq // k.shape[0]
    kk = np.repeat(k, G, axis=0)
    logits = np.einsum("hid,hjd->hij", q, kk) / np.sqrt(D)
    logits = np.where(np.tril(np.ones((T_, T_), bool)), logits, -np.inf)
    logits -= logits.max(-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(-1, keepdims=True)


def np_scores(name: str, q: np.ndarray, k: np.ndarray, ratio: float) -> np.ndarray:
    """Scores [Hkv, T] for one layer, following SCORING[name]['formula'] literally."""
    Hq, T_, D = q.shape
    Hkv = k.shape[0]
    G = Hq // Hkv
    if name == "streamingllm":
        n_pruned = T_ - int(T_ * (1 - ratio))
        s = np.ones((Hkv, T_))
        s[:, 4 : 4 + n_pruned] = 0
        return s
    if name == "knorm":
        return -np.linalg.norm(k, axis=-1)
    A = _attention(q, k)
    if name in ("snapkv", "pyramidkv"):
        w, ks = WINDOW, KERNEL
        a = A[:, T_ - w :, : T_ - w].mean(1)  # [Hq, T-w]
        pad = ks // 2
        ap = np.pad(a, ((0, 0), (pad, pad)))
        p = np.stack([ap[:, j : j + ks].sum(1) / ks for j in range(T_ - w)], 1)
        s = p.reshape(Hkv, G, T_ - w).mean(1)
        return np.concatenate([s, np.full((Hkv, w), s.max() + 1)], 1)
    if name == "tova":
        s = A[:, T_ - 1, : T_ - 1].mean(0)
        s = np.concatenate([s, [s.max() + 1]])
        return np.tile(s, (Hkv, 1))
    if name == "observedattention":
        o = A.sum(1) / np.arange(T_, 0, -1)
        return o.reshape(Hkv, G, T_).mean(1)
    raise KeyError(name)


N_FORCED = {"snapkv": WINDOW, "pyramidkv": WINDOW, "tova": 1}


def topk_sorted(s: np.ndarray, n: int, n_forced: int = 0) -> tuple[np.ndarray, float]:
    """Sorted top-n indices per row, and the min relative gap between the n-th and (n+1)-th score
    (relative to the largest |score| among the non-forced positions)."""
    order = np.argsort(-s, axis=-1, kind="stable")
    kept = np.sort(order[:, :n], axis=-1)
    rel = np.inf
    if n < s.shape[-1]:
        ss = -np.sort(-s, axis=-1)
        scale = np.abs(s[:, : s.shape[-1] - n_forced]).max(axis=-1)
        rel = float(((ss[:, n - 1] - ss[:, n]) / scale).min())
    return kept, rel


# ------------------------------------- torch side ----------------------------------------------
def randomize_extras(model, std: float = 0.1) -> None:
    """HF init leaves RMSNorm weights at 1 and linear biases at 0, which would not test that a loader
    reads them. Perturb them (norm weights 1 + std*N(0,1), biases std*N(0,1)) from the current RNG."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + std * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(std * torch.randn_like(p))


def build_model(family: str):
    cfg_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(SEEDS[family])
    cfg = cfg_cls(**COMMON, **extra)
    model = model_cls(cfg).eval().float()
    randomize_extras(model)
    assert model.config._attn_implementation == "eager"
    return model


def capture_prefill(model, ids):
    """Run the uncompressed prefill; return (cache, q [L,Hq,T,D]) with post-RoPE queries via hooks."""
    qs = {}

    def pre_hook(module, args, kwargs):
        h = kwargs["hidden_states"]
        cos, sin = kwargs["position_embeddings"]
        b, t, _ = h.shape
        q = module.q_proj(h).view(b, t, -1, module.head_dim).transpose(1, 2)
        k = module.k_proj(h).view(b, t, -1, module.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        qs[module.layer_idx] = (q[0].detach().clone(), k[0].detach().clone())

    hooks = [
        layer.self_attn.register_forward_pre_hook(pre_hook, with_kwargs=True)
        for layer in model.model.layers
    ]
    try:
        cache = DynamicCache()
        with torch.no_grad():
            model.model(input_ids=ids, past_key_values=cache)
    finally:
        for h in hooks:
            h.remove()
    L = len(model.model.layers)
    q = torch.stack([qs[l][0] for l in range(L)])
    k_hook = torch.stack([qs[l][1] for l in range(L)])
    k = torch.stack([cache.layers[l].keys[0] for l in range(L)])
    v = torch.stack([cache.layers[l].values[0] for l in range(L)])
    assert torch.equal(k_hook, k), "hook-recomputed keys differ from cached keys"
    return q, k, v


def recover_kept(full_v: torch.Tensor, comp_cache, full_k: torch.Tensor) -> list[np.ndarray]:
    """Per layer: int [Hkv, n_kept] sorted indices, matching compressed values to full values."""
    out = []
    for l in range(full_v.shape[0]):
        cv = comp_cache.layers[l].values[0].double()
        ck = comp_cache.layers[l].keys[0].double()
        rows = []
        for g in range(full_v.shape[1]):
            d = torch.cdist(
                cv[g], full_v[l, g].double(), compute_mode="donot_use_mm_for_euclid_dist"
            )  # [n_kept, T]
            two = d.topk(2, dim=-1, largest=False)
            idx = two.indices[:, 0]
            assert float(two.values[:, 0].max()) == 0.0, (
                "compressed value not found exactly in full cache"
            )
            assert float(two.values[:, 1].min()) > 1e-4, "ambiguous value match"
            assert len(set(idx.tolist())) == len(idx), "duplicate kept index"
            assert torch.equal(ck[g], full_k[l, g].double()[idx]), (
                "keys do not match recovered indices"
            )
            rows.append(np.sort(idx.numpy()))
        out.append(np.stack(rows).astype(np.int32))
    return out


def make_family(family: str) -> dict:
    model = build_model(family)
    L = model.config.num_hidden_layers
    gen = torch.Generator().manual_seed(SEEDS[family] + 1)
    ids = torch.randperm(model.config.vocab_size, generator=gen)[:T].unsqueeze(0)

    q, k, v = capture_prefill(model, ids)
    qn, kn = q.double().numpy(), k.double().numpy()

    kept: dict[str, np.ndarray] = {"input_ids": ids.numpy().astype(np.int32)}
    margins: dict[str, float] = {}
    n_kept_info: dict[str, object] = {}
    for key, factory in PRESSES:
        press = factory()
        name, rtag = key.split("_r")
        ratio = float(rtag)
        cache = DynamicCache()
        with torch.no_grad(), press(model):
            model.model(input_ids=ids, past_key_values=cache)
        per_layer = recover_kept(v, cache, k)

        rel_min = np.inf
        for l in range(L):
            n = per_layer[l].shape[-1]
            want_n = (
                n_kept_pyramid(T, ratio, WINDOW, BETA, L, l)
                if name == "pyramidkv"
                else compute_n_kept(T, ratio)
            )
            assert n == want_n, (key, l, n, want_n)
            ref, rel = topk_sorted(np_scores(name, qn[l], kn[l], ratio), n, N_FORCED.get(name, 0))
            assert np.array_equal(ref, per_layer[l]), (
                f"{family} {key} layer {l}: numpy re-implementation differs"
            )
            if name != "streamingllm":
                rel_min = min(rel_min, rel)
        margins[key] = None if name == "streamingllm" else float(rel_min)

        if name == "pyramidkv":
            for l in range(L):
                kept[f"{key}_layer{l}"] = per_layer[l]
            n_kept_info[key] = [int(a.shape[-1]) for a in per_layer]
        else:
            kept[key] = np.stack(per_layer)
            n_kept_info[key] = int(per_layer[0].shape[-1])
        print(f"  {family} {key}: n_kept={n_kept_info[key]} min_rel_gap={margins[key]}")

    if family == "llama":  # the published §1.6 expectation
        assert kept["streamingllm_r0.5"][0, 0].tolist() == [0, 1, 2, 3] + list(range(52, 96))
        assert n_kept_info["pyramidkv_r0.5"] == [88, 61, 35, 8]

    d = OUT / family
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    model.save_pretrained(d, safe_serialization=True)
    for extra in d.iterdir():
        if extra.name not in ("config.json", "model.safetensors"):
            extra.unlink()
    save_npz(d / "kept.npz", kept, compress=True)
    save_npz(
        d / "tensors.npz",
        {
            "q": q.numpy().astype(np.float32),
            "k": k.numpy().astype(np.float32),
            "v": v.numpy().astype(np.float32),
        },
    )

    cfg = model.config
    meta = {
        "description": "kvpress 0.5.5 kept-index oracle for a random tiny fp32 model; see README.md",
        "family": family,
        "model_class": type(model).__name__,
        "attn_implementation": "eager",
        "dtype": "float32",
        "seed": SEEDS[family],
        "init_range": INIT_RANGE,
        "init_note": "HF init (normal(0, init_range) for linears/embeddings), then every *norm.weight set to "
        "1 + 0.1*N(0,1) and every bias (qwen2 q/k/v) to 0.1*N(0,1), so a loader that ignores them fails",
        "input": f"input_ids = torch.randperm(512, generator=torch.Generator().manual_seed({SEEDS[family] + 1}))[:96]"
        " (unique ids), batch 1",
        "T": T,
        "num_layers": L,
        "num_q_heads": cfg.num_attention_heads,
        "num_kv_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "gqa_group": cfg.num_attention_heads // cfg.num_key_value_heads,
        "rope_theta": cfg.rope_parameters["rope_theta"],
        "qkv_bias": family == "qwen2",
        "how_kept_was_recovered": "prefill model.model(input_ids, past_key_values=DynamicCache()) inside "
        "`with press(model):`; for each (layer, kv_head) every compressed value row is matched to the full "
        "cache's value rows by torch.cdist argmin (exact match, distance 0; keys checked too); indices sorted",
        "tensors_npz": "q [L,Hq,T,D], k [L,Hkv,T,D], v [L,Hkv,T,D], float32, post-RoPE, uncompressed prefill "
        "(k/v are the DynamicCache contents; q captured with a forward pre-hook on self_attn: q_proj(+bias) "
        "then apply_rotary_pos_emb)",
        "common": COMMON_RULES,
        "presses": {},
        "versions": {
            "kvpress": version("kvpress"),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "check": "tools/make_kvpress_fixtures.py re-implements every score in float64 NumPy from tensors.npz "
        "and asserts the kept sets are identical",
    }
    for key, _ in PRESSES:
        name, rtag = key.split("_r")
        entry = dict(SCORING[name])
        entry = {
            "class": entry["class"],
            "compression_ratio": float(rtag),
            "params": entry["params"],
            "score": entry["formula"],
            "n_kept": n_kept_info[key],
            "min_rel_gap": margins[key],
            "npz_keys": [f"{key}_layer{l}" for l in range(L)] if name == "pyramidkv" else [key],
        }
        meta["presses"][key] = entry
    meta["min_rel_gap_doc"] = (
        "per press: min over (layer, kv_head) of (s[n_kept-1] - s[n_kept]) / max|s| (descending-sorted float64 "
        "scores; max|s| over the non-forced positions); how far the top-k boundary is from a tie (null for StreamingLLM, which is structural)"
    )
    (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


README_HEAD = """# kvpress kept-index fixtures

Generated by `tools/make_kvpress_fixtures.py` (do not edit by hand; re-run the script). Oracle: NVIDIA
kvpress {kvpress} with transformers {transformers}, torch {torch}, CPU, fp32, `attn_implementation="eager"`.
Load with numpy + safetensors only (`safetensors.numpy.load_file`, `np.load`); no torch needed.

## Layout (`llama/`, `qwen2/`)

| file | content |
|---|---|
| `config.json` | HF config (transformers 5.x format: RoPE in `rope_parameters`, not `rope_theta`) |
| `model.safetensors` | HF state dict, fp32, HF key names (`model.layers.{{l}}.self_attn.q_proj.weight`, ...; `lm_head.weight` present, untied). Qwen2 has q/k/v biases (Qwen2 always has them; config.json has no flag) |
| `kept.npz` | `input_ids` int32 [1, 96]; `<press>_r<ratio>` int32 [L=4, Hkv=2, n_kept], sorted ascending; PyramidKV (ragged): `pyramidkv_r0.5_layer{{l}}` int32 [Hkv, n_kept_l] |
| `tensors.npz` | uncompressed prefill, float32, post-RoPE: `q` [L, Hq=4, T=96, D=16], `k` [L, Hkv, T, D], `v` [L, Hkv, T, D] |
| `meta.json` | per press: class, ratio, params, exact score formula, n_kept, npz keys, `min_rel_gap`; versions |

Model: vocab 512, hidden 64, 4 layers, 4 heads, 2 KV heads (G = 2), head_dim 16, intermediate 128,
rope_theta 1e4 (default RoPE), max_position_embeddings 256, rms_norm_eps 1e-6, untied; random init with
initializer_range 0.1, then RMSNorm weights = 1 + 0.1*N(0,1) and biases = 0.1*N(0,1). Input: 96 unique
token ids (randperm), batch 1. Seeds in meta.json.

Keys: {keys}.

## Scoring

Read from the kvpress 0.5.5 source (`kvpress/presses/*.py`) and verified: a float64 NumPy
re-implementation working only from `tensors.npz` (in the generating script) reproduces every kept set.
Notation: T = 96, q/k/v from `tensors.npz` (post-RoPE), G = Hq/Hkv.
"""

README_TAIL = """
## Tie safety

`min_rel_gap` (meta.json) = min over (layer, kv head) of (s[n_kept-1] - s[n_kept]) / max|s| on the sorted
float64 scores (forced positions excluded from max|s|). Seeds were picked so that it is >= 1.5e-4 for every
press, >300x the fp32 score noise (~5e-7 measured between an fp32 and an fp64 run of the same model), so
an fp32 JAX recomputation (from the weights or from `tensors.npz`) should give identical kept sets.

## Conventions that differ from the original papers (kvpress, not us)

- SnapKV/PyramidKV: mean (not sum) over window queries, avg-pool (not max-pool), the budget includes the window.
- TOVA: one score shared by all KV heads (mean over all query heads); last token forced kept.
- ObservedAttention: prefill-only normalised column sums; not H2O (no recent window, no decode accumulation).
- StreamingLLM: kept keys keep their original RoPE positions (no re-rotation).
"""


def write_readme(meta: dict) -> None:
    v = meta["versions"]
    keys = ", ".join(f"`{k}`" for e in meta["presses"].values() for k in e["npz_keys"])
    lines = [README_HEAD.format(keys=keys, **v)]
    lines.append("Common rules:\n")
    for k, text in meta["common"].items():
        lines.append(f"- **{k}**: {text}")
    lines.append("")
    seen = set()
    for key, e in meta["presses"].items():
        name = key.split("_r")[0]
        if name in seen:
            continue
        seen.add(name)
        ratios = [kk for kk in meta["presses"] if kk.split("_r")[0] == name]
        params = ", ".join(f"{a}={b}" for a, b in e["params"].items()) or "none"
        lines.append(f"### {e['class']} ({', '.join(ratios)}; params: {params})\n")
        lines.append(e["score"])
        lines.append("")
        for kk in ratios:
            lines.append(f"- `{kk}`: n_kept = {meta['presses'][kk]['n_kept']}")
        lines.append("")
    lines.append(README_TAIL)
    (OUT / "README.md").write_text("\n".join(lines).rstrip() + "\n")


def main():
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = None
    for family in FAMILIES:
        print(f"[{family}]")
        meta = make_family(family)
    write_readme(meta)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
