"""Config of the cache-policy cost benchmark (``experiments/bench_policies.py``).

    python -m experiments.bench_policies --config=configs/bench_policies.py:smoke \
        --workdir=runs/bench_policies_smoke
    python -m experiments.bench_policies --config=configs/bench_policies.py:default \
        --workdir=runs/bench_policies
    python -m experiments.bench_policies --config=configs/bench_policies.py:default,budget=512 \
        --config.policies="('dense','streaming_llm','snapkv(window=8)')" --workdir=runs/bench_512

Variants:
  smoke    a 2-layer toy model, 64-token prompt, budget 32, eight representative policies
           (CPU, under a minute: each policy compiles a prefill, a decode and an update scan);
  default  a 4-layer, 1024-wide bf16 model (16 query / 8 KV heads of 64), 4096-token prompt,
           batch 8, budget 1024 (an accelerator).
Both attend with ``attention_impl='auto'`` (``--config.model.attention_impl=xla`` for the jnp
path on an accelerator).
Args after the variant: budget=<tokens kept per layer and head>, steps=<timed decode steps>,
prompt=<prompt tokens>, batch=<rows>. ``policies`` is a tuple of policy specs
(``lcache.cache.registry``); the SnapKV family runs as KVCache-Factory does (window 8, kernel 7,
max pooling).
"""

import ml_collections

from configs.common import check_variant, parse_arg

SNAP = "window=8,kernel=7,pool=max"
POLICIES = {
    "smoke": ("dense", "streaming_llm", "h2o", f"snapkv({SNAP})", f"pyramidkv({SNAP})",
              f"dynamickv({SNAP})", "tova", f"recompress({SNAP},interval=16)"),
    "default": ("dense", "window", "streaming_llm", "h2o", "value", f"snapkv({SNAP})",
                f"pyramidkv({SNAP})", f"dynamickv({SNAP})", "tova", "knorm", "random",
                f"recompress({SNAP},interval=16)"),
}
MODELS = {
    "smoke": dict(dim=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=128,
                  compute_dtype="float32"),
    "default": dict(dim=1024, num_layers=4, num_heads=16, num_kv_heads=8, ffn_dim=2816,
                    compute_dtype="bfloat16"),
}
RUN = {
    "smoke": dict(budget=32, steps=16, prompt=64, batch=2, repeats=3),
    "default": dict(budget=1024, steps=64, prompt=4096, batch=8, repeats=5),
}


def get_config(arg: str = "smoke") -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="smoke", budget=0, steps=0, prompt=0, batch=0)
    v = a["variant"]
    check_variant("bench_policies", v, MODELS)
    run = {k: a.get(k) or default for k, default in RUN[v].items()}
    c = ml_collections.ConfigDict()
    # 'auto': the Pallas kernels on GPU/TPU (the decode kernel's slot probabilities feed the
    # policies), the jnp path on CPU
    c.model = ml_collections.ConfigDict(dict(vocab_size=256, max_seq_len=run["prompt"],
                                             attention_impl="auto", **MODELS[v]))
    c.policies = POLICIES[v]
    c.budget = run["budget"]  # tokens per layer and head (window / sinks included)
    c.prompt_len = run["prompt"]
    c.decode_steps = run["steps"]  # timed decode steps; every decode cache has room for them
    c.batch = run["batch"]
    c.repeats = run["repeats"]  # timings are the median over repeats
    c.seed = 0
    return c
