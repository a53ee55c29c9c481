"""Training loop: optax AdamW (warmup-cosine, clipping), orbax checkpoints, CSV metrics.

Batches come from a ``BatchSource``: a pure function of the step, so a run resumed from a
checkpoint at step ``s`` sees exactly the batches it would have seen (bit-identical on CPU).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from lcache.checkpoint import flatten_params, load_model
from lcache.model import ModelConfig, Transformer
from lcache.objective import Objective, weighted_ce

# tokens [B, T+1] int32 and loss weights [B, T] float32 for the batch of a step
BatchSource = Callable[[int], tuple[np.ndarray, np.ndarray]]

# Dense bf16 peak FLOP/s by device kind, for model-FLOPs utilisation.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12,
              "TPU v5e": 197e12, "TPU v5p": 459e12}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch: int = 32
    seq_len: int = 512
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    b2: float = 0.95
    clip: float = 1.0
    seed: int = 0
    log_every: int = 50
    eval_every: int = 500
    eval_batches: int = 8
    ckpt_every: int = 500
    time_budget_s: float = 0.0  # > 0: stop (and checkpoint) after this many seconds
    aux_weight: float = 0.0  # lambda of the register / MTP loss (lcache.objective)
    register_every: int = 1  # one register token after every k-th token

    def __post_init__(self):
        for name in ("steps", "batch", "seq_len", "log_every", "eval_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.clip <= 0:
            raise ValueError(f"bad optimiser settings: lr={self.lr}, "
                             f"weight_decay={self.weight_decay}, clip={self.clip}")
        if self.warmup < 0 or self.warmup >= self.steps:
            raise ValueError(f"warmup={self.warmup} must be in [0, steps={self.steps})")


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, tc.lr, tc.warmup, tc.steps, end_value=tc.lr * tc.min_lr_ratio)
    # decay matrices only: norms' scales and biases stay free (the usual LM recipe)
    decay_mask = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)
    return optax.chain(optax.clip_by_global_norm(tc.clip),
                       optax.adamw(schedule, b1=0.9, b2=tc.b2,
                                   weight_decay=tc.weight_decay, mask=decay_mask))


# config fields a warm start may change: new register / MTP heads, numerics, training context
WARM_START_FREE = ("register_depth", "mtp_depth", "compute_dtype", "train_attention",
                   "attention_impl", "max_seq_len")


def warm_start(model: Transformer, model_dir: str) -> list[str]:
    """Fine-tuning: copy every parameter of the saved model in ``model_dir`` into ``model``
    (the register / MTP parameters it lacks keep their initialisation) -> the names of the
    parameters left at initialisation. Raises ValueError if the two models differ in more than
    ``WARM_START_FREE``."""
    saved, _, _ = load_model(model_dir)
    differ = {k: (a, b) for (k, a), b in zip(saved.cfg.to_dict().items(),
                                              model.cfg.to_dict().values(), strict=True)
              if a != b and k not in WARM_START_FREE}
    if differ:
        raise ValueError(f"cannot warm-start from {model_dir!r}: the configs differ in "
                         f"{differ} (saved, new)")
    ours = flatten_params(nnx.state(model, nnx.Param))
    theirs = flatten_params(nnx.state(saved, nnx.Param))
    nnx.update(model, nnx.state(saved, nnx.Param))
    return sorted(set(ours) - set(theirs))


def loss_fn(model: Transformer, tokens_BT1, weights_BT):
    """Mean next-token cross-entropy (nats) over weighted targets."""
    return weighted_ce(model(tokens_BT1[:, :-1]), tokens_BT1[:, 1:], weights_BT)


NEXT_TOKEN = Objective()


@functools.partial(nnx.jit, static_argnames="objective")
def train_step(model, optimizer, tokens, weights, objective: Objective = NEXT_TOKEN):
    """One optimiser step on ``objective`` (the next-token loss, plus the register / MTP loss of
    models that have them) -> (loss, gradient norm)."""
    loss, grads = nnx.value_and_grad(lambda m: objective(m, tokens, weights))(model)
    optimizer.update(model, grads)
    return loss, optax.global_norm(grads)


@nnx.jit
def eval_step(model, tokens, weights):
    return loss_fn(model, tokens, weights)


def evaluate(model, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """Token-weighted mean loss over ``(tokens, weights)`` batches (nats per token)."""
    total, count = 0.0, 0.0
    for tokens, weights in batches:
        n = float(weights.sum())
        total += float(eval_step(model, jnp.asarray(tokens), jnp.asarray(weights))) * n
        count += n
    return total / max(count, 1.0)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 x non-embedding params + attention (Chinchilla appendix)."""
    d, hq, hkv, dh = cfg.dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_size
    per_layer = d * dh * (2 * hq + 2 * hkv) + 3 * d * cfg.ffn_dim
    head = 0 if cfg.tie_embeddings else d * cfg.vocab_size
    matmul = cfg.num_layers * per_layer + d * cfg.vocab_size + head
    attention = 2 * cfg.num_layers * seq_len * hq * dh  # QK^T and AV, causal half of 2x
    return 6 * matmul + 6 * attention


def peak_flops() -> float | None:
    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_FLOPS.items():
        if name in kind:
            return flops * jax.device_count()
    return None


class Trainer:
    """Owns the model, optimiser, checkpoint manager and metrics file of one ``workdir``."""

    def __init__(self, cfg: ModelConfig, tc: TrainConfig, workdir: str):
        if os.path.exists(workdir) and not os.path.isdir(workdir):
            raise ValueError(f"workdir {workdir!r} exists and is not a directory")
        os.makedirs(workdir, exist_ok=True)
        self.cfg, self.tc, self.workdir = cfg, tc, workdir
        self.model = Transformer(cfg, nnx.Rngs(tc.seed))
        self.optimizer = nnx.Optimizer(self.model, make_optimizer(tc), wrt=nnx.Param)
        self.ckpt = ocp.CheckpointManager(
            os.path.abspath(os.path.join(workdir, "ckpt")),
            options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
        self.objective = Objective(tc.aux_weight, tc.register_every)
        self.step = 0
        self._restore()

    def _train_state(self):
        return nnx.state((self.model, self.optimizer))

    def _restore(self):
        latest = self.ckpt.latest_step()
        if latest is None:
            return
        state = self._train_state()
        restored = self.ckpt.restore(latest, args=ocp.args.StandardRestore(state))
        nnx.update((self.model, self.optimizer), restored)
        self.step = latest
        logging.info("resumed from step %d", latest)

    def save(self):
        self.ckpt.save(self.step, args=ocp.args.StandardSave(self._train_state()), force=True)
        self.ckpt.wait_until_finished()

    def fit(self, source: BatchSource, eval_source: Callable[[], Iterable] | None = None,
            progress: Callable[[dict], None] | None = None) -> list[dict]:
        """Train to ``tc.steps`` (or the time budget); returns the logged metric rows."""
        tc = self.tc
        path = os.path.join(self.workdir, "metrics.csv")
        fields = ["step", "loss", "grad_norm", "lr", "tokens_per_s", "mfu", "heldout_loss",
                  "elapsed_s"]
        new_file = not os.path.exists(path)
        rows, start = [], time.perf_counter()
        tokens_per_step = tc.batch * tc.seq_len
        peak = peak_flops()
        fpt = flops_per_token(self.cfg, tc.seq_len)
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, tc.lr, tc.warmup, tc.steps, end_value=tc.lr * tc.min_lr_ratio)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            if new_file:
                writer.writeheader()
            window_t, window_steps = time.perf_counter(), 0
            while self.step < tc.steps:
                tokens, weights = source(self.step)
                loss, gnorm = train_step(self.model, self.optimizer, jnp.asarray(tokens),
                                         jnp.asarray(weights), self.objective)
                self.step += 1
                window_steps += 1
                last = self.step == tc.steps
                over_time = tc.time_budget_s > 0 and time.perf_counter() - start > tc.time_budget_s
                if self.step % tc.log_every == 0 or last or over_time:
                    loss = float(loss)  # syncs the device: timing below is honest
                    dt = time.perf_counter() - window_t
                    tps = window_steps * tokens_per_step / dt
                    row = dict(step=self.step, loss=loss, grad_norm=float(gnorm),
                               lr=float(schedule(self.step)), tokens_per_s=tps,
                               mfu=(tps * fpt / peak) if peak else "",
                               heldout_loss="", elapsed_s=time.perf_counter() - start)
                    if eval_source and (self.step % tc.eval_every == 0 or last or over_time):
                        row["heldout_loss"] = evaluate(self.model, eval_source())
                    writer.writerow(row)
                    f.flush()
                    rows.append(row)
                    if progress:
                        progress(row)
                    window_t, window_steps = time.perf_counter(), 0
                if self.step % tc.ckpt_every == 0 or last or over_time:
                    self.save()
                if over_time:
                    logging.info("time budget of %.0f s reached at step %d", tc.time_budget_s,
                                 self.step)
                    break
        return rows
