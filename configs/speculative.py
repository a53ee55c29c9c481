"""Self-speculative decoding with register tokens: ``experiments/speculative.py``.

    python -m experiments.speculative --config=configs/speculative.py:smoke --workdir=runs/spec0
    python -m experiments.speculative --config=configs/speculative.py:gpu --workdir=runs/spec

Variants: smoke (the untrained ``random-registers`` model on the CPU: random drafts, low
acceptance, seconds); gpu (the v2 reference model fine-tuned with register depth D = 2 and
D = 4, draft lengths up to D - 1, batch 1 and 8, dense / StreamingLLM / SnapKV caches, 1024-token
prompts of held-out code, 128 new tokens). Train the gpu models first (one H100, minutes each):

    python -m experiments.train --config=configs/train.py:ref,tasks=8,registers=2,every=4,aux=0.3,\
init=models/softmax,steps=600,lr=5e-4,time=300 --workdir=runs/ref_registers2
    python -m experiments.train --config=configs/train.py:ref,tasks=8,registers=4,every=4,aux=0.3,\
init=models/softmax,steps=600,lr=5e-4,time=300 --workdir=runs/ref_registers4

Args after the variant: models=<comma-separated name=dir (or a RANDOM_MODELS name)>,
temperature=<0 = greedy>, new=<new tokens per row>, repeats=<timed runs, median reported>.
"""

import ml_collections

from configs.common import check_variant, parse_arg

VARIANTS = {
    "smoke": dict(models="random=random-registers", draft_lens=(1, 2), batches=(1, 2),
                  policies=("dense", "streaming_llm(sinks=2)", "snapkv(window=4)"),
                  cache_size=32, prompt_len=48, max_new_tokens=16, repeats=2),
    "gpu": dict(models="registers2=runs/ref_registers2/model,"
                       "registers4=runs/ref_registers4/model",
                draft_lens=(1, 2, 3), batches=(1, 8),
                policies=("dense", "streaming_llm(sinks=4)", "snapkv(window=32)"),
                cache_size=256, prompt_len=1024, max_new_tokens=128, repeats=5),
}


def get_config(arg: str = "smoke") -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="smoke", models="", temperature=0.0, new=0, repeats=0)
    v = a["variant"]
    check_variant("speculative", v, VARIANTS)
    c = ml_collections.ConfigDict(VARIANTS[v])
    c.models = a["models"] or c.models
    c.max_new_tokens = a["new"] or c.max_new_tokens
    c.repeats = a["repeats"] or c.repeats
    c.temperature = a["temperature"]
    c.offset = 0  # first held-out token of the prompts
    c.compute_dtype = "float32" if v == "smoke" else "bfloat16"
    c.fast_compile = v == "smoke"  # XLA skips most optimisations: compiling dominates
    return c
