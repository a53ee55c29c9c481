"""Config of the attention-sink analysis (``experiments/sinks.py``).

    python -m experiments.sinks --config=configs/sinks.py:smoke --workdir=runs/sinks_smoke
    python -m experiments.sinks --config=configs/sinks.py:default --workdir=runs/sinks
    python -m experiments.sinks --config=configs/sinks.py:committed --workdir=runs/sinks_repo
    python -m experiments.sinks --config=configs/sinks.py:default,n=50 \
        --config.checkpoints=softmax=runs/gpu/softmax/model,sig=runs/gpu/sigmoid/model \
        --workdir=runs/sinks_two

Variants:
  smoke      the committed Bigram-Backcopy model, 8 sequences (seconds on CPU);
  default    the eight GPU reference models under ``runs/gpu`` with Gu et al.'s protocol:
             100 held-out sequences of 64 tokens, ε = 0.3;
  committed  the three reference models committed under ``models/``, same protocol.
Args after the variant: n=<sequences>, t=<tokens per sequence incl. BOS>, eps=<float>.
``checkpoints`` is a comma-separated ``name=dir`` list, or a single checkpoint directory.
"""

import ml_collections

from configs.common import parse_arg

GPU_RUNS = ("softmax", "sinktoken", "sinklogit", "offbyone", "softpick", "sigmoid", "gated",
            "backcopy")
CHECKPOINTS = {
    "smoke": "backcopy=models/backcopy",
    "default": ",".join(f"{name}=runs/gpu/{name}/model" for name in GPU_RUNS),
    "committed": ",".join(f"{name}=models/{name}" for name in ("softmax", "sinktoken",
                                                               "backcopy")),
}
NUM_SEQUENCES = {"smoke": 8, "default": 100, "committed": 100}


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="default", n=0, t=64, eps=0.3)
    v = a["variant"]
    if v not in CHECKPOINTS:
        raise ValueError(f"unknown sinks config variant {v!r}; expected one of "
                         f"{sorted(CHECKPOINTS)}")
    c = ml_collections.ConfigDict()
    c.checkpoints = CHECKPOINTS[v]
    c.num_sequences = a["n"] or NUM_SEQUENCES[v]
    c.seq_len = a["t"]  # analysed tokens per sequence, BOS included (Gu et al.: T = 64)
    c.eps = a["eps"]  # sink threshold on the mean attention a key receives (Gu et al.: 0.3)
    c.seed = 0  # which held-out windows / fresh Bigram-Backcopy samples
    c.top_sinks = 5  # distributed sinks listed per variant
    c.top_sinks_min_queries = 16  # skip keys seen by fewer queries (late keys of local heads)
    c.top_sinks_min_count = 20  # list token ids seen at least this often
    c.heldout_fraction = 0.05  # must match training's split (configs/train.py)
    c.corpus_path = ml_collections.FieldReference(None, field_type=str)  # None = Python sources
    c.backcopy = ml_collections.ConfigDict(dict(num_triggers=3, seed=0))  # configs/train.py
    return c
