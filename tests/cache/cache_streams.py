"""Random token streams and a jitted driver that feeds them to any policy.

A stream is ``num_chunks`` right-padded prefill chunks (each row its own length, positions
consecutive per row) followed by ``steps`` decode tokens. Keys and values carry their position in
channel 0 so stored content can be checked. Attention feedback (prefill ``mass`` and decode
``slot_probs``) is read from a random table ``feedback [event, B, H, position]``, so an oracle
can replay exactly the same numbers.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from lcache.cache import PrefillMass


@dataclasses.dataclass
class Stream:
    chunk_pos: np.ndarray  # [n, B, T] int32, -1 padding (right)
    chunk_k: np.ndarray  # [n, B, H, T, D]
    chunk_v: np.ndarray
    chunk_q: np.ndarray  # [n, B, Hq, T, D]
    dec_pos: np.ndarray  # [s, B]
    dec_k: np.ndarray  # [s, B, H, D]
    dec_v: np.ndarray
    feedback: np.ndarray  # [n + s, B, H, P] float32 > 0

    @property
    def seen(self):
        """``[B]`` tokens per row after the whole stream."""
        return self.dec_pos[-1] + 1 if len(self.dec_pos) else self.chunk_pos.max((0, 2)) + 1


def make_stream(seed, batch=2, heads=2, dim=4, chunk=5, num_chunks=2, steps=6, q_heads=None,
                min_first=1) -> Stream:
    rng = np.random.default_rng(seed)
    q_heads = q_heads or heads
    lengths = rng.integers(0, chunk + 1, (num_chunks, batch))
    lengths[0] = np.maximum(lengths[0], min_first)
    start = np.concatenate([np.zeros((1, batch), int), np.cumsum(lengths, 0)])
    t = np.arange(chunk)
    chunk_pos = np.where(t[None, None] < lengths[..., None], start[:-1, :, None] + t, -1)
    dec_pos = start[-1][None] + np.arange(steps)[:, None]
    total = chunk * num_chunks + steps  # fixed, so every stream of a shape shares one compile

    def content(pos, shape):
        x = rng.normal(size=shape).astype(np.float32)
        x[..., 0] = pos
        return x

    ck_pos = np.broadcast_to(chunk_pos[:, :, None, :, None], (num_chunks, batch, heads, chunk, 1))
    dk_pos = np.broadcast_to(dec_pos[:, :, None, None], (steps, batch, heads, 1))
    return Stream(
        chunk_pos=chunk_pos.astype(np.int32),
        chunk_k=content(ck_pos[..., 0], (num_chunks, batch, heads, chunk, dim)),
        chunk_v=content(ck_pos[..., 0], (num_chunks, batch, heads, chunk, dim)),
        chunk_q=rng.normal(size=(num_chunks, batch, q_heads, chunk, dim)).astype(np.float32),
        dec_pos=dec_pos.astype(np.int32),
        dec_k=content(dk_pos[..., 0], (steps, batch, heads, dim)),
        dec_v=content(dk_pos[..., 0], (steps, batch, heads, dim)),
        feedback=rng.uniform(0.01, 1.0, (num_chunks + steps, batch, heads, total)
                             ).astype(np.float32))


def lookup(table_BHP, pos_BHN):
    """``table[b, h, pos]`` (0 where ``pos < 0``)."""
    got = jnp.take_along_axis(table_BHP, jnp.maximum(pos_BHN, 0), axis=-1)
    return jnp.where(pos_BHN >= 0, got, 0.0)


@functools.partial(jax.jit, static_argnums=0)
def run(policy, stream_arrays, init_state):
    """Feed a stream; returns the final state and per-decode-step ``(pos, score)`` history
    (after ``observe``)."""
    cp, ck, cv, cq, dp, dk, dv, fb = stream_arrays
    n = cp.shape[0]

    def prefill(state, xs):
        pos, k, v, q, table = xs
        pos_bht = jnp.broadcast_to(pos[:, None], k.shape[:3])
        active = jnp.any(pos >= 0, axis=-1)[:, None, None]  # no queries, no mass
        mass = PrefillMass(cache=jnp.where(active, lookup(table, state.pos), 0.0),
                           chunk=lookup(table, pos_bht))
        return policy.prefill(state, k, v, pos, queries=q, mass=mass), None

    def decode(state, xs):
        pos, k, v, table = xs
        state = policy.append(state, k, v, pos)
        state = policy.observe(state, lookup(table, state.pos))
        return state, (state.pos, state.score)

    state, _ = jax.lax.scan(prefill, init_state, (cp, ck, cv, cq, fb[:n]))
    return jax.lax.scan(decode, state, (dp, dk, dv, fb[n:]))


def feed(policy, stream: Stream, q_heads=None):
    """Run ``stream`` through ``policy`` from an empty cache."""
    b, heads = stream.chunk_k.shape[1:3]
    h = policy.cache_heads(heads, q_heads or heads)
    state = policy.init(b, h, stream.chunk_k.shape[-1])
    arrays = tuple(jnp.asarray(a) for a in (
        stream.chunk_pos, stream.chunk_k, stream.chunk_v, stream.chunk_q, stream.dec_pos,
        stream.dec_k, stream.dec_v, stream.feedback))
    return run(policy, arrays, state)


def kept(state, b, h) -> set[int]:
    pos = np.asarray(state.pos[b, h])
    return {int(p) for p in pos if p >= 0}
