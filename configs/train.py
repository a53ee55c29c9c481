"""Train a decoder LM on the offline Python-source corpus (or any text via data.path).

    python -m experiments.train --config=configs/train.py:smoke --workdir=runs/smoke
    python -m experiments.train --config=configs/train.py:small --workdir=runs/small
    python -m experiments.train --config=configs/train.py:small,attn=sigmoid --workdir=runs/sig
    python -m experiments.train --config=configs/train.py:backcopy --workdir=runs/backcopy
    python -m experiments.train --config=configs/train.py:ref,tasks=8,time=500 --workdir=runs/ref
    python -m experiments.train --config=configs/train.py:ref,tasks=8,sinks=1,time=500 \
        --workdir=runs/ref_sinktoken
    python -m experiments.train --config=configs/train.py:ref,tasks=8,registers=4,every=4,aux=0.3,\
init=models/softmax,steps=600,lr=5e-4,time=300 --workdir=runs/ref_registers4

Variants: smoke (CPU, < 1 min), tiny (CPU, minutes), small (the GPU reference model),
medium (a 100M-class shape used to measure GPU training throughput / MFU), ref (the v2
reference models: 7.9 M parameters, 8 layers, GQA 4/2, context 2048, lr 2e-3, fits 16 MiB in
bf16; RESULTS.md has the recipe and what it reached),
backcopy (Guo et al.'s Bigram-Backcopy task: strong sinks in minutes).
Args after the variant: attn=<variant>, sinks=<learnable sink tokens>, gated=<bool>, wd=<float>,
steps=<int>, mla=<bool>, tasks=<RULER-style task rows per batch (lcache.data.ruler)>,
time=<seconds budget>, seed=<int>, registers=<register depth D: MuToR-style register tokens,
lcache/model/registers.py>, every=<one register after every k-th token>, mtp=<DeepSeek-style MTP
depth>, aux=<lambda of the register / MTP loss>, init=<a saved model to fine-tune from
(lcache.train.warm_start)>, lr=<peak learning rate>, answer=<loss weight of the task rows'
answer tokens>, kv=<KV heads>, ffn=<SwiGLU width> (shape overrides). Anything else:
--config.path.to.key=value.
"""

import ml_collections

from configs.common import check_variant, parse_arg
from lcache.data.ruler import TASKS

MODELS = {
    "smoke": dict(dim=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=160),
    "tiny": dict(dim=128, num_layers=4, num_heads=4, num_kv_heads=2, ffn_dim=352),
    "small": dict(dim=192, num_layers=6, num_heads=6, num_kv_heads=3, ffn_dim=512),
    "medium": dict(dim=1024, num_layers=8, num_heads=16, num_kv_heads=8, ffn_dim=2816),
    "ref": dict(dim=256, num_layers=8, num_heads=4, num_kv_heads=2, ffn_dim=1024),
    "backcopy": dict(dim=128, num_layers=3, num_heads=4, num_kv_heads=4, ffn_dim=352),
}
TRAIN = {
    "smoke": dict(steps=30, batch=8, seq_len=128, warmup=5, log_every=10, eval_every=30,
                  eval_batches=2, ckpt_every=30, lr=3e-3),
    "tiny": dict(steps=600, batch=16, seq_len=256, warmup=50, log_every=50, eval_every=300,
                 eval_batches=4, ckpt_every=300, lr=3e-3),
    "small": dict(steps=6000, batch=128, seq_len=512, warmup=300, log_every=100,
                  eval_every=1000, eval_batches=16, ckpt_every=1000, lr=2e-3),
    "medium": dict(steps=2000, batch=32, seq_len=1024, warmup=100, log_every=20,
                   eval_every=1000, eval_batches=4, ckpt_every=10000, lr=1e-3),
    "ref": dict(steps=3300, batch=32, seq_len=2048, warmup=200, log_every=100,
                eval_every=1200, eval_batches=8, ckpt_every=1200, lr=2e-3),
    "backcopy": dict(steps=3000, batch=64, seq_len=128, warmup=100, log_every=100,
                     eval_every=1000, eval_batches=4, ckpt_every=1000, lr=1e-3),
}


def get_config(arg: str = "smoke") -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="smoke", attn="softmax", sinks=0, gated=False, wd=0.5, steps=0,
                  tasks=0, mla=False, seed=0, time=0.0, registers=0, every=1, mtp=0, aux=0.3,
                  init="", lr=0.0, answer=1.0, kv=0, ffn=0)
    v = a["variant"]
    check_variant("train", v, MODELS)
    c = ml_collections.ConfigDict()
    c.task = "backcopy" if v == "backcopy" else "corpus"
    c.model = ml_collections.ConfigDict(dict(
        vocab_size=259, attention=a["attn"], num_sink_tokens=a["sinks"],
        gated_attention=a["gated"], register_depth=a["registers"], mtp_depth=a["mtp"],
        compute_dtype="float32" if v in ("smoke", "tiny")
        else "bfloat16", max_seq_len=TRAIN[v]["seq_len"], **MODELS[v]))
    for arg, field in (("kv", "num_kv_heads"), ("ffn", "ffn_dim")):
        if a[arg]:
            c.model[field] = a[arg]
    if a["mla"]:
        c.model.update(mla_kv_lora_rank=64, mla_q_lora_rank=0, mla_qk_nope_dim=32,
                       mla_qk_rope_dim=16, mla_v_dim=32)
    c.train = ml_collections.ConfigDict(dict(
        weight_decay=a["wd"], seed=a["seed"], time_budget_s=a["time"], register_every=a["every"],
        aux_weight=a["aux"] if a["registers"] or a["mtp"] else 0.0, **TRAIN[v]))
    if a["lr"]:
        c.train.lr = a["lr"]
    c.init_from = a["init"]  # a saved model directory to fine-tune from ('' = from scratch)
    if a["steps"]:
        c.train.steps = a["steps"]
    c.data = ml_collections.ConfigDict(dict(
        path=None, tokenizer="byte", bpe_vocab=1024, heldout_fraction=0.05,
        cache_dir="runs/.token_cache", task_rows=a["tasks"], tasks=TASKS,
        answer_weight=a["answer"]))
    c.data.path = ml_collections.FieldReference(None, field_type=str)
    c.data.max_bytes = ml_collections.FieldReference(
        {"smoke": 2_000_000, "tiny": 20_000_000}.get(v), field_type=int)
    c.backcopy = ml_collections.ConfigDict(dict(vocab_size=64, num_triggers=3, seed=0))
    return c
