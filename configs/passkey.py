"""Passkey retrieval over depth x context length x budget: ``experiments/passkey.py``.

    python -m experiments.passkey --config=configs/passkey.py:smoke --workdir=runs/passkey_smoke
    python -m experiments.passkey --config=configs/passkey.py:reduced --workdir=runs/passkey
    python -m experiments.passkey --config=configs/passkey.py:default --workdir=runs/passkey
    python -m experiments.passkey --config=configs/passkey.py:reduced,model=sinktoken \
        --workdir=runs/passkey_sinktoken

Variants: smoke (the untrained 2-layer ``random`` model, context 256, one budget, 2 depths,
< 1 min on CPU), reduced (contexts 256/512, budgets 64/128, 3 depths, 4 keys per cell, no int2
or quantized SnapKV), default (contexts 256..2048, budgets 64/128/256, 5 depths, 10 keys per
cell, every policy). Args after the variant: model=<name under models/ or a
checkpoint dir>, trials=<keys per cell>.
"""

import ml_collections

from configs.common import check_variant, parse_arg
from configs.stream_ppl import model_dir

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
SNAP = "window=8,kernel=7,pool=max"  # the SnapKV family as KVCache-Factory runs it
# policy specs (lcache.cache.registry)
ALL_POLICIES = ("dense", "streaming_llm", "h2o", f"snapkv({SNAP})", f"pyramidkv({SNAP})",
                f"dynamickv({SNAP})", "dense@int4+sinks4", "dense@int2+sinks4",
                f"snapkv({SNAP})@int4+sinks4")
REDUCED_POLICIES = ("dense", "streaming_llm", "h2o", f"snapkv({SNAP})", f"pyramidkv({SNAP})",
                    f"dynamickv({SNAP})", "dense@int4+sinks4")
# check_context: the full-cache check, at the training context (512) except in the smoke test
VARIANTS = {
    "smoke": dict(contexts=(256,), budgets=(64,), depths=(0.0, 1.0), trials=2, check_context=256,
                  policies=("streaming_llm", f"dynamickv({SNAP})")),
    "reduced": dict(contexts=(256, 512), budgets=(64, 128), depths=(0.0, 0.5, 1.0), trials=4,
                    check_context=512, policies=REDUCED_POLICIES),
    "default": dict(contexts=(256, 512, 1024, 2048), budgets=(64, 128, 256),
                    depths=DEPTHS, trials=10, check_context=512),
}


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="default", model="", trials=0)
    v = a["variant"]
    check_variant("passkey", v, VARIANTS)
    c = ml_collections.ConfigDict({"policies": ALL_POLICIES, **VARIANTS[v]})
    c.model_dir = model_dir(a["model"] or ("random" if v == "smoke" else "softmax"))
    c.trials = a["trials"] or c.trials
    c.max_new_tokens = 12  # " 50000." is 7 bytes; score = the first integer generated
    c.seed = 0
    c.batch = 0  # prompts per micro-batch (0: a whole cell, depths x trials, at once)
    c.threads = 8  # concurrent compilations before the grid runs
    c.compute_dtype = "float32"
    c.fast_compile = v == "smoke"  # XLA skips most optimisations: compiling dominates
    return c
