"""RazorAttention (Tang et al., ICLR 2025; algorithms.md §9b): retrieval heads keep the full
cache, the others sinks + a recent window + one **compensation token** per head.

The compensation token stands for the ``N_d`` tokens a head dropped: key ``mean(dropped K)``,
value ``mean(dropped V)``, counted ``N_d`` times in the softmax (a logit bias ``log N_d``):

    out = (sum_kept e^{q.k_i} v_i + N_d e^{q.k^} v^) / (sum_kept e^{q.k_i} + N_d e^{q.k^})

``Compensated`` adds it to any policy that stores keys at their original positions: the sums
of every token it drops (evicted slots and chunk tokens never stored, found by position) are
kept exactly in float32 (``[B, H, D]`` per layer). Its view is the policy's segments plus a
one-entry segment with ``bias = log N_d``.

Retrieval heads are found from attention on repeated random tokens
(``lcache.analysis.head_patterns.razor_scores``: induction and echo scores); ``razor_heads``
protects the top ``induction`` and ``echo`` fractions of the model's heads.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lcache.cache.base import Dense, Policy, PrefillMass
from lcache.cache.head_groups import HeadGroups
from lcache.cache.registry import Arg, register, round_half_up
from lcache.cache.view import CacheView, Segment
from lcache.cache.window import StreamingLLM


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class CompState:
    """The wrapped policy's state and the running sums of what it dropped."""

    inner: object
    key_sum: jax.Array  # [B, H, Dk] f32
    value_sum: jax.Array  # [B, H, Dv] f32
    count: jax.Array  # [B, H] f32 tokens dropped

    @property
    def seen(self):
        return self.inner.seen

    def dims(self):
        inner = self.inner
        b, h, c = inner.pos.shape
        return b, h, c, inner.keys.shape[-1], inner.values.shape[-1]


def _dropped(gone_pos_BHN, kept_pos_BHC):
    """``[B, H, N]`` bool: a real position absent from the kept ones."""
    present = (gone_pos_BHN[..., None] == kept_pos_BHC[:, :, None, :]).any(-1)
    return (gone_pos_BHN >= 0) & ~present


@dataclasses.dataclass(frozen=True)
class Compensated(Policy):
    """``inner`` plus one compensation token per head for everything it dropped."""

    inner: Policy

    state_type = CompState

    def __post_init__(self):
        if not isinstance(self.inner, Policy) or self.inner.rope_mode != "original":
            raise ValueError(f"Compensated wraps a policy that stores keys at their original "
                             f"positions (a mean of keys rotated alike), got {self.inner!r}")

    @property
    def capacity(self) -> int:
        return self.inner.capacity

    def init(self, batch, num_heads, key_dim, dtype=jnp.float32, value_dim=None):
        inner = self.inner.init(batch, num_heads, key_dim, dtype, value_dim)
        return CompState(inner, jnp.zeros((batch, num_heads, key_dim), jnp.float32),
                         jnp.zeros((batch, num_heads, inner.values.shape[-1]), jnp.float32),
                         jnp.zeros((batch, num_heads), jnp.float32))

    def entry_sizes(self, state) -> tuple[int, ...]:
        c = state.inner.pos.shape[2]
        return (c, c + 1)

    def _update(self, state, new, keys_BHTD, values_BHTD, pos_BT):
        old = state.inner
        pos_BHT = jnp.broadcast_to(pos_BT[:, None], keys_BHTD.shape[:3])
        gone_slot = _dropped(old.pos, new.pos)
        gone_tok = _dropped(pos_BHT, new.pos)

        def total(mask, x):
            return jnp.einsum("bhn,bhnd->bhd", mask.astype(jnp.float32), x.astype(jnp.float32))

        return CompState(
            new, state.key_sum + total(gone_slot, old.keys) + total(gone_tok, keys_BHTD),
            state.value_sum + total(gone_slot, old.values) + total(gone_tok, values_BHTD),
            state.count + gone_slot.sum(-1) + gone_tok.sum(-1))

    def prefill(self, state, keys, values, pos, *, queries=None, mass=None):
        c = state.inner.pos.shape[2]
        if mass is not None:
            mass = PrefillMass(mass.cache[..., :c], mass.chunk)
        new = self.inner.prefill(state.inner, keys, values, pos, queries=queries, mass=mass)
        return self._update(state, new, keys, values, pos)

    def append(self, state, key, value, pos):
        new = self.inner.append(state.inner, key, value, pos)
        return self._update(state, new, key[:, :, None], value[:, :, None], pos[:, None])

    def observe(self, state, slot_probs):
        c = state.inner.pos.shape[2]
        return dataclasses.replace(state, inner=self.inner.observe(state.inner,
                                                                   slot_probs[..., :c]))

    def check_stream(self, where, state, pos_BT):
        self.inner.check_stream(where, state.inner, pos_BT)

    def visible(self, q_pos, k_pos):
        return self.inner.visible(q_pos, k_pos)

    @property
    def causal_prefill(self) -> bool:
        return self.inner.causal_prefill

    def view(self, state) -> CacheView:
        view = self.inner.view(state.inner)
        n = jnp.maximum(state.count, 1.0)[..., None]
        some = state.count > 0
        zeros = jnp.zeros(state.count.shape, jnp.int32)[..., None]
        dtype = state.inner.keys.dtype
        comp = Segment((state.key_sum / n).astype(dtype)[:, :, None],
                       (state.value_sum / n).astype(dtype)[:, :, None], some[..., None],
                       zeros, zeros, bias=jnp.log(n))
        return dataclasses.replace(view, segments=view.segments + (comp,))


def razor_heads(induction_LH, echo_LH, induction: float = 0.14,
                echo: float = 0.01) -> np.ndarray:
    """``[L, H]`` bool retrieval heads: the top ``induction`` fraction of the model's heads by
    induction score and the top ``echo`` fraction by echo score (counts rounded half up)."""
    flat = np.zeros(np.size(induction_LH), bool)
    for scores, frac in ((induction_LH, induction), (echo_LH, echo)):
        s = np.asarray(scores, np.float64).reshape(-1)
        flat[np.argsort(-s, kind="stable")[:round_half_up(frac * s.size)]] = True
    return flat.reshape(np.shape(induction_LH))


def razor_layers(retrieval_LH, sinks: int, window: int, full: Policy) -> tuple:
    """Per layer: ``full`` for retrieval heads, ``Compensated`` sinks + ``window`` recent for
    the others."""
    local = Compensated(StreamingLLM(window=window, num_sinks=sinks, positions="original"))
    layers = []
    for row in np.asarray(retrieval_LH, bool):
        groups = [(tuple(int(h) for h in np.flatnonzero(want)), p)
                  for want, p in ((row, full), (~row, local))]
        layers.append(HeadGroups(tuple((h, p) for h, p in groups if h)))
    return tuple(layers)


def _razor(budget, ctx, sinks):
    s = np.asarray(ctx.head_scores)
    if s.ndim != 2 or s.shape[0] != ctx.num_layers:
        raise ValueError(f"razor: head_scores of shape {s.shape} are not [L={ctx.num_layers}, "
                         "Hkv] (razor_heads of another model?)")
    full = Dense(ctx.prompt_len + ctx.max_new + ctx.num_model_sinks)
    return razor_layers(s > 0.5, sinks, budget - sinks - 1, full)


register("razor", None,
         split="head_scores > 0.5 (razor_heads: retrieval heads) keep everything (prompt_len + "
               "max_new + num_model_sinks); the others sinks + budget - sinks - 1 recent tokens "
               "+ one compensation token (mean of the dropped keys and values)",
         args=dict(sinks=Arg(4, "first tokens kept by non-retrieval heads", low=0)),
         make=_razor, least=lambda sinks, **_: (sinks + 2, f"{sinks} sinks, one recent token "
                                                           "and the compensation token"),
         needs=("num_layers", "head_scores"))
