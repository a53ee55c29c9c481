"""TriAttention-style decode-time compaction (arXiv 2604.04921; TensorRT-LLM PR #16957): long
generations keep a cache of ``budget + interval`` slots; whenever it is full, every slot outside
the sinks and the recent window is scored and the best ``budget`` are compacted in place to
the front, freeing ``interval`` slots: the selection runs once every ``interval`` steps, with
static shapes and one compiled program.

Score (query-agnostic, from a per-head query centre, as TriAttention's calibrated pre-RoPE
centres): the running mean ``q0`` of the pre-RoPE queries seen at prefill (each KV head's query
group pooled), rotated by RoPE averaged over the next ``n_future`` positions
(``ExpectedScores.future_rope``), gives the expected logit ``k_j . q' / sqrt(d)`` of each
cached (rotated) key; its softmax over the evictable slots times ``||v_j||`` ranks them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lcache.cache import validate as v
from lcache.cache.base import Policy, advance_seen
from lcache.cache.expected import ExpectedScores
from lcache.cache.registry import Arg, register
from lcache.cache.state import EMPTY, KVState, empty_state
from pallas_kernels.decode.reference import HIGHEST, rope_rotate


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class CompactState:
    """The cache and the running sum of pre-RoPE queries (the query centre)."""

    kv: KVState
    q_sum: jax.Array  # [B, H, D] f32, each KV head's query group pooled
    q_count: jax.Array  # [B] f32

    @property
    def seen(self):
        return self.kv.seen

    def dims(self):
        return v.state_dims("compaction", self.kv)


@dataclasses.dataclass(frozen=True)
class DecodeCompaction(Policy):
    """``budget`` slots kept at each compaction, ``interval`` steps between compactions,
    ``sinks`` first and ``recent`` newest tokens never evicted."""

    budget: int
    interval: int = 16
    sinks: int = 4
    recent: int = 8
    n_future: int = 512
    rope_theta: float = 10000.0

    state_type = CompactState

    def __post_init__(self):
        v.check_fields(self, budget=v.integer(1), interval=v.integer(1), sinks=v.integer(0),
                       recent=v.integer(0), n_future=v.integer(1))
        if self.budget < self.sinks + self.recent:
            raise ValueError(f"DecodeCompaction.budget={self.budget} must hold the {self.sinks} "
                             f"sinks and {self.recent} recent tokens")

    @property
    def capacity(self) -> int:
        return self.budget + self.interval

    def init(self, batch, num_heads, key_dim, dtype=jnp.float32, value_dim=None):
        kv = empty_state(batch, num_heads, self.capacity, key_dim, value_dim or key_dim, dtype)
        return CompactState(kv, jnp.zeros((batch, num_heads, key_dim), jnp.float32),
                            jnp.zeros((batch,), jnp.float32))

    def _centre(self, state, queries_BHqTD, pos_BT):
        """Running pre-RoPE query sums per KV head (its query group pooled) after a chunk;
        sinks and padding left out."""
        if queries_BHqTD is None:
            return state.q_sum, state.q_count
        b, hq, t, d = queries_BHqTD.shape
        h = state.q_sum.shape[1]
        inv_freq = self.rope_theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
        q = rope_rotate(queries_BHqTD, -jnp.broadcast_to(pos_BT[:, None], (b, hq, t)), inv_freq)
        use = (pos_BT >= self.sinks)[:, None, :, None]
        q = jnp.where(use, q, 0.0).reshape(b, h, hq // h, t, d).sum((2, 3))
        return state.q_sum + q, state.q_count + (pos_BT >= self.sinks).sum(-1) * (hq // h)

    def scores(self, keys_BHND, values_BHND, pos_BHN, q_sum, q_count, seen_B):
        """``[B, H, N]`` ranking of candidates (protected ``+inf``, empty ``-inf``)."""
        d = keys_BHND.shape[-1]
        mu = q_sum / jnp.maximum(q_count, 1.0)[:, None, None]
        rot = ExpectedScores(self.n_future, rope_theta=self.rope_theta).future_rope(seen_B, d)
        mu = jnp.einsum("bij,bhj->bhi", rot, mu, precision=HIGHEST)
        logits = jnp.einsum("bhnd,bhd->bhn", keys_BHND.astype(jnp.float32), mu,
                            precision=HIGHEST) / d ** 0.5
        newest = (seen_B - 1)[:, None, None]
        protected = (pos_BHN >= 0) & ((pos_BHN < self.sinks) | (pos_BHN > newest - self.recent))
        evictable = (pos_BHN >= 0) & ~protected
        logits = jnp.where(evictable, logits, -jnp.inf)
        w = jnp.where(evictable, jnp.exp(logits - logits.max(-1, keepdims=True)), 0.0)
        w = w / jnp.maximum(w.sum(-1, keepdims=True), 1e-30)
        score = w * jnp.linalg.norm(values_BHND.astype(jnp.float32), axis=-1)
        return jnp.where(protected, jnp.inf, jnp.where(pos_BHN >= 0, score, -jnp.inf))

    def _merge(self, state, keys, values, pos_BT, queries):
        """Cache slots then chunk tokens; kept: all if they fit, else the best ``budget``,
        compacted to the front of the cache."""
        kv = state.kv
        q_sum, q_count = self._centre(state, queries, pos_BT)
        seen = advance_seen(kv.seen, pos_BT)
        cand_k = jnp.concatenate([kv.keys, keys.astype(kv.keys.dtype)], axis=2)
        cand_v = jnp.concatenate([kv.values, values.astype(kv.values.dtype)], axis=2)
        cand_pos = jnp.concatenate([kv.pos, jnp.broadcast_to(pos_BT[:, None],
                                                             keys.shape[:3])], axis=2)
        n_valid = (cand_pos >= 0).sum(-1, keepdims=True)  # [B, H, 1]

        def compact():
            score = self.scores(cand_k, cand_v, cand_pos, q_sum, q_count, seen)
            rank = jnp.argsort(jnp.argsort(-score, axis=-1, stable=True), axis=-1)
            keep = rank < jnp.where(n_valid > self.capacity, self.budget, self.capacity)
            return jnp.where(keep & (cand_pos >= 0), cand_pos, EMPTY)

        def fill():  # room for everything: valid entries first, in order
            return cand_pos

        kept_pos = jax.lax.cond(jnp.any(n_valid > self.capacity), compact, fill)
        order = jnp.argsort(jnp.where(kept_pos >= 0, 0, 1), axis=-1, stable=True)[
            ..., :self.capacity]
        pos = jnp.take_along_axis(kept_pos, order, axis=-1)
        take = order[..., None]
        new = KVState(jnp.take_along_axis(cand_k, take, axis=2),
                      jnp.take_along_axis(cand_v, take, axis=2), pos,
                      jnp.zeros(pos.shape, jnp.float32), seen)
        return CompactState(new, q_sum, q_count)

    def prefill(self, state, keys, values, pos, *, queries=None, mass=None):
        del mass
        return self._merge(state, keys, values, pos, queries)

    def append(self, state, key, value, pos):
        return self._merge(state, key[:, :, None], value[:, :, None], pos[:, None], None)

    def view(self, state):
        return super().view(state.kv)

    def entry_sizes(self, state) -> tuple[int, ...]:
        return (self.capacity,)


register("compaction",
         DecodeCompaction,
         split="budget slots after each compaction (sinks and recent kept, the rest by expected "
               "attention from the prompt's query centre), compacted in place whenever the "
               "budget + interval slots are full",
         args=dict(interval=Arg(16, "decode steps between compactions", low=1),
                   sinks=Arg(4, "first tokens never evicted", low=0),
                   recent=Arg(8, "newest tokens never evicted", low=0),
                   n_future=Arg(512, "future positions RoPE is averaged over", low=1)),
         make=lambda budget, ctx, interval, sinks, recent, n_future: DecodeCompaction(
             budget, interval, sinks, recent, n_future),
         args_of=lambda p: dict(interval=p.interval, sinks=p.sinks, recent=p.recent,
                                n_future=p.n_future),
         least=lambda sinks, recent, **_: (max(1, sinks + recent),
                                           f"{sinks} sinks and {recent} recent tokens"))
