"""The RULER-style suite under every registry policy: ``experiments/ruler.py``.

    python -m experiments.ruler --config=configs/ruler.py:smoke --workdir=runs/ruler_smoke
    python -m experiments.ruler --config=configs/ruler.py:gpu --workdir=runs/ruler
    python -m experiments.ruler --config=configs/ruler.py:gpu --config.resume --workdir=runs/ruler
    python -m experiments.ruler --config=configs/ruler.py:gpu,model=sinktoken --workdir=runs/r2
    python -m experiments.ruler --config=configs/ruler.py:headwise --workdir=runs/headwise
    python -m experiments.ruler --config=configs/ruler.py:reuse --workdir=runs/reuse
    python -m experiments.ruler --config=configs/ruler.py:reuse,split=false --workdir=runs/reuse0

Variants: smoke (untrained 2-layer ``random`` model, context 600, 2 tasks, 3 policies, CPU,
about a minute), gpu (every registry policy x budgets 5/10/20/50% x every task x contexts
1024/2048 x 5 depths x 20 trials; one H100, about 5 minutes), headwise (every head-wise
registry policy next to the uniform streaming_llm and snapkv at budgets 10/20% and dense x
every task x contexts 1024/2048 x 5 depths x 12 trials, 312 prompts = 3 batches of 104 per
cell: accuracy vs the bytes each head keeps; one H100, about 5 minutes, most of it compiling
the 34 programs), reuse (questions after
compression: the context is prefilled and compressed before its question arrives, as when one
compressed context serves several questions; query-aware SnapKV/AdaKV against query-agnostic
ExpectedAttention, as published and with its scores pooled over the translated kernel of 29
bytes, and the uniform baselines at 20% of 1024 bytes, passkey and multi-key, 5 depths x 8
trials; CPU, ~5 minutes on 2 cores). Args after the variant: model=<name under models/ or a
checkpoint dir>, trials=<per cell>, split=<bool: questions after compression; the CSV does not
record it, so give each setting its own workdir>.

Head scores (duo, headkv, razor): ``gates`` is a directory of ``experiments.head_gates``
output for the model (e.g. ``--config.gates=runs/gates`` with ``duo_gates.json`` from its
optimisation: ``--config.gate_files.duo=duo_gates.json``); left empty, the run computes the
cheap calibration proxies first (``head_gates``: DuoAttention's proxy gates, also HeadKV's
scores, and RazorAttention's retrieval heads from 32 held-out texts, no optimisation) into
``<workdir>/gates``. A gate file of another model shape is refused before any cell runs.

SnapKV-family hyper-parameters are translated from BPE tokens to our bytes at about 4 bytes per
token: KVCache-Factory's observation window 8 and pooling kernel 7 tokens become window 32 and
kernel 29 bytes; ``snapkv(kernel=7)`` (untranslated) is kept as one row to show the difference.
"""

import ml_collections

from configs import head_gates
from configs.common import check_variant, parse_arg
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
HEADWISE = (  # costliest to compile first (precompile starts them first): HeadKV's 4 groups
    # per layer compile ~15x a SnapKV program on CPU, duo / razor (2 groups per layer) ~4x
    f"headkv({SNAP},pool=max)", "razor", "duo", f"adakv({SNAP},pool=max)",
    "expected_attention(alpha=0.2)", "expected_attention", "compaction",
    f"snapkv({SNAP},pool=max)", "streaming_llm(sinks=4)", "dense",
)
GATE_FILES = dict(duo="duo_proxy.json", headkv="duo_proxy.json", razor="razor.json")
VARIANTS = {
    "smoke": dict(contexts=(600,), budget_fracs=(0.2,), depths=(0.0, 1.0), trials=2,
                  tasks=("passkey", "multikey"), batch=4, threads=2,
                  policies=("dense", "streaming_llm(sinks=4)", f"snapkv({SNAP},pool=max)")),
    "gpu": dict(contexts=(1024, 2048), budget_fracs=(0.05, 0.1, 0.2, 0.5),
                depths=(0.0, 0.25, 0.5, 0.75, 1.0), trials=20, tasks=TASKS, batch=104,
                threads=16, policies=POLICIES),
    "headwise": dict(contexts=(1024, 2048), budget_fracs=(0.1, 0.2),
                     depths=(0.0, 0.25, 0.5, 0.75, 1.0), trials=12, tasks=TASKS, batch=104,
                     threads=16, policies=HEADWISE),
    "reuse": dict(contexts=(1024,), budget_fracs=(0.2,), depths=(0.0, 0.25, 0.5, 0.75, 1.0),
                  trials=8, tasks=("passkey", "multikey"), batch=40, threads=2,
                  question_after_compression=True,
                  policies=("dense", f"snapkv({SNAP},pool=max)", f"adakv({SNAP},pool=max)",
                            "expected_attention", "expected_attention(kernel=29)",
                            "streaming_llm(sinks=4)", "h2o(recent=0.5)")),
}
SPLIT = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def get_config(arg: str = "gpu") -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="gpu", model="", trials=0, split="")
    v = a["variant"]
    check_variant("ruler", v, VARIANTS)
    if a["split"] and a["split"].lower() not in SPLIT:
        raise ValueError(f"config arg split={a['split']!r} is not a bool; use one of "
                         f"{sorted(SPLIT)}")
    c = ml_collections.ConfigDict({"question_after_compression": False, **VARIANTS[v]})
    if a["split"]:
        c.question_after_compression = SPLIT[a["split"].lower()]
    c.model_dir = model_dir(a["model"] or ("random" if v == "smoke" else "softmax"))
    c.trials = a["trials"] or c.trials
    c.seed = 0
    c.probe_rows = 32  # DynamicKV's allocation probe
    c.resume = False  # True: keep the cells already in --workdir's ruler.csv, run the rest
    c.compute_dtype = "float32" if v in ("smoke", "reuse") else "bfloat16"  # CPU: float32
    c.fast_compile = v == "smoke"
    c.gates = ""  # experiments.head_gates output for this model; "": proxies at run start
    c.gate_files = dict(GATE_FILES)  # policy name -> its file in gates
    c.head_gates = head_gates.get_config("default,steps=0")  # the proxies' config
    c.head_gates.model = c.get_ref("model_dir")
    return c
