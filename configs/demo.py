"""The headline demo (the README's main command, ``scripts/main.sh``): StreamingLLM on our two
reference models, on a 2-core CPU in minutes.

    python -m experiments.demo --config=configs/demo.py --workdir=runs/demo
    python -m experiments.demo --config=configs/demo.py:smoke --workdir=runs/demo_smoke
    python -m experiments.demo --config=configs/demo.py:default,tokens=16384 --workdir=runs/demo

Variants: default (an 8,192-byte held-out stream = 16x the 512-byte training context; caches of
256 = half the training context, as in the paper, and 32), smoke (a 200-byte stream, cache 16,
< 1 min). Args after the variant: tokens=<stream length>, cache=<one cache size, sinks
included>, stride=<recomputation scores every stride-th byte>.
"""

import ml_collections

from configs.common import parse_arg

VARIANTS = {
    "default": dict(stream_tokens=8192, cache_sizes=(256, 32), recompute_stride=16, chunk=1024,
                    curve_every=512, sink_samples=64, sample_tokens=300, sample_cache=64),
    "smoke": dict(stream_tokens=200, cache_sizes=(16,), recompute_stride=8, chunk=200,
                  curve_every=50, sink_samples=4, sample_tokens=24, sample_cache=16),
}


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="default", tokens=0, cache=0, stride=0)
    v = a["variant"]
    if v not in VARIANTS:
        raise ValueError(f"unknown demo variant {v!r}; expected one of {sorted(VARIANTS)}")
    c = ml_collections.ConfigDict(VARIANTS[v])
    c.models = (("softmax", "models/softmax"), ("sinktoken", "models/sinktoken"))  # name, dir
    c.stream_tokens = a["tokens"] or c.stream_tokens
    c.cache_sizes = (a["cache"],) if a["cache"] else c.cache_sizes
    c.recompute_stride = a["stride"] or c.recompute_stride
    c.sinks = (1, 2, 4) if v == "default" else (1,)  # plus the window-only row (0 sinks)
    c.offset = 0  # first held-out token of the stream; sink-rate windows follow the stream
    c.sink_len = 64  # Gu et al.: T = 64 tokens per sample (BOS included), eps = 0.3
    c.sink_eps = 0.3
    c.sample_model = "softmax"
    c.prompt = "import os\n\n\ndef "  # the text sample: StreamingLLM(4 sinks) past its cache
    c.temperature = 0.7
    c.seed = 0
    c.compute_dtype = "float32"
    c.fast_compile = v == "smoke"  # XLA skips most optimisations: compiling dominates
    return c
