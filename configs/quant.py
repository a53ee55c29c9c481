"""Config of the quantized-KV perplexity experiment (``experiments/quant.py``).

    python -m experiments.quant --config=configs/quant.py:smoke --workdir=runs/quant_smoke
    python -m experiments.quant --config=configs/quant.py:default --workdir=runs/quant
    python -m experiments.quant --config=configs/quant.py:default,residual=128 \
        --config.checkpoint=runs/gpu/softmax/model --workdir=runs/quant_r128

Variants: smoke (CPU, < 1 min, int2 only; an UNTRAINED random model unless ``checkpoint`` is set),
default (the committed reference model ``models/softmax``, 64 held-out windows of 512 tokens).
Args after the variant: n=<sequences>, residual=<R>, group=<G>, sinks=<N>.
"""

import ml_collections

from configs.common import parse_arg

SMOKE_MODEL = dict(vocab_size=259, dim=64, num_layers=1, num_heads=4, num_kv_heads=2,
                   ffn_dim=160, max_seq_len=64)


def get_config(arg: str = "smoke") -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="smoke", n=0, residual=0, group=0, sinks=4)
    v = a["variant"]
    if v not in ("smoke", "default"):
        raise ValueError(f"unknown quant variant {v!r}; expected 'smoke' or 'default'")
    smoke = v == "smoke"
    c = ml_collections.ConfigDict()
    c.variant = v
    # A model directory written by experiments/train.py (config.json + params.safetensors).
    c.checkpoint = ml_collections.FieldReference(None if smoke else "models/softmax",
                                                 field_type=str)
    c.model = ml_collections.ConfigDict(SMOKE_MODEL)  # the random model of smoke runs only
    c.seed = 0
    c.seq_len = 64 if smoke else 512  # tokens per window (BOS excluded); <= trained context
    c.prefill_len = 16 if smoke else 64  # prompt prefilled at once (sinks are detected here)
    c.num_sequences = a["n"] or (4 if smoke else 64)
    c.batch = 4 if smoke else 16
    c.cache_dtype = "bfloat16"  # full-precision parts (bf16 baseline, residual, sinks)
    c.bits = (2,) if smoke else (8, 4, 2)  # every storage is one compile: smoke keeps few
    c.group = a["group"] or (8 if smoke else 32)
    c.residual = a["residual"] or (16 if smoke else 32)  # KIVI's R (its examples use 32)
    c.keep_sinks = a["sinks"]
    c.sink_modes = ("first", "outlier")  # Preserve-First-N, KVSink (hidden-state outliers)
    c.sink_layer = 1  # KVSink's early "emergence" layer: residual stream after this block
    c.heldout_fraction = 0.05
    c.max_bytes = 400_000 if smoke else 4_000_000  # of held-out text read
    return c
