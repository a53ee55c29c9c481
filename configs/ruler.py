"""The RULER-style suite under every registry policy: ``experiments/ruler.py``.

    python -m experiments.ruler --config=configs/ruler.py:smoke --workdir=runs/ruler_smoke
    python -m experiments.ruler --config=configs/ruler.py:gpu --workdir=runs/ruler
    python -m experiments.ruler --config=configs/ruler.py:gpu --config.resume --workdir=runs/ruler
    python -m experiments.ruler --config=configs/ruler.py:gpu,model=sinktoken --workdir=runs/r2

Variants: smoke (untrained 2-layer ``random`` model, context 600, 2 tasks, 3 policies, CPU,
about a minute), gpu (every registry policy x budgets 5/10/20/50% x every task x contexts
1024/2048 x 5 depths x 20 trials; one H100, about 5 minutes). Args after the variant:
model=<name under models/ or a checkpoint dir>, trials=<per cell>.

SnapKV-family hyper-parameters are translated from BPE tokens to our bytes at about 4 bytes per
token: KVCache-Factory's observation window 8 and pooling kernel 7 tokens become window 32 and
kernel 29 bytes; ``snapkv(kernel=7)`` (untranslated) is kept as one row to show the difference.
"""

import ml_collections

from configs.common import parse_arg
from configs.stream_ppl import model_dir
from lcache.data.ruler import TASKS

SNAP = "window=32,kernel=29"
POLICIES = (
    "dense", "window", "streaming_llm(sinks=4)", "h2o(recent=0.5)",
    f"snapkv({SNAP},pool=avg)", f"snapkv({SNAP},pool=max)", "snapkv(window=32,kernel=7,pool=max)",
    f"pyramidkv({SNAP},pool=max)", f"dynamickv({SNAP},pool=max)", "tova", "knorm", "random",
    "value(recent=0.5)", f"recompress({SNAP},pool=max,interval=16)",
    "dense@int4", "dense@int4+sinks4", "dense@int2", "dense@int2+sinks4",
)
VARIANTS = {
    "smoke": dict(contexts=(600,), budget_fracs=(0.2,), depths=(0.0, 1.0), trials=2,
                  tasks=("passkey", "multikey"), batch=4, threads=2,
                  policies=("dense", "streaming_llm(sinks=4)", f"snapkv({SNAP},pool=max)")),
    "gpu": dict(contexts=(1024, 2048), budget_fracs=(0.05, 0.1, 0.2, 0.5),
                depths=(0.0, 0.25, 0.5, 0.75, 1.0), trials=20, tasks=TASKS, batch=104,
                threads=16, policies=POLICIES),
}


def get_config(arg: str = "gpu") -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="gpu", model="", trials=0)
    v = a["variant"]
    if v not in VARIANTS:
        raise ValueError(f"unknown ruler variant {v!r}; expected one of {sorted(VARIANTS)}")
    c = ml_collections.ConfigDict(VARIANTS[v])
    c.model_dir = model_dir(a["model"] or ("random" if v == "smoke" else "softmax"))
    c.trials = a["trials"] or c.trials
    c.seed = 0
    c.probe_rows = 32  # DynamicKV's allocation probe
    c.resume = False  # True: keep the cells already in --workdir's ruler.csv, run the rest
    c.compute_dtype = "float32" if v == "smoke" else "bfloat16"
    c.fast_compile = v == "smoke"
    return c
