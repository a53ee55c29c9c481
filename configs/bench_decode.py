"""Config of the decode benchmark (experiments/bench_decode): end-to-end tokens/s and cache memory
vs context length per attention impl and policy, on a (data, model) mesh, and StreamingLLM vs
window recomputation.

    python -m experiments.bench_decode --config=configs/bench_decode.py:smoke --workdir=runs/bd
    python -m experiments.bench_decode --config=configs/bench_decode.py --workdir=runs/bd \
        --config.contexts='(32768,)' --config.mesh.data=1 --config.mesh.model=4

Variants: smoke (a tiny random bf16 model on the CPU, xla and pallas (interpreted), < 1 min),
default (a random-init 8-layer, dim-1024, 16-head / 8-KV-head bf16 model: weights do not matter
for timing; impls xla, cudnn and pallas; batch 16, contexts 4K..32K, StreamingLLM with 4 sinks
+ a 1020-token window, the recomputation baseline over the same 1024 tokens). Rows are appended
to ``workdir/bench_decode.csv``.
"""

import ml_collections

from configs.common import check_variant

MODELS = {
    "smoke": dict(vocab_size=259, dim=128, num_layers=2, num_heads=4, num_kv_heads=2,
                  ffn_dim=160, compute_dtype="bfloat16"),
    "default": dict(vocab_size=32768, dim=1024, num_layers=8, num_heads=16, num_kv_heads=8,
                    ffn_dim=2816, compute_dtype="bfloat16"),
}


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
    check_variant("bench_decode", arg, MODELS)
    smoke = arg == "smoke"
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(MODELS[arg])
    # ModelConfig.attention_impl of each timed model ('cudnn' is skipped off a GPU)
    c.impls = ("xla", "pallas") if smoke else ("xla", "cudnn", "pallas")
    c.batch = 2 if smoke else 16
    c.contexts = (128, 512) if smoke else (4096, 16384, 32768)
    c.policies = ("dense", "streaming_llm")  # policy specs (lcache.cache.registry)
    c.budget = 32 if smoke else 1024  # cache tokens (4 sinks + ring); recomputation re-runs them
    c.recompute = True
    c.steps = 4 if smoke else 16  # decode steps per timed call (one lax.scan)
    c.warmup = 1 if smoke else 2
    c.iters = 3 if smoke else 10
    c.mesh = ml_collections.ConfigDict(dict(data=1, model=1))
    # multi-host: enabled=True calls jax.distributed.initialize; unset values are auto-detected
    c.distributed = ml_collections.ConfigDict(dict(enabled=False, coordinator="",
                                                   num_processes=0, process_id=-1))
    c.seed = 0
    return c
