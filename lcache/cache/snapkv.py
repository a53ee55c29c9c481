"""SnapKV (Li et al., 2024): the prompt's last ``window`` queries vote, pooled, top-``budget``.

Reference: FasterDecoding/SnapKV ``SnapKVCluster.update_kv`` (algorithms.md §0, §3). At the end
of a prefill chunk, the window queries attend (causally) over everything the cache holds plus the
chunk; their mean attention on each older token is pooled along positions (``kernel``,
``pooling``) and the top ``budget - window`` join the ``window`` newest tokens (the budget
includes the window). A prompt no longer than ``budget`` keeps everything. A prompt given in one
chunk is compressed once, exactly as the reference; a later chunk re-selects over what is cached
plus itself.

Decode room (``decode_capacity``): the reference selects once, on the prompt, and keeps every
decode token. Here capacity is static (``budget + decode_capacity``): decode appends without
eviction into ``decode_capacity`` spare slots, so the prompt's selection survives that many
decode steps; past that, the lowest decode vote (attention received since prefill) outside the
window makes room (see ``Recompress`` for SnapKV-D style re-selection).

* ``decode_capacity=None`` (default): reserve room for the whole generation. ``generate`` sizes
  it to ``max_new_tokens`` (``reserve_decode_room``); anywhere else ``capacity`` / ``init`` ask
  for a number rather than guess one.
* ``decode_capacity=n``: ``n`` spare slots.
* ``decode_capacity=0``: no room, evict at every decode step (the default before 2026-12: the
  observation window is gone after ``window`` steps and the cache becomes the voted prefix plus
  a sliding window of decode tokens).

GQA (``gqa``): 'mean' / 'max' reduce the query group's pooled scores per KV head (kvpress style,
GQA memory savings kept); 'per_query_head' selects per query head as the reference code does
(``repeat_kv`` first): ``cache_heads`` is the number of query heads and the model stores
repeated keys and values.

Defaults are the reference's ``init_snapkv`` (window 32, kernel 5, avg pooling); the paper's
LongBench runs use window 32, kernel 7, max; KVCache-Factory window 8, kernel 7, max; kvpress
window 64, kernel 5, avg.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from lcache.cache import validate as v
from lcache.cache.budgets import dynamic, pyramid
from lcache.cache.registry import Arg, default_of, register
from lcache.cache.scored import ScoredPolicy, accumulate, newest_pos
from lcache.cache.voting import (
    POOLINGS,
    candidates,
    observed_sum,
    observer_count,
    pool_by_position,
)

GQA_MODES = ("mean", "max", "per_query_head")


@dataclasses.dataclass(frozen=True)
class SnapKV(ScoredPolicy):
    """Keep ``budget`` prompt tokens per head (window included) chosen by the window's vote."""

    budget: int
    window: int = 32
    kernel: int = 5
    pooling: str = "avg"
    gqa: str = "mean"
    decode_capacity: int | None = None

    decode_votes = True

    def __post_init__(self):
        v.check_fields(self, budget=v.integer(1), window=v.integer(1), kernel=v.integer(),
                       pooling=v.one_of(POOLINGS), gqa=v.one_of(GQA_MODES),
                       decode_capacity=v.optional(v.integer(0)))
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"SnapKV.kernel must be a positive odd number, got {self.kernel}")
        if self.budget < self.window:
            raise ValueError(f"SnapKV.budget={self.budget} must be >= window={self.window} "
                             "(the budget includes the observation window)")

    @classmethod
    def for_prompt(cls, prompt_len: int, budget, **kw):
        """Validated against a known prompt length; ``budget`` is tokens or a ``Budget``."""
        budget = budget if isinstance(budget, int) else budget.resolve(prompt_len)
        policy = cls(budget=budget, **kw)
        if policy.window > prompt_len:
            raise ValueError(f"SnapKV.window={policy.window} is longer than the "
                             f"{prompt_len}-token prompt")
        return policy

    @property
    def capacity(self) -> int:
        if self.decode_capacity is None:
            raise ValueError(
                f"{self!r} has no size for its decode room: decode_capacity=None reserves room "
                "for every generated token and generate() sizes it to max_new_tokens; here say "
                "how many: decode_capacity=n keeps the prompt's selection for n decode steps, "
                "decode_capacity=0 evicts at every decode step (the former default)")
        return self.budget + self.decode_capacity

    def cache_heads(self, num_kv_heads, num_q_heads):
        return num_q_heads if self.gqa == "per_query_head" else num_kv_heads

    def recent_protected(self) -> int:
        return self.window

    @property
    def observation_window(self) -> int:
        return self.window

    def scores(self, state, keys, pos, queries, votes=None):
        """``[B, H, C + T]`` pooled, group-reduced vote for the cache slots then the chunk;
        ``votes [B, Hq, C + T]`` (``PrefillMass.votes``) if the model computed them."""
        cand_keys, cand_pos = candidates(state, keys, pos)
        if votes is None:
            votes = observed_sum(queries, pos, self.window, cand_keys, cand_pos)
        b, h, n = cand_pos.shape
        vote = votes.reshape(b, h, -1, n) / observer_count(pos, self.window)[:, None, None, None]
        prefix = (cand_pos >= 0) & (cand_pos <= newest_pos(state, pos)[:, None, None]
                                    - self.window)
        pooled = pool_by_position(vote, cand_pos, prefix, self.kernel, self.pooling)
        reduce = jnp.max if self.gqa == "max" else jnp.mean
        return jnp.where(prefix, reduce(pooled, axis=2), 0.0)

    def prefill(self, state, keys, values, pos, *, queries=None, mass=None):
        if queries is None:
            raise ValueError("SnapKV.prefill needs the chunk's rotated `queries`")
        if self.gqa == "per_query_head" and queries.shape[1] != keys.shape[1]:
            raise ValueError(
                f"SnapKV(gqa='per_query_head') selects per query head, so its cache needs one "
                f"head per query head: got {queries.shape[1]} query heads and a cache of "
                f"{keys.shape[1]} heads (init with num_heads=policy.cache_heads(kv_heads, "
                "q_heads) and repeat keys/values per query head, as the model does)")
        score = self.scores(state, keys, pos, queries, None if mass is None else mass.votes)
        c = state.capacity
        return self.insert(state, keys, values, pos, score[..., :c], score[..., c:],
                           keep=self.budget)

    def observe(self, state, slot_probs):
        return accumulate(state, slot_probs)


# -- specs: snapkv and the per-layer budgets over it (pyramidkv, dynamickv) ------------------

SNAP_ARGS = dict(
    window=Arg(default_of(SnapKV, "window"), "observation window (newest queries vote)", low=1),
    kernel=Arg(default_of(SnapKV, "kernel"), "pooling kernel over positions", low=1, odd=True),
    pool=Arg(default_of(SnapKV, "pooling"), "pooling of the votes", choices=POOLINGS),
    gqa=Arg(default_of(SnapKV, "gqa"), "query-group reduction", choices=GQA_MODES),
)
DECODE_ARG = Arg(None, "decode slots after the prompt", kind=int, context="max_new", low=0)


def snap_from_args(budget: int, decode: int = 0, *, window, kernel, pool, gqa) -> SnapKV:
    return SnapKV(budget, window, kernel, pool, gqa, decode)


def snap_args_of(p: SnapKV) -> dict:
    return dict(window=p.window, kernel=p.kernel, pool=p.pooling, gqa=p.gqa)


def snap_least(window, **_):
    return window + 1, f"an observation window of {window} + at least one voted token"


register("snapkv", SnapKV,
         split="budget - window prompt tokens by the pooled vote of the last window queries + "
               "the window newest; plus decode slots for generation (capacity budget + decode)",
         args=dict(SNAP_ARGS, decode=DECODE_ARG),
         make=lambda budget, ctx, decode, **a: snap_from_args(budget, decode, **a),
         args_of=lambda p: dict(snap_args_of(p), decode=p.decode_capacity),
         least=snap_least, compresses=True)


def _pyramidkv(budget, ctx, decode, beta, **a):
    caps = pyramid(budget, ctx.num_layers, ctx.prompt_len, window=a["window"], beta=beta)
    return tuple(snap_from_args(b, decode, **a) for b in caps)


register("pyramidkv", None,
         split="per-layer snapkv budgets (mean = budget) from the PyramidKV schedule "
               "(KVCache-Factory rounding), largest in layer 0",
         args=dict(SNAP_ARGS, decode=DECODE_ARG,
                   beta=Arg(float(default_of(pyramid, "beta")), "layer 0 / last ratio", low=1.0)),
         make=_pyramidkv, least=snap_least, compresses=True, needs=("num_layers",))


def _dynamickv(budget, ctx, decode, r_max, **a):
    # A SnapKV as large as the prompt keeps every token and stores its vote in ``score``.
    caches = ctx.probe(snap_from_args(ctx.prompt_len + ctx.num_model_sinks, **a))
    caps = dynamic(caches, budget, window=a["window"], r_max=r_max)
    return tuple(snap_from_args(b, decode, **a) for b in caps)


register("dynamickv", None,
         split="per-layer snapkv budgets (mean = budget) from DynamicKV's global top votes of "
               "a probe prefill that keeps everything",
         args=dict(SNAP_ARGS, decode=DECODE_ARG,
                   r_max=Arg(float(default_of(dynamic, "r_max")), "largest layer / mean",
                             low=1.0)),
         make=_dynamickv, least=snap_least, compresses=True, needs=("probe",))
