"""Config of the per-model head scores (``experiments/head_gates.py``) the head-wise specs read.

    python -m experiments.head_gates --config=configs/head_gates.py:smoke --workdir=runs/gates
    python -m experiments.head_gates \
        --config=configs/head_gates.py:default,model=runs/gpu/softmax/model \
        --workdir=runs/gpu/softmax/model

Variants:
  smoke    the committed softmax model, 2 held-out texts of 64 tokens, no optimisation (CPU,
           seconds);
  default  32 held-out texts of 512 tokens for the proxies; DuoAttention's optimisation on
           passkey prompts (2000 steps, sink 16 + recent 64, scaled to our models' contexts).
Args after the variant: model=<checkpoint dir>, n=<texts>, t=<tokens per text>,
steps=<optimisation steps, 0: proxy only>.
"""

import ml_collections

from configs.common import parse_arg

DEFAULTS = {"smoke": dict(n=2, t=64, steps=0), "default": dict(n=32, t=512, steps=2000)}


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="default", model="models/softmax", n=0, t=0, steps=-1)
    v = a["variant"]
    if v not in DEFAULTS:
        raise ValueError(f"unknown head_gates config variant {v!r}; expected one of "
                         f"{sorted(DEFAULTS)}")
    d = DEFAULTS[v]
    c = ml_collections.ConfigDict()
    c.model = a["model"]
    c.texts = a["n"] or d["n"]
    c.tokens = a["t"] or d["t"]
    c.q_len = 500
    c.razor_period, c.razor_repeats = 64, 4
    c.steps = d["steps"] if a["steps"] < 0 else a["steps"]
    c.sink, c.recent, c.lr, c.l1 = 16, 64, 0.02, 0.05
    return c
