"""AdaKV (Feng et al., 2024; arXiv 2407.11550) over SnapKV's vote, in real ragged per-head
capacities.

Selection, as kvpress 0.5.5's ``AdaKVPress(SnapKVPress)`` on a prompt given in one chunk:

1. SnapKV scores ``[B, H, T]``: the last ``window`` queries' attention on the older tokens,
   pooled along positions (``kernel``, ``pooling``), averaged over each KV head's query group;
   the ``window`` newest tokens score ``max + 1`` (the row's largest score plus one);
2. safeguard: each head's ``n_safe = max(1, int(budget * alpha))`` best tokens score ``+big``;
3. one top ``H * budget`` over the ``H * T`` (head, token) pairs of the layer: heads whose votes
   are concentrated keep fewer tokens and give their share to heads that need more.

Storage is a **pool** of ``H * budget`` entries per row (``[B, 1, H * budget, D]``) with the
owning head of each entry: the per-head capacities are ragged and data-dependent, the bytes are
exactly the layer's budget (kvpress masks a full cache instead). Tokens after the prompt chunk
(decode, later chunks) go to a per-head ring of ``decode_capacity`` slots (the newest stay).
The view is two segments: the pool (``owner``) and the ring.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from lcache.cache import validate as v
from lcache.cache.base import Policy, advance_seen
from lcache.cache.registry import Arg, register
from lcache.cache.snapkv import SNAP_ARGS
from lcache.cache.state import EMPTY
from lcache.cache.view import CacheView, Segment
from lcache.cache.voting import POOLINGS, observer_probs, observers, pool_by_position, window_vote

BIG = float(jnp.finfo(jnp.float32).max)  # the safeguard's score (kvpress: finfo.max)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PoolState:
    """One layer: the prompt selection as a pool, later tokens in a per-head ring.

    ``P = H * budget`` pool entries, ``R = decode_capacity`` ring slots per head."""

    keys: jax.Array  # [B, 1, P, Dk]
    values: jax.Array  # [B, 1, P, Dv]
    pos: jax.Array  # [B, 1, P] int32, EMPTY where free
    owner: jax.Array  # [B, 1, P] int32 cache head of each entry
    score: jax.Array  # [B, 1, P] f32 selection score
    ring_keys: jax.Array  # [B, H, R, Dk]
    ring_values: jax.Array  # [B, H, R, Dv]
    ring_pos: jax.Array  # [B, H, R] int32
    seen: jax.Array  # [B] int32
    start: jax.Array  # [B] int32 first position that goes to the ring

    @property
    def key_dim(self) -> int:
        return self.keys.shape[-1]

    @property
    def value_dim(self) -> int:
        return self.values.shape[-1]

    def dims(self):
        """``(B, H, P + R, Dk, Dv)`` for validation (``P + R``: the view's flat size)."""
        b, h, r = self.ring_pos.shape
        return b, h, self.pos.shape[2] + r, self.key_dim, self.value_dim


def adakv_select(scores_BHT, budget: int, alpha: float):
    """The (head, token) pairs kept: ``(flat index [B, P] into H*T, kept [B, P] bool)`` with
    ``P = H * budget``; ``scores`` ``-inf`` where no token (padding)."""
    b, h, t = scores_BHT.shape
    n_safe = int(budget * alpha)
    n_safe = max(1, n_safe) if alpha > 0 and budget > 0 else 0
    if n_safe:
        idx = jax.lax.top_k(scores_BHT, min(n_safe, t))[1]
        hit = jnp.zeros((b, h, t), bool).at[
            jnp.arange(b)[:, None, None], jnp.arange(h)[None, :, None], idx].set(True)
        scores_BHT = jnp.where(hit & jnp.isfinite(scores_BHT), BIG, scores_BHT)
    p = h * budget
    flat = scores_BHT.reshape(b, h * t)
    if p > h * t:
        flat = jnp.pad(flat, ((0, 0), (0, p - h * t)), constant_values=-jnp.inf)
    vals, idx = jax.lax.top_k(flat, p)
    return idx, vals > -jnp.inf, vals


@dataclasses.dataclass(frozen=True)
class SnapVote:
    """SnapKV's score of a prompt chunk (kvpress ``SnapKVPress.score``): the last ``window``
    queries' attention, pooled along positions, averaged over each query group; the window
    scores ``max + 1``. ``protected``: tokens every head keeps."""

    window: int = 32
    kernel: int = 5
    pooling: str = "avg"

    def __post_init__(self):
        v.check_fields(self, window=v.integer(1), kernel=v.integer(1),
                       pooling=v.one_of(POOLINGS))
        if self.kernel % 2 == 0:
            raise ValueError(f"SnapVote.kernel must be odd, got {self.kernel}")

    @property
    def protected(self) -> int:
        return self.window

    def scores(self, keys_BHTD, values_BHTD, pos_BT, queries_BHqTD):
        """``[B, H, T]`` (padding ``-inf``)."""
        del values_BHTD
        q, q_pos = observers(queries_BHqTD, pos_BT, self.window)
        pos = jnp.broadcast_to(pos_BT[:, None], keys_BHTD.shape[:3])
        vote = window_vote(observer_probs(q, q_pos, keys_BHTD, pos), q_pos)
        newest = jnp.max(pos_BT, axis=-1)[:, None, None]
        prefix = (pos >= 0) & (pos <= newest - self.window)
        score = pool_by_position(vote, pos, prefix, self.kernel, self.pooling).mean(axis=2)
        return protect(score, prefix, pos >= 0)


def protect(score_BHT, scored_BHT, real_BHT):
    """kvpress's padding of forced tokens: ``max + 1`` (the row's largest score of ``scored``
    entries) for real tokens that are not scored, ``-inf`` for padding."""
    top = jnp.max(jnp.where(scored_BHT, score_BHT, -jnp.inf), axis=(1, 2), keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    return jnp.where(scored_BHT, score_BHT, jnp.where(real_BHT, top + 1.0, -jnp.inf))


@dataclasses.dataclass(frozen=True)
class AdaKV(Policy):
    """``budget`` prompt tokens per head on average (``H * budget`` per layer) chosen by
    ``scorer`` (``SnapVote`` or ``expected.ExpectedAttention``), safeguard fraction ``alpha``
    (``alpha=1``: every head keeps its own top ``budget``, a uniform per-head selection),
    ``decode_capacity`` ring slots per head for later tokens (None: sized by ``generate``)."""

    budget: int
    scorer: Any = SnapVote()
    alpha: float = 0.2
    decode_capacity: int | None = None

    state_type = PoolState

    def __post_init__(self):
        v.check_fields(self, budget=v.integer(1), decode_capacity=v.optional(v.integer(1)))
        if not callable(getattr(self.scorer, "scores", None)):
            raise ValueError(f"AdaKV.scorer must have scores(keys, values, pos, queries), got "
                             f"{self.scorer!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"AdaKV.alpha must be in [0, 1], got {self.alpha}")
        if self.budget < self.scorer.protected:
            raise ValueError(f"AdaKV.budget={self.budget} must be >= the {self.scorer.protected} "
                             f"tokens every head keeps ({self.scorer!r})")

    @property
    def capacity(self) -> int:
        return self.budget + self._ring()

    def _ring(self) -> int:
        if self.decode_capacity is None:
            raise ValueError(f"{self!r} has no size for its ring of later tokens: "
                             "decode_capacity=None is sized by generate(); here say how many")
        return self.decode_capacity

    def init(self, batch, num_heads, key_dim, dtype=jnp.float32, value_dim=None):
        size = v.integer(1)
        v.check_args("init", batch=(batch, size), heads=(num_heads, size),
                     key_dim=(key_dim, size))
        value_dim = value_dim or key_dim
        p, r, b = num_heads * self.budget, self._ring(), batch
        return PoolState(
            keys=jnp.zeros((b, 1, p, key_dim), dtype),
            values=jnp.zeros((b, 1, p, value_dim), dtype),
            pos=jnp.full((b, 1, p), EMPTY, jnp.int32), owner=jnp.full((b, 1, p), -1, jnp.int32),
            score=jnp.zeros((b, 1, p), jnp.float32),
            ring_keys=jnp.zeros((b, num_heads, r, key_dim), dtype),
            ring_values=jnp.zeros((b, num_heads, r, value_dim), dtype),
            ring_pos=jnp.full((b, num_heads, r), EMPTY, jnp.int32),
            seen=jnp.zeros((b,), jnp.int32), start=jnp.zeros((b,), jnp.int32))

    def entry_sizes(self, state) -> tuple[int, ...]:
        return (state.dims()[2],)

    def prefill(self, state, keys, values, pos, *, queries=None, mass=None):
        del mass
        if queries is None:
            raise ValueError("AdaKV.prefill needs the chunk's rotated `queries`")
        return self.select(state, keys, values, pos,
                           self.scorer.scores(keys, values, pos, queries))

    def select(self, state, keys, values, pos, scores_BHT):
        """``prefill`` with given scores ``[B, H, T]`` (``-inf``: never kept): rows whose stream
        starts here fill the pool by ``adakv_select``; the others append to the ring."""
        b, h, t, _ = keys.shape
        idx, kept, vals = adakv_select(scores_BHT, self.budget, self.alpha)
        src = jnp.minimum(idx, h * t - 1)

        def gather(x_BHTD):
            flat = x_BHTD.reshape(b, h * t, -1)
            return jnp.take_along_axis(flat, src[..., None], axis=1)[:, None]

        tok_pos = jnp.take_along_axis(pos, src % t, axis=1)
        first = (state.seen == 0)[:, None, None]
        sel = dict(keys=gather(keys).astype(state.keys.dtype),
                   values=gather(values).astype(state.values.dtype),
                   pos=jnp.where(kept, tok_pos, EMPTY)[:, None],
                   owner=jnp.where(kept, src // t, -1)[:, None],
                   score=jnp.where(kept, vals, 0.0)[:, None])
        first4 = first[..., None]
        pool = {k: jnp.where(first4 if x.ndim == 4 else first, x, getattr(state, k))
                for k, x in sel.items()}
        seen = advance_seen(state.seen, pos)
        start = jnp.where(state.seen == 0, seen, state.start)
        later = jnp.where((state.seen > 0)[:, None], pos, EMPTY)
        ring = self._write_ring(state, keys, values, later, start)
        return PoolState(**pool, **ring, seen=seen, start=start)

    def _write_ring(self, state, keys_BHTD, values_BHTD, pos_BT, start_B):
        """The newest ``R`` tokens of ``pos`` (``-1``: skip) at ``(pos - start) % R``."""
        r = state.ring_pos.shape[2]
        newest = jnp.max(pos_BT, axis=-1, keepdims=True)
        ok = (pos_BT >= 0) & (pos_BT > newest - r)
        slot = jnp.where(ok, (pos_BT - start_B[:, None]) % r, r)
        slot_BHT = jnp.broadcast_to(slot[:, None], keys_BHTD.shape[:3])
        pos_BHT = jnp.broadcast_to(pos_BT[:, None], keys_BHTD.shape[:3])

        def scatter_row(dst, idx, src):
            return dst.at[idx].set(src.astype(dst.dtype), mode="drop")

        scatter = jax.vmap(jax.vmap(scatter_row))
        return dict(ring_keys=scatter(state.ring_keys, slot_BHT, keys_BHTD),
                    ring_values=scatter(state.ring_values, slot_BHT, values_BHTD),
                    ring_pos=scatter(state.ring_pos, slot_BHT, pos_BHT))

    def append(self, state, key, value, pos):
        ring = self._write_ring(state, key[:, :, None], value[:, :, None], pos[:, None],
                                state.start)
        return dataclasses.replace(state, **ring, seen=advance_seen(state.seen, pos[:, None]))

    def view(self, state) -> CacheView:
        pool = Segment(state.keys, state.values, state.pos >= 0, state.pos,
                       jnp.maximum(state.pos, 0), owner=state.owner)
        ring = Segment(state.ring_keys, state.ring_values, state.ring_pos >= 0, state.ring_pos,
                       jnp.maximum(state.ring_pos, 0))
        return CacheView((pool, ring), jnp.zeros_like(state.seen), state.ring_pos.shape[1])


ADA_ARGS = {k: SNAP_ARGS[k] for k in ("window", "kernel", "pool")}


def ring_arg() -> Arg:
    return Arg(None, "ring slots per head after the prompt", kind=int, context="max_new", low=1)


register("adakv", AdaKV,
         split="H * budget prompt tokens per layer by one top-k of SnapKV's pooled votes across "
               "the heads (every head keeps its window and its alpha * budget best), ragged "
               "per head; plus decode ring slots per head (capacity budget + decode on average)",
         args=dict(ADA_ARGS, decode=ring_arg(),
                   alpha=Arg(0.2, "safeguard: each head's share of its budget", low=0.0,
                             high=1.0)),
         make=lambda budget, ctx, decode, alpha, window, kernel, pool: AdaKV(
             budget, SnapVote(window, kernel, pool), alpha, decode),
         args_of=lambda p: dict(window=p.scorer.window, kernel=p.scorer.kernel,
                                pool=p.scorer.pooling, decode=p.decode_capacity, alpha=p.alpha),
         least=lambda window, **_: (window, f"an observation window of {window}"),
         compresses=True)
