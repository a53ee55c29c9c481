"""Why needle answers fail: ``experiments/ruler_errors.py``.

    python -m experiments.ruler_errors --config=configs/ruler_errors.py:smoke --workdir=runs/re0
    python -m experiments.ruler_errors --config=configs/ruler_errors.py --workdir=runs/ruler_errors

Variants: smoke (untrained 2-layer ``random`` model, context 600, seconds on CPU), default
(``models/softmax``, multi-key needles at 1024 bytes, 5 depths x 8 trials, the full cache and
three policies at 5% and 20%: a few minutes on 2 CPU cores). Args after the variant:
model=<name under models/ or a checkpoint dir>, trials=<per depth>.
"""

import ml_collections

from configs.common import check_variant, parse_arg
from configs.ruler import SNAP
from configs.stream_ppl import model_dir

VARIANTS = {
    "smoke": dict(contexts=(600,), budget_fracs=(0.2,), depths=(0.0, 1.0), trials=2, batch=4,
                  policies=("dense", f"snapkv({SNAP},pool=max)")),
    "default": dict(contexts=(1024,), budget_fracs=(0.05, 0.2), depths=(0.0, 0.25, 0.5, 0.75, 1.0),
                    trials=8, batch=40,
                    policies=("dense", f"snapkv({SNAP},pool=max)", "streaming_llm(sinks=4)",
                              "h2o(recent=0.5)")),
}


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="default", model="", trials=0)
    v = a["variant"]
    check_variant("ruler_errors", v, VARIANTS)
    c = ml_collections.ConfigDict(VARIANTS[v])
    c.model_dir = model_dir(a["model"] or ("random" if v == "smoke" else "softmax"))
    c.trials = a["trials"] or c.trials
    c.tasks = ("multikey",)  # the task whose prompts hold distractor needles
    c.seed = 0
    c.probe_rows = 32  # DynamicKV's allocation probe, if listed
    c.compute_dtype = "float32"
    c.fast_compile = v == "smoke"
    return c
