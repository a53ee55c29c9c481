"""Training objectives: next-token prediction, plus register tokens (MuToR-style) or
DeepSeek-style MTP modules for models that have them.

``loss = next-token loss + aux_weight x auxiliary loss``, where the auxiliary loss is the mean
cross-entropy of the registers (``model/registers.py``) or the mean over MTP depths of each
depth's cross-entropy (``model/mtp.py``). Every loss is in nats per weighted target.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax

from lcache.model.mtp import mtp_logits
from lcache.model.registers import register_forward, register_layout


def weighted_ce(logits_BTV, targets_BT, weights_BT):
    """Mean cross-entropy (nats) of ``targets`` under ``logits`` over ``weights``."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT)
    return jnp.sum(nll * weights_BT) / jnp.maximum(jnp.sum(weights_BT), 1.0)


@dataclasses.dataclass(frozen=True)
class Objective:
    """``aux_weight`` (lambda) weighs the auxiliary loss; ``register_every``: one register
    after every ``register_every``-th token. Hashable: a static argument of the train step."""

    aux_weight: float = 0.0
    register_every: int = 1

    def __post_init__(self):
        if not self.aux_weight >= 0 or self.register_every < 1:
            raise ValueError(f"objective needs aux_weight >= 0 and register_every >= 1, got "
                             f"{self.aux_weight}, {self.register_every}")

    def losses(self, model, tokens_BT1, weights_BT) -> tuple:
        """-> ``(next-token loss, auxiliary loss)`` (0 for a model with neither registers nor
        MTP modules)."""
        cfg = model.cfg
        targets = tokens_BT1[:, 1:]
        if cfg.register_depth:
            anchors, offsets = register_layout(targets.shape[1], self.register_every,
                                               cfg.register_depth)
            logits, reg = register_forward(model, tokens_BT1[:, :-1], anchors, offsets)
            aux = weighted_ce(reg, tokens_BT1[:, anchors + offsets],
                              weights_BT[:, anchors + offsets - 1])
            return weighted_ce(logits, targets, weights_BT), aux
        if cfg.mtp_depth:
            logits, depths = mtp_logits(model, tokens_BT1)
            aux = sum(weighted_ce(lg, tokens_BT1[:, k + 1:], weights_BT[:, k:])
                      for k, lg in enumerate(depths, start=1)) / len(depths)
            return weighted_ce(logits, targets, weights_BT), aux
        return weighted_ce(model(tokens_BT1[:, :-1]), targets, weights_BT), jnp.zeros(())

    def __call__(self, model, tokens_BT1, weights_BT):
        """The training loss (nats)."""
        ntp, aux = self.losses(model, tokens_BT1, weights_BT)
        return ntp + self.aux_weight * aux
