"""Training with register tokens (MuToR-style) and DeepSeek-style MTP modules through the one
trainer: the auxiliary loss trains its parameters, held-out loss stays the next-token loss,
saved models round-trip, bad objectives raise."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lcache.checkpoint import flatten_params, load_model, save_model
from lcache.data import ByteTokenizer, TrainStream
from lcache.model import ModelConfig
from lcache.objective import Objective
from lcache.train import TrainConfig, Trainer, loss_fn

CFG = ModelConfig(vocab_size=259, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=48)
TEXT = np.frombuffer(open(os.__file__, "rb").read(), np.uint8).astype(np.int32)


def _source(step):
    return TrainStream(TEXT, 4, 32, 256, 0).batch_at(step), np.ones((4, 32), np.float32)


def _tc(**kw):
    return TrainConfig(**(dict(steps=8, batch=4, seq_len=32, warmup=1, log_every=4,
                                eval_every=8, ckpt_every=8, lr=1e-2, aux_weight=0.5) | kw))


@pytest.mark.parametrize("extra,name", [(dict(register_depth=3), "register_embed"),
                                        (dict(mtp_depth=2), "mtp")])
def test_auxiliary_parameters_train_and_round_trip(tmp_path, extra, name):
    trainer = Trainer(CFG.replace(**extra), _tc(register_every=2), str(tmp_path))
    before = {k: np.array(v) for k, v in flatten_params(nnx.state(trainer.model, nnx.Param))
              .items() if name in k}
    rows = trainer.fit(_source, lambda: [_source(99)])
    assert before and all(np.isfinite(r["loss"]) for r in rows)
    after = flatten_params(nnx.state(trainer.model, nnx.Param))
    assert all(not np.allclose(before[k], after[k]) for k in before)
    tokens, weights = map(jnp.asarray, _source(99))
    ntp, aux = trainer.objective.losses(trainer.model, tokens, weights)
    assert float(aux) > 0
    np.testing.assert_allclose(rows[-1]["heldout_loss"], float(ntp), rtol=1e-5)  # NTP only
    save_model(str(tmp_path / "model"), trainer.model, ByteTokenizer(), {})
    loaded, _, _ = load_model(str(tmp_path / "model"), compute_dtype="float32")
    assert getattr(loaded.cfg, next(iter(extra))) == next(iter(extra.values()))


def test_plain_objective_is_the_next_token_loss():
    from lcache.model import Transformer
    model = Transformer(CFG, nnx.Rngs(0))
    tokens, weights = map(jnp.asarray, _source(0))
    np.testing.assert_allclose(Objective(aux_weight=1.0)(model, tokens, weights),
                               loss_fn(model, tokens, weights), rtol=1e-6)


def test_bad_objective_raises():
    with pytest.raises(ValueError, match="aux_weight >= 0"):
        Objective(aux_weight=-1.0)
    with pytest.raises(ValueError, match="register_every >= 1"):
        Objective(register_every=0)


def test_warm_start_copies_the_base_model_and_keeps_new_registers(tmp_path):
    from lcache.model import Transformer
    from lcache.train import warm_start
    base = Transformer(CFG, nnx.Rngs(7))
    save_model(str(tmp_path / "base"), base, ByteTokenizer(), {}, dtype=jnp.float32)
    model = Transformer(CFG.replace(register_depth=2), nnx.Rngs(8))
    assert warm_start(model, str(tmp_path / "base")) == ["register_embed"]
    ours = flatten_params(nnx.state(model, nnx.Param))
    for name, value in flatten_params(nnx.state(base, nnx.Param)).items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)
    with pytest.raises(ValueError, match="configs differ"):
        warm_start(Transformer(CFG.replace(ffn_dim=64), nnx.Rngs(0)), str(tmp_path / "base"))


def test_train_config_args():
    from configs.train import get_config
    c = get_config("smoke,registers=3,every=2,aux=0.5,init=models/softmax,lr=1e-3")
    assert (c.model.register_depth, c.train.register_every, c.train.aux_weight) == (3, 2, 0.5)
    assert (c.init_from, c.train.lr) == ("models/softmax", 1e-3)
    assert get_config("smoke,mtp=2").model.mtp_depth == 2
    assert get_config("smoke").train.aux_weight == 0.0  # no registers, no auxiliary loss
