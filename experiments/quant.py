"""Held-out perplexity through KIVI-quantized KV caches, with and without full-precision sinks.

    python -m experiments.quant --config=configs/quant.py:default --workdir=runs/quant

Storages: the bf16 cache, then KIVI int8/int4/int2 (``bits``, ``group``, ``residual``) alone,
with the first N tokens kept in bf16 (Preserve-First-N, "kivi+pfn") and with N tokens predicted
KVSink-style kept in bf16 ("kivi+kvsink"). Every held-out window (BOS + ``seq_len`` tokens of the
held-out stdlib files) is prefilled for ``prefill_len`` tokens, then decoded token by token
through a ``Dense`` cache behind the storage, as in generation. Perplexity counts the decoded
predictions only: prefill predictions attend in full precision, the same for every storage.

KVSink as implemented: a full-precision forward of the prompt; a token's sink score is its
largest |hidden| after block ``sink_layer``; the top N prompt tokens stay in bf16 in every layer.
The paper reads fixed, model-specific outlier channels and protects the layers after that block.

Writes to ``--workdir``: ``quant.csv`` (policy,storage,bits,keep_sinks,bytes_per_token,ppl;
policy = the registry spec, e.g. ``dense@int2(group=8,residual=16)+kvsink4``; bits = 16 for
bf16) and ``config.json``.
"""

from __future__ import annotations

import csv
import math
import os

import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from lcache.cache import Dense, Quantized, registry
from lcache.cache.bytes import cache_bytes_per_token
from lcache.checkpoint import load_model
from lcache.data import ByteTokenizer, eval_batches, list_files, load_tokens, split_files
from lcache.eval import Engine, ProgramCache
from lcache.model import ModelConfig, Transformer

_CONFIG = config_flags.DEFINE_config_file("config", "configs/quant.py:smoke")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory", required=True)
COLUMNS = ("policy", "storage", "bits", "keep_sinks", "bytes_per_token", "ppl")


def load(c):
    """-> ``(model, tokenizer)``; a random model only for smoke runs without a checkpoint."""
    if c.checkpoint:
        model, tok, _ = load_model(c.checkpoint)
        return model, tok or ByteTokenizer()
    if c.variant != "smoke":
        raise ValueError("quant needs --config.checkpoint=<model dir> outside smoke runs")
    logging.warning("%s\nNO CHECKPOINT: smoke run of an UNTRAINED, randomly initialised model."
                    " Its perplexities test the plumbing and mean nothing.\n%s", "!" * 78,
                    "!" * 78)
    return Transformer(ModelConfig(**c.model), nnx.Rngs(c.seed)), ByteTokenizer()


def heldout_windows(c, tok) -> np.ndarray:
    """``[num_sequences, seq_len + 1]`` int32: BOS, then consecutive held-out tokens."""
    _, heldout = split_files(list_files(), c.heldout_fraction)
    tokens = load_tokens(heldout, tok, max_bytes=c.max_bytes)
    windows = next(eval_batches(tokens, c.num_sequences, c.seq_len, tok.bos_id, max_batches=1))
    if len(windows) < c.num_sequences:
        raise ValueError(f"only {len(windows)} held-out windows of {c.seq_len} tokens in "
                         f"max_bytes={c.max_bytes}; raise it or lower num_sequences")
    return windows


def storages(c, capacity: int):
    """``[(storage, bits, keep_sinks, policy)]`` in the order of the csv."""
    dense = Dense(capacity)
    out = [("bf16", 16, 0, dense)]
    for bits in c.bits:
        out.append(("kivi", bits, 0, Quantized(dense, bits, c.group, c.residual, 0)))
        for mode in c.sink_modes:
            detect = {"first": None, "outlier": "outlier"}[mode]
            name = "kivi+pfn" if detect is None else "kivi+kvsink"
            out.append((name, bits, c.keep_sinks,
                        Quantized(dense, bits, c.group, c.residual, c.keep_sinks, detect)))
    return out


def evaluate(c, model, windows) -> list[dict]:
    cfg = model.cfg
    if not 0 < c.prefill_len < c.seq_len:
        raise ValueError(f"need 0 < prefill_len={c.prefill_len} < seq_len={c.seq_len}")
    if not 0 <= c.sink_layer <= cfg.num_layers:
        raise ValueError(f"sink_layer={c.sink_layer} outside [0, {cfg.num_layers}]")
    if c.seq_len > cfg.max_seq_len:
        logging.warning("seq_len=%d exceeds the trained context %d", c.seq_len, cfg.max_seq_len)
    engine = Engine.create(model, ProgramCache(), cache_dtype=c.cache_dtype,
                           sink_layer=c.sink_layer)
    prompts, decoded = windows[:, :c.prefill_len], windows[:, c.prefill_len:]
    rows = []
    for storage, bits, sinks, policy in storages(c, c.seq_len + cfg.num_sink_tokens):
        # the first continuation token is predicted by the prefill, in full precision: not counted
        nll = sum(float(x[1:].sum()) for x in engine.continuation_nll(prompts, decoded, policy,
                                                                       batch=c.batch))
        ppl = math.exp(nll / (len(windows) * (c.seq_len - c.prefill_len)))
        row = dict(policy=registry.spec(policy), storage=storage, bits=bits, keep_sinks=sinks,
                   bytes_per_token=cache_bytes_per_token(cfg, policy,
                                                         dtype=jnp.dtype(c.cache_dtype)),
                   ppl=ppl)
        logging.info("%s", row)
        rows.append(row)
    logging.info("where the time went:\n%s", engine.report())
    return rows


def main(argv):
    del argv
    c, workdir = _CONFIG.value, _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(c.to_json(indent=1))
    model, tok = load(c)
    rows = evaluate(c, model, heldout_windows(c, tok))
    with open(os.path.join(workdir, "quant.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    for r in rows:
        print(f"{r['storage']:12s} {r['bits']:3d} bits  sinks {r['keep_sinks']}  "
              f"{r['bytes_per_token']:8.1f} B/token  ppl {r['ppl']:.4f}")


if __name__ == "__main__":
    app.run(main)
