"""Quality against cache bytes per policy and storage: ``experiments/sweep.py``.

    python -m experiments.sweep --config=configs/sweep.py:smoke --workdir=runs/sweep_smoke
    python -m experiments.sweep --config=configs/sweep.py:reduced --workdir=runs/sweep
    python -m experiments.sweep --config=configs/sweep.py:default --workdir=runs/sweep

Variants: smoke (the untrained 2-layer ``random`` model, 2 short texts, 1 passkey, one budget,
two policies, < 1 min on CPU), reduced
(4 texts of 512 bytes, 6 passkeys at context 512, budgets 32/128), default (8 texts, 15
passkeys, budgets 32..256). Args after the variant: model=<name under models/ or a dir>.
"""

import ml_collections

from configs.common import check_variant, parse_arg
from configs.stream_ppl import model_dir

SNAP = "window=8,kernel=7,pool=max"  # the SnapKV family as KVCache-Factory runs it
POLICIES = ("dense", "streaming_llm", "h2o", f"snapkv({SNAP})", f"pyramidkv({SNAP})",  # specs
            f"dynamickv({SNAP})", "dense@int8+sinks4", "dense@int4+sinks4", "dense@int2+sinks4",
            f"snapkv({SNAP})@int4+sinks4")
VARIANTS = {
    "smoke": dict(policies=("dense@int4+sinks4", f"snapkv({SNAP})"), budgets=(32,),
                  num_texts=2, text_len=128, prefix=64, context_len=256, depths=(0.5,),
                  trials=1),
    "reduced": dict(policies=POLICIES, budgets=(32, 128), num_texts=4, text_len=512,
                    prefix=256, context_len=512, depths=(0.0, 0.5, 1.0), trials=2),
    "default": dict(policies=POLICIES, budgets=(32, 64, 128, 256), num_texts=8, text_len=512,
                    prefix=256, context_len=512, depths=(0.0, 0.25, 0.5, 0.75, 1.0), trials=3),
}


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="default", model="")
    v = a["variant"]
    check_variant("sweep", v, VARIANTS)
    c = ml_collections.ConfigDict(VARIANTS[v])
    c.model_dir = model_dir(a["model"] or ("random" if v == "smoke" else "softmax"))
    c.offset = 0  # first held-out token of the texts
    c.max_new_tokens = 12  # passkey generation
    c.seed = 0
    c.compute_dtype = "float32"
    c.fast_compile = v == "smoke"  # XLA skips most optimisations: compiling dominates
    return c
