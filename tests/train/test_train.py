"""Training: loss decreases, resume is bit-identical, export round-trips, CLI smoke run."""

import csv
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from lcache.checkpoint import flatten_params, load_model, save_model
from lcache.data import ByteTokenizer, TrainStream
from lcache.model import ModelConfig, Transformer
from lcache.train import TrainConfig, Trainer

CFG = ModelConfig(vocab_size=259, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=48)
TEXT = np.frombuffer(open(os.__file__, "rb").read(), np.uint8).astype(np.int32)  # real text


def _source(seed=0):
    stream = TrainStream(TEXT, 4, 32, 256, seed)
    return lambda step: (stream.batch_at(step), np.ones((4, 32), np.float32))


def _params(trainer):
    return flatten_params(nnx.state(trainer.model, nnx.Param))


def _tc(**kw):
    return TrainConfig(**(dict(steps=12, batch=4, seq_len=32, warmup=2, log_every=3,
                                eval_every=6, ckpt_every=6, lr=3e-3) | kw))


def test_resume_is_bit_identical(tmp_path):
    straight = Trainer(CFG, _tc(), str(tmp_path / "a"))
    straight.fit(_source())
    # stop after 7 steps (checkpoint at 5), then resume from step 5 in a fresh trainer
    part = Trainer(CFG, _tc(ckpt_every=5), str(tmp_path / "b"))
    source = _source()

    def failing(step):
        if step == 7:
            raise KeyboardInterrupt
        return source(step)

    with pytest.raises(KeyboardInterrupt):
        part.fit(failing)
    resumed = Trainer(CFG, _tc(ckpt_every=5), str(tmp_path / "b"))
    assert resumed.step == 5
    resumed.fit(_source())
    a, b = _params(straight), _params(resumed)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_loss_decreases_and_metrics_csv(tmp_path):
    trainer = Trainer(CFG, _tc(steps=30, lr=1e-2), str(tmp_path))
    rows = trainer.fit(_source(), lambda: [_source(1)(0)])
    assert rows[-1]["loss"] < rows[0]["loss"]
    with open(tmp_path / "metrics.csv") as f:
        logged = list(csv.DictReader(f))
    assert len(logged) == 10 and logged[-1]["heldout_loss"]


def test_export_round_trip(tmp_path):
    trainer = Trainer(CFG, _tc(steps=3), str(tmp_path / "w"))
    trainer.fit(_source())
    save_model(str(tmp_path / "m"), trainer.model, ByteTokenizer(), {"note": 1}, dtype=np.float32)
    model, tok, meta = load_model(str(tmp_path / "m"))
    toks = jax.numpy.asarray(TEXT[None, :20])
    np.testing.assert_allclose(model(toks), trainer.model(toks), atol=1e-6)
    assert tok.vocab_size == 259 and meta == {"note": 1}


def test_mismatched_checkpoint_and_file_workdir(tmp_path):
    trainer = Trainer(CFG, _tc(steps=3), str(tmp_path / "w"))
    save_model(str(tmp_path / "m"), trainer.model)
    with pytest.raises(ValueError, match="shape"):
        load_model(str(tmp_path / "m"), ffn_dim=64)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        Trainer(CFG, _tc(), str(tmp_path / "f"))
    with pytest.raises(ValueError, match="warmup"):
        TrainConfig(steps=5, warmup=5)


def test_cli_smoke(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    out = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config=configs/train.py:smoke,steps=6",
         "--config.train.warmup=2", "--config.train.log_every=3", "--config.train.eval_every=6",
         "--config.data.max_bytes=300000", f"--workdir={tmp_path}"],
        cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "metrics.csv").exists() and (tmp_path / "ckpt").is_dir()
    model, _, meta = load_model(str(tmp_path / "model"))
    assert meta["steps"] == 6 and model.cfg.dim == 64


@pytest.mark.parametrize("args, kv, ffn", [("", 2, 1024), (",answer=16,kv=4,ffn=960", 4, 960)])
def test_ref_config_shapes_fit_16_mib(args, kv, ffn):
    """The reference recipe and its shape overrides: a valid model under 16 MiB of bf16."""
    from configs.train import get_config
    c = get_config(f"ref,tasks=8,sinks=1{args}")
    cfg = ModelConfig(**c.model.to_dict())
    assert (cfg.num_kv_heads, cfg.ffn_dim) == (kv, ffn)
    assert c.data.answer_weight == (16.0 if args else 1.0)
    model = nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert 7e6 < n and 2 * n < 16 * 2**20
