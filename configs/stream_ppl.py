"""Streaming perplexity (StreamingLLM Tables 2/3): ``experiments/stream_ppl.py``.

    python -m experiments.stream_ppl --config=configs/stream_ppl.py:smoke --workdir=runs/sppl_smoke
    python -m experiments.stream_ppl --config=configs/stream_ppl.py:reduced --workdir=runs/sppl
    python -m experiments.stream_ppl --config=configs/stream_ppl.py:default --workdir=runs/sppl
    python -m experiments.stream_ppl --config=configs/stream_ppl.py:default,model=sinktoken \
        --workdir=runs/sppl_sinktoken

Variants: smoke (a 300-token stream, cache 32, 0/1 sink, no H2O, < 1 min on CPU), reduced
(16,384 tokens = 32x the training context), default (51,200 tokens = 100x the training context of
512).
Args after the variant: model=<name under models/ or a checkpoint dir>, tokens=<stream length>,
cache=<cache size, sinks included>.
"""

import ml_collections

from configs.common import check_variant, parse_arg

VARIANTS = {
    # stream tokens, cache size, dense targets, recompute stride, decode steps per compiled call
    "smoke": dict(stream_tokens=300, cache_size=32, dense_tokens=-1, recompute_stride=4,
                  chunk=128, curve_every=50),
    "reduced": dict(stream_tokens=16_384, cache_size=256, dense_tokens=4096, recompute_stride=32,
                    chunk=1024, curve_every=512),
    "default": dict(stream_tokens=51_200, cache_size=256, dense_tokens=8192, recompute_stride=64,
                    chunk=1024, curve_every=1024),
}


def model_dir(name: str) -> str:
    """``softmax`` -> ``models/softmax``; paths and the untrained smoke models ``random`` /
    ``random-sink`` (``lcache.eval.RANDOM_MODELS``) are kept as they are."""
    return name if "/" in name or name.startswith("random") else f"models/{name}"


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="default", model="softmax", tokens=0, cache=0)
    v = a["variant"]
    check_variant("stream_ppl", v, VARIANTS)
    c = ml_collections.ConfigDict(VARIANTS[v])
    c.model_dir = model_dir(a["model"])
    c.stream_tokens = a["tokens"] or c.stream_tokens
    c.cache_size = a["cache"] or c.cache_size
    c.offset = 0  # first held-out token of the stream
    c.sinks = (0, 1) if v == "smoke" else (0, 1, 2, 4, 8)  # 0 = the window-only row
    c.h2o = v != "smoke"  # also H2O at the same cache size (original RoPE positions)
    c.recompute_batch = 32  # windows per recomputation forward
    c.compute_dtype = "float32"
    c.fast_compile = v == "smoke"  # XLA skips most optimisations: compiling dominates
    return c
