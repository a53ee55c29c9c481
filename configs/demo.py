"""The headline demo (the README's main command, ``scripts/main.sh``): StreamingLLM on our two
reference models and one small retrieval row, on a 2-core CPU in minutes.

    python -m experiments.demo --config=configs/demo.py --workdir=runs/demo
    python -m experiments.demo --config=configs/demo.py:smoke --workdir=runs/demo_smoke
    python -m experiments.demo --config=configs/demo.py:default,tokens=8192 --workdir=runs/demo
    python -m experiments.demo --config=configs/demo.py --config.retrieval.trials=4 \
        --workdir=runs/demo

Variants: default (a 6,144-byte held-out stream = 3x the 2,048-byte training context, so two
thirds of it lie past what the models were trained on; caches of 128 and 32 bytes, sinks
included, the small one where sinks matter most; passkey at context 1024, 8 prompts), smoke (a
200-byte stream, cache 16, passkey at context 320 with 2 prompts, < 1 min). Args after the
variant: tokens=<stream length>, cache=<one cache size, sinks included>, stride=<recomputation
scores every stride-th byte>. Policies are registry specs (``lcache.cache.registry``).
"""

import ml_collections

from configs.common import check_variant, parse_arg

VARIANTS = {
    "default": dict(stream_tokens=6144, cache_sizes=(128, 32), sinks=(1, 4), recompute_stride=16,
                    chunk=1024, curve_every=256, sink_samples=64, sample_tokens=200,
                    sample_cache=64),
    "smoke": dict(stream_tokens=200, cache_sizes=(16,), sinks=(1,), recompute_stride=8,
                  chunk=200, curve_every=50, sink_samples=4, sample_tokens=24, sample_cache=16),
}
RETRIEVAL = {  # one row: each spec at budget_frac of the context (dense: the full cache)
    "default": dict(context=1024, depths=(0.0, 0.33, 0.67, 1.0), trials=2, batch=8),
    "smoke": dict(context=320, depths=(0.0, 1.0), trials=1, batch=2),
}


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="default", tokens=0, cache=0, stride=0)
    v = a["variant"]
    check_variant("demo", v, VARIANTS)
    c = ml_collections.ConfigDict(VARIANTS[v])
    c.models = (("softmax", "models/softmax"), ("sinktoken", "models/sinktoken"))  # name, dir
    c.stream_tokens = a["tokens"] or c.stream_tokens
    c.cache_sizes = (a["cache"],) if a["cache"] else c.cache_sizes
    c.recompute_stride = a["stride"] or c.recompute_stride
    c.offset = 0  # first held-out token of the stream; sink-rate windows follow the stream
    c.sink_len = 64  # Gu et al.: T = 64 tokens per sample (BOS included), eps = 0.3
    c.sink_eps = 0.3
    c.sample_model = "softmax"
    c.prompt = "import os\n\n\ndef "  # the text sample's prompt
    c.sample_policy = "streaming_llm(sinks=4)"  # its cache, far smaller than the text
    c.temperature = 0.7
    c.seed = 0
    c.retrieval = ml_collections.ConfigDict(RETRIEVAL[v])
    c.retrieval.model = "softmax"
    c.retrieval.task = "passkey"  # lcache.data.ruler.TASKS (passkey hides its key in filler)
    c.retrieval.budget_frac = 0.2
    # snapkv: KVCache-Factory's window 8 and kernel 7 BPE tokens at about 4 bytes per token
    c.retrieval.policies = ("dense", "streaming_llm(sinks=4)",
                            "snapkv(window=32,kernel=29,pool=max)")
    c.retrieval.threads = 2  # concurrent compilations
    c.compute_dtype = "float32"
    c.fast_compile = v == "smoke"  # XLA skips most optimisations: compiling dominates
    return c
