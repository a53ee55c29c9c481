"""Train a model: ``python -m experiments.train --config=configs/train.py:smoke --workdir=DIR``.

Writes ``DIR/ckpt`` (orbax, resumable), ``DIR/metrics.csv`` and, at the end, ``DIR/model``
(config.json + bf16 params.safetensors + tokenizer: the artefact other experiments load).
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from lcache.checkpoint import save_model
from lcache.data import BigramBackcopy, ByteTokenizer
from lcache.model import ModelConfig
from lcache.sources import (
    backcopy_heldout,
    backcopy_source,
    corpus_source,
    heldout_batches,
    load_corpus,
)
from lcache.train import TrainConfig, Trainer, warm_start

_CONFIG = config_flags.DEFINE_config_file("config", "configs/train.py:smoke")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory", required=True)


def build(c, workdir: str):
    """-> (trainer, source, eval_source, tokenizer, data description) from a config."""
    tc = TrainConfig(**c.train.to_dict())
    if c.task == "backcopy":
        task = BigramBackcopy(**c.backcopy.to_dict())
        cfg = ModelConfig(**{**c.model.to_dict(), "vocab_size": task.model_vocab_size})
        source = backcopy_source(task, tc.batch, tc.seq_len, tc.seed)
        eval_source = backcopy_heldout(task, tc.batch, tc.seq_len, tc.eval_batches)
        return Trainer(cfg, tc, workdir), source, eval_source, None, dict(task="backcopy")
    d = c.data
    corpus = load_corpus(d.path, d.tokenizer, d.bpe_vocab, d.max_bytes, d.heldout_fraction,
                         cache_dir=d.cache_dir if d.tokenizer == "bpe" else None)
    tok = corpus.tokenizer
    cfg = ModelConfig(**{**c.model.to_dict(), "vocab_size": tok.vocab_size})
    source = corpus_source(corpus, tc.batch, tc.seq_len, tc.seed, d.task_rows, d.tasks,
                           d.get("answer_weight", 1.0))
    eval_source = heldout_batches(corpus, tc.batch, tc.seq_len, tc.eval_batches)
    info = dict(task="corpus", path=d.path or "python sources", tokenizer=d.tokenizer,
                train_tokens=int(corpus.train.size), heldout_tokens=int(corpus.heldout.size))
    logging.info("corpus: %s", info)
    return Trainer(cfg, tc, workdir), source, eval_source, tok, info


def main(argv):
    del argv
    c, workdir = _CONFIG.value, _WORKDIR.value
    trainer, source, eval_source, tok, info = build(c, workdir)
    if c.get("init_from") and trainer.step == 0:  # a resumed run keeps its checkpoint
        fresh = warm_start(trainer.model, c.init_from)
        info = dict(info, init_from=c.init_from)
        logging.info("warm start from %s; new parameters: %s", c.init_from, fresh)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(c.to_json(indent=1))

    def progress(row):
        logging.info("step %d loss %.4f heldout %s tok/s %.0f mfu %s", row["step"], row["loss"],
                     row["heldout_loss"], row["tokens_per_s"], row["mfu"])

    rows = trainer.fit(source, eval_source, progress)
    last_eval = next((r for r in reversed(rows) if r["heldout_loss"] != ""), None)
    meta = dict(data=info, steps=trainer.step,
                tokens_seen=trainer.step * c.train.batch * c.train.seq_len,
                heldout_loss=None if last_eval is None else last_eval["heldout_loss"],
                train_config=c.train.to_dict())
    save_model(os.path.join(workdir, "model"), trainer.model, tok or ByteTokenizer(), meta)
    print(json.dumps(meta))


if __name__ == "__main__":
    app.run(main)
