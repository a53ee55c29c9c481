"""EvolKV-style search of per-layer budgets with CMA-ES: ``experiments/evolve_budgets.py``.

    python -m experiments.evolve_budgets --config=configs/evolve_budgets.py:smoke \
        --workdir=runs/evolve_smoke
    python -m experiments.evolve_budgets --config=configs/evolve_budgets.py:small \
        --workdir=runs/evolve
    python -m experiments.evolve_budgets --config=configs/evolve_budgets.py:default \
        --workdir=runs/evolve

Variants: smoke (the untrained 2-layer ``random`` model, one group, population 2, one
generation, a tiny task set, < 1 min on CPU),
small (2 groups of 3 layers, population 4, 2 generations), default (3 groups, population 8,
6 generations, larger task sets). Args after the variant: model=<name or dir>,
budget=<average tokens per layer>.
"""

import ml_collections

from configs.common import check_variant, parse_arg
from configs.stream_ppl import model_dir

TASKS = {  # texts: held-out windows (prompt = first `prefix` tokens); passkeys at context_len
    "smoke": dict(num_texts=1, text_len=96, prefix=64, context_len=256, depths=(0.5,), trials=1),
    "small": dict(num_texts=4, text_len=512, prefix=448, context_len=512, depths=(0.0, 0.5, 1.0),
                  trials=2),
    "default": dict(num_texts=8, text_len=512, prefix=384, context_len=512,
                    depths=(0.0, 0.25, 0.5, 0.75, 1.0), trials=2),
}
SEARCH = {
    "smoke": dict(groups=1, popsize=2, generations=1, baselines=("uniform",)),
    "small": dict(groups=2, popsize=4, generations=2,
                  baselines=("uniform", "pyramid", "dynamic")),
    "default": dict(groups=3, popsize=8, generations=6,
                    baselines=("uniform", "pyramid", "dynamic")),
}


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="default", model="", budget=0)
    v = a["variant"]
    check_variant("evolve_budgets", v, TASKS)
    c = ml_collections.ConfigDict(SEARCH[v])
    c.model_dir = model_dir(a["model"] or ("random" if v == "smoke" else "softmax"))
    c.task = ml_collections.ConfigDict(TASKS[v])
    c.budget = a["budget"] or (32 if v == "smoke" else 64)  # average tokens per layer
    c.min_budget = 16  # per layer, observation window included
    c.quantum = 8  # budgets move in steps of this many tokens (fewer distinct compilations)
    c.sigma = 0.5  # CMA-ES initial step size on the softmax logits
    c.train_offset = 0  # held-out text of the search set; the test set starts after it
    c.seed = 0
    c.max_new_tokens = 12  # passkey generation
    c.snap = "window=8,kernel=7,pool=max"  # the per-layer snapkv spec's arguments (KVCache-Factory)
    c.compute_dtype = "float32"
    c.fast_compile = v == "smoke"  # XLA skips most optimisations: compiling dominates
    return c
