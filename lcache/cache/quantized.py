"""Quantized KV storage around any selection policy (KIVI codes + full-precision residual and
sinks; algorithms.md §7, §8).

The wrapped policy keeps choosing *which* tokens live in *which* of its ``C`` slots, exactly as
it would over a plain ``KVState``: each call hands it a full-precision ``KVState`` rebuilt from
the codes (the view dequantizes too; a fused kernel can replace both later). Only its metadata
(``pos``, ``score``, ``seen``) is stored; keys and values are stored as

* **codes** for every slot, packed into ``uint16`` words (``bits`` per number, bit planes;
  ``quant_ops``): values per token in
  groups of ``G`` along the head dim; keys per channel over *blocks of G consecutive slots*
  (KIVI groups keys along tokens; slots are the static-shape stand-in: a policy that fills
  slots in token order, like ``Dense``, gets KIVI's groups exactly);
* a **residual ring** ``[B, H, R, D]`` holding the newest tokens in full precision: token ``p``
  sits at ``p % R`` while ``p >= F = G * ceil((seen - R) / G)``, so between ``R - G + 1`` and
  ``R`` newest tokens are exact (KIVI: ``< R`` for keys, ``R`` for values) and they leave the
  ring ``G`` at a time, filling whole key blocks under in-order policies;
* **sinks** ``[B, H, N, D]``: the first ``N`` tokens (``sink_detect=None``, Preserve-First-N)
  or the ``N`` best-scored prefill tokens (``sink_detect="outlier"``, KVSink; see ``sinks.py``).

A token is quantized at the step it stops being residual or sink. The ring and sinks are keyed
by token position, so a policy may overwrite or move slots freely. A key block that receives
tokens while already holding quantized ones keeps its grid when they fit in its range and
otherwise widens it per channel to at least twice its width, re-rounding its old codes: keys
stay within ``scale`` of the truth (``scale / 2`` in groups quantized once, as under ``Dense``),
values always within ``scale / 2``. Moved tokens are re-quantized from their dequantized values.
Contract asked of the wrapped policy: its state is a plain ``KVState``, a token occupies at most
one slot per head, and ``observe`` changes only ``score``. A policy that reads cached keys or
values to choose (SnapKV re-scoring a cache, KeyNorm, ValueAware) reads the dequantized ones, so
its choices can differ from its unquantized run.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from lcache.cache import quant_ops as qo
from lcache.cache import sinks as sk
from lcache.cache import validate as v
from lcache.cache.base import Policy, PrefillMass
from lcache.cache.state import EMPTY, KVState
from lcache.cache.view import CacheView, Segment

SINK_DETECT = (None, "outlier")
SCALE_DTYPES = ("bfloat16", "float16")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class QuantizedKVState:
    """One layer's quantized cache. ``NB = ceil(C / G)`` key blocks; ``P = bits / 16`` words
    per number (``quant_ops``: bit planes in uint16 words)."""

    k_codes: jax.Array  # [B, H, C, Dk*P] uint16
    k_scale: jax.Array  # [B, H, NB, Dk] 16-bit, one grid per channel per block of G slots
    k_zero: jax.Array  # [B, H, NB, Dk]
    v_codes: jax.Array  # [B, H, C, Dv*P] uint16
    v_scale: jax.Array  # [B, H, C, Dv/G] 16-bit, one grid per G channels per slot
    v_zero: jax.Array  # [B, H, C, Dv/G]
    ring_keys: jax.Array  # [B, H, R, Dk] full precision, token p at p % R
    ring_values: jax.Array  # [B, H, R, Dv]
    sink_pos: jax.Array  # [B, N] int32, -1 empty
    sink_score: jax.Array  # [B, N] f32
    sink_keys: jax.Array  # [B, H, N, Dk] full precision
    sink_values: jax.Array  # [B, H, N, Dv]
    pos: jax.Array  # [B, H, C] int32: the wrapped policy's metadata
    score: jax.Array  # [B, H, C] f32
    seen: jax.Array  # [B] int32

    @property
    def capacity(self) -> int:
        return self.pos.shape[2]

    @property
    def valid(self) -> jax.Array:
        return self.pos >= 0

    @property
    def key_dim(self) -> int:
        return self.ring_keys.shape[-1]

    @property
    def value_dim(self) -> int:
        return self.ring_values.shape[-1]


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _inner_metadata(inner, batch, num_heads, key_dim, dtype, value_dim):
    """The wrapped policy's initial ``pos``/``score``/``seen``; its full-precision keys and
    values are never allocated (dead code for the compiler)."""
    kv = inner.init(batch, num_heads, key_dim, dtype, value_dim)
    return kv.pos, kv.score, kv.seen


@dataclasses.dataclass(frozen=True)
class Quantized(Policy):
    """``inner`` with quantized storage. See the module docstring for the layout."""

    inner: Policy
    bits: int = 4
    group: int = 32
    residual: int = 128
    keep_sinks: int = 4
    sink_detect: str | None = None
    scale_dtype: str = "bfloat16"

    state_type = QuantizedKVState

    def __post_init__(self):
        if not isinstance(self.inner, Policy) or isinstance(self.inner, Quantized):
            raise ValueError(f"quantized() wraps a selection policy, got {self.inner!r}")
        v.check_fields(self, bits=v.integer(), group=v.integer(1), residual=v.integer(0),
                       keep_sinks=v.integer(0), sink_detect=v.one_of(SINK_DETECT),
                       scale_dtype=v.one_of(SCALE_DTYPES))
        qo.levels(self.bits)
        if self.residual % self.group:
            raise ValueError(f"residual={self.residual} must be a multiple of "
                             f"group={self.group} (the ring flushes whole groups)")

    # -- the wrapped policy's interface ----------------------------------------------------------
    @property
    def rope_mode(self) -> str:
        return self.inner.rope_mode

    @property
    def capacity(self) -> int:
        return self.inner.capacity

    def cache_heads(self, num_kv_heads: int, num_q_heads: int) -> int:
        return self.inner.cache_heads(num_kv_heads, num_q_heads)

    def visible(self, q_pos, k_pos):
        return self.inner.visible(q_pos, k_pos)

    @property
    def causal_prefill(self) -> bool:
        return self.inner.causal_prefill

    def init(self, batch: int, num_heads: int, key_dim: int, dtype=jnp.float32,
             value_dim: int | None = None) -> QuantizedKVState:
        value_dim = value_dim or key_dim
        if value_dim % self.group:  # values are grouped along their head dim
            raise ValueError(f"group={self.group} must divide value_dim={value_dim}")
        for name, d in dict(key_dim=key_dim, value_dim=value_dim).items():
            if (d * self.bits) % 16:
                raise ValueError(f"{name}={d} must be a multiple of {16 // self.bits} "
                                 f"({self.bits}-bit codes are packed into 16-bit words)")
        args = (self.inner, batch, num_heads, key_dim, jnp.dtype(dtype), value_dim)
        kind = type(jax.eval_shape(lambda: self.inner.init(*args[1:])))
        if kind is not KVState:
            raise ValueError(f"{type(self.inner).__name__} keeps a {kind.__name__}; "
                             "quantized storage needs a policy whose state is a plain KVState")
        pos, score, seen = _inner_metadata(*args)
        b, h, c = pos.shape
        sdt, nb, n = jnp.dtype(self.scale_dtype), -(-c // self.group), self.keep_sinks

        def zeros(*shape, dt=sdt):
            return jnp.zeros((b, h, *shape), dt)

        return QuantizedKVState(
            k_codes=zeros(c, key_dim * self.bits // 16, dt=jnp.uint16),
            k_scale=zeros(nb, key_dim), k_zero=zeros(nb, key_dim),
            v_codes=zeros(c, value_dim * self.bits // 16, dt=jnp.uint16),
            v_scale=zeros(c, value_dim // self.group), v_zero=zeros(c, value_dim // self.group),
            ring_keys=zeros(self.residual, key_dim, dt=dtype),
            ring_values=zeros(self.residual, value_dim, dt=dtype),
            sink_pos=jnp.full((b, n), -1, jnp.int32),
            sink_score=jnp.full((b, n), -jnp.inf, jnp.float32),
            sink_keys=zeros(n, key_dim, dt=dtype), sink_values=zeros(n, value_dim, dt=dtype),
            pos=pos, score=score, seen=seen)

    def entry_sizes(self, state: QuantizedKVState) -> tuple[int, ...]:
        """Feedback on the wrapped policy's slots ``C`` or on the view's ``C + N + R``."""
        return (state.capacity, state.capacity + self.keep_sinks + self.residual)

    def _layout(self, st: QuantizedKVState):
        """Where each slot's token lives: ``[(mask [B, H, C], index [B, H, C], size)]`` for
        the sinks and the ring (the slots the codes serve are the rest)."""
        out = []
        if self.keep_sinks:
            sink, sink_idx = sk.is_sink(st.pos, st.sink_pos)
            out.append((sink, sink_idx, self.keep_sinks))
        if self.residual:
            recent = st.pos >= self.flush_point(st.seen)[:, None, None]
            if self.keep_sinks:
                recent &= ~out[0][0]
            out.append((recent, jnp.where(st.pos >= 0, st.pos % self.residual, 0),
                        self.residual))
        return out

    def view(self, state: QuantizedKVState) -> CacheView:
        """Segments: the codes (``codes`` for kernels; keys/values dequantized for ``jnp``),
        then the full-precision sinks and residual ring, each entry with the positions and
        validity of the slot that holds its token."""
        from pallas_kernels.quant_decode import QuantCodes

        st, c, g = state, state.capacity, self.group
        dtype = st.ring_keys.dtype
        keys = qo.dequantize(qo.unpack(st.k_codes, self.bits), qo.per_slot(st.k_scale, g, c),
                             qo.per_slot(st.k_zero, g, c)).astype(dtype)
        values = qo.dequantize_per_token(st.v_codes, st.v_scale, st.v_zero, self.bits,
                                         g).astype(dtype)
        inner = self.inner.view(KVState(keys, values, st.pos, st.score, st.seen))
        slots = inner.segments[0]
        layout = self._layout(st)
        elsewhere = functools.reduce(jnp.logical_or, [m for m, _, _ in layout],
                                     jnp.zeros(st.pos.shape, bool))
        codes = QuantCodes(st.k_codes, st.k_scale, st.k_zero, st.v_codes, st.v_scale,
                           st.v_zero, slots.valid & ~elsewhere)
        segments = [dataclasses.replace(slots, valid=codes.valid, codes=codes)]
        stores = ((st.sink_keys, st.sink_values) if self.keep_sinks else None,
                  (st.ring_keys, st.ring_values) if self.residual else None)
        for (mask, index, size), (k, v_) in zip(layout, [x for x in stores if x], strict=True):
            m = mask & slots.valid
            segments.append(Segment(
                k, v_, _scatter(index, m, m, size, False), _scatter(index, m, slots.key_pos,
                                                                     size, EMPTY),
                _scatter(index, m, slots.rope_pos, size, 0), keys_rotated=slots.keys_rotated))
        return dataclasses.replace(inner, segments=tuple(segments))

    def to_slots(self, state: QuantizedKVState, x_BHF):
        """Flat-frame feedback ``[B, H, C + N + R]`` -> the wrapped policy's slots
        ``[B, H, C]`` (unchanged when already ``[B, H, C]``)."""
        c = state.capacity
        if x_BHF.shape[-1] == c:
            return x_BHF
        out, start = x_BHF[..., :c], c
        for mask, index, size in self._layout(state):
            part = x_BHF[..., start:start + size]
            out = out + jnp.where(mask, jnp.take_along_axis(part, index, axis=2), 0.0)
            start += size
        return out

    def prefill(self, state: QuantizedKVState, keys, values, pos, *, queries=None,
                mass: PrefillMass | None = None, sink_score=None) -> QuantizedKVState:
        """``sink_score [B, T]`` (larger = sink) ranks chunk tokens for ``sink_detect="outlier"``;
        without it the attention ``mass`` they received is used (see ``sinks.mass_score``).
        Ignored by Preserve-First-N."""
        if self.keep_sinks == 0:
            cand = None
        elif self.sink_detect is None:
            cand = sk.first_n_score(pos, self.keep_sinks)
        elif sink_score is not None:
            cand = jnp.asarray(sink_score, jnp.float32)
        elif mass is not None:
            cand = sk.mass_score(mass.chunk, pos)
        else:
            raise ValueError("sink_detect='outlier' needs sink_score or mass at prefill")
        if mass is not None:
            mass = PrefillMass(self.to_slots(state, mass.cache), mass.chunk)
        return self._update(
            state, lambda kv: self.inner.prefill(kv, keys, values, pos, queries=queries,
                                                 mass=mass), keys, values, pos, cand)

    def append(self, state: QuantizedKVState, key, value, pos) -> QuantizedKVState:
        """Decode-time insert; decode tokens become sinks only under Preserve-First-N."""
        keys, values, pos_BT = key[:, :, None], value[:, :, None], pos[:, None]
        cand = (sk.first_n_score(pos_BT, self.keep_sinks)
                if self.keep_sinks and self.sink_detect is None else None)
        return self._update(state, lambda kv: self.inner.append(kv, key, value, pos),
                            keys, values, pos_BT, cand)

    def observe(self, state: QuantizedKVState, slot_probs) -> QuantizedKVState:
        fed = self.inner.observe(self.materialise(state), self.to_slots(state, slot_probs))
        return dataclasses.replace(state, score=fed.score)

    # -- storage ---------------------------------------------------------------------------------
    def flush_point(self, seen_B):
        """``[B]`` int32: tokens at positions below it are no longer residual."""
        g = self.group
        return jnp.maximum(0, -((self.residual - seen_B) // g) * g)

    def _quantized_slots(self, pos_BHC, flush_B, sink_pos_BN):
        q = (pos_BHC >= 0) & (pos_BHC < flush_B[:, None, None])
        if self.keep_sinks:
            q &= ~sk.is_sink(pos_BHC, sink_pos_BN)[0]
        return q

    def materialise(self, st: QuantizedKVState) -> KVState:
        """The full-precision ``KVState`` the codes, ring and sinks stand for."""
        c, g = st.capacity, self.group
        keys = qo.dequantize(qo.unpack(st.k_codes, self.bits), qo.per_slot(st.k_scale, g, c),
                             qo.per_slot(st.k_zero, g, c))
        values = qo.dequantize_per_token(st.v_codes, st.v_scale, st.v_zero, self.bits, g)

        def overlay(mask_BHC, index_BHC, src_keys, src_values):
            idx = index_BHC[..., None]
            m = mask_BHC[..., None]
            return (jnp.where(m, jnp.take_along_axis(src_keys, idx, 2).astype(jnp.float32), keys),
                    jnp.where(m, jnp.take_along_axis(src_values, idx, 2).astype(jnp.float32),
                              values))

        if self.residual:
            recent = st.pos >= self.flush_point(st.seen)[:, None, None]
            keys, values = overlay(recent, jnp.where(recent, st.pos % self.residual, 0),
                                   st.ring_keys, st.ring_values)
        if self.keep_sinks:
            keys, values = overlay(*sk.is_sink(st.pos, st.sink_pos), st.sink_keys,
                                   st.sink_values)
        dtype = st.ring_keys.dtype
        return KVState(keys.astype(dtype), values.astype(dtype), st.pos, st.score, st.seen)

    def _update(self, st: QuantizedKVState, step, keys_BHTD, values_BHTD, pos_BT, cand_BT):
        new = step(self.materialise(st))
        flush_old, flush_new = self.flush_point(st.seen), self.flush_point(new.seen)
        sinks = (st.sink_pos, st.sink_score, st.sink_keys, st.sink_values)
        if cand_BT is not None:
            sinks = sk.merge(*sinks, pos_BT, cand_BT, keys_BHTD, values_BHTD)
        was_q = self._quantized_slots(st.pos, flush_old, st.sink_pos)
        now_q = self._quantized_slots(new.pos, flush_new, sinks[0])
        keep = was_q & now_q & (new.pos == st.pos)  # same token, codes still valid
        enter = now_q & ~keep  # left the ring or the sinks, or was moved here
        k_codes, k_scale, k_zero = self._encode_keys(st, new.keys, keep, enter)
        v_new = qo.quantize_per_token(new.values, self.bits, self.group,
                                      jnp.dtype(self.scale_dtype))
        v_codes, v_scale, v_zero = (jnp.where(enter[..., None], n, o) for n, o in
                                    zip(v_new, (st.v_codes, st.v_scale, st.v_zero), strict=True))
        ring_keys, ring_values = self._write_ring(st, keys_BHTD, values_BHTD, pos_BT, flush_new)
        return QuantizedKVState(k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, ring_keys,
                                ring_values, *sinks, pos=new.pos, score=new.score,
                                seen=new.seen)

    def _encode_keys(self, st, keys_BHCD, keep_BHC, enter_BHC):
        """Per-channel key blocks after ``enter`` slots join and ``keep`` slots stay."""
        g, c, bits = self.group, st.capacity, self.bits
        lo_old = st.k_zero.astype(jnp.float32)
        hi_old = lo_old + qo.levels(bits) * st.k_scale.astype(jnp.float32)
        lo_new, hi_new, has_enter = qo.block_range(keys_BHCD, enter_BHC, g)
        has_keep = qo.slot_blocks(keep_BHC, g, False).any(axis=3)
        has_enter, has_keep = has_enter[..., None], has_keep[..., None]
        fresh = has_enter & ~has_keep
        widen = has_enter & has_keep & ((lo_new < lo_old) | (hi_new > hi_old))
        lo = jnp.where(fresh, lo_new, jnp.minimum(lo_old, lo_new))
        hi = jnp.where(fresh, hi_new, jnp.maximum(hi_old, hi_new))
        # A widened grid at least doubles, so the re-rounding errors of a block's old codes
        # form a geometric series that stays below the final scale.
        short = jnp.where(widen, jnp.maximum(2 * (hi_old - lo_old) - (hi - lo), 0.0), 0.0)
        lo, hi = lo - short / 2, hi + short / 2
        scale, zero = qo.minmax_params(jnp.where(has_enter, lo, 0.0),
                                       jnp.where(has_enter, hi, 0.0), bits, st.k_scale.dtype)
        renew = fresh | widen
        scale, zero = jnp.where(renew, scale, st.k_scale), jnp.where(renew, zero, st.k_zero)
        old_codes = qo.unpack(st.k_codes, bits)
        deq = qo.dequantize(old_codes, qo.per_slot(st.k_scale, g, c),
                            qo.per_slot(st.k_zero, g, c))
        x = jnp.where(enter_BHC[..., None], keys_BHCD.astype(jnp.float32), deq)
        codes = qo.quantize(x, qo.per_slot(scale, g, c), qo.per_slot(zero, g, c), bits)
        requant = enter_BHC[..., None] | (keep_BHC[..., None] & qo.per_slot(widen, g, c))
        return qo.pack(jnp.where(requant, codes, old_codes), bits), scale, zero

    def _write_ring(self, st, keys_BHTD, values_BHTD, pos_BT, flush_B):
        if not self.residual:
            return st.ring_keys, st.ring_values
        r = self.residual
        slot = jnp.where((pos_BT >= flush_B[:, None]) & (pos_BT >= 0), pos_BT % r, r)
        slot_BHT = jnp.broadcast_to(slot[:, None], keys_BHTD.shape[:3])

        def scatter_row(dst, idx, src):  # dst [R, D], idx [T], src [T, D]
            return dst.at[idx].set(src.astype(dst.dtype), mode="drop")

        scatter = jax.vmap(jax.vmap(scatter_row))
        return (scatter(st.ring_keys, slot_BHT, keys_BHTD),
                scatter(st.ring_values, slot_BHT, values_BHTD))


def _scatter(index_BHC, mask_BHC, x_BHC, size, fill):
    """``[B, H, size]``: entry ``i`` takes ``x`` of the slot with ``mask`` and ``index == i``
    (at most one), else ``fill``."""

    def row(idx, m, x):
        return jnp.full((size,), fill, x.dtype).at[jnp.where(m, idx, size)].set(x, mode="drop")

    return jax.vmap(jax.vmap(row))(index_BHC, mask_BHC, x_BHC)


def quantized(policy: Policy, *, bits: int = 4, group: int = 32, residual: int = 128,
              keep_sinks: int = 4, sink_detect: str | None = None,
              scale_dtype: str = "bfloat16") -> Quantized:
    """KIVI storage (``bits`` in {2, 4, 8}, groups of ``group``, ``residual`` newest tokens in
    full precision) with ``keep_sinks`` full-precision sinks around ``policy`` (around each
    group's policy of a ``HeadGroups``)."""
    if hasattr(policy, "map_groups"):
        return policy.map_groups(lambda p: quantized(
            p, bits=bits, group=group, residual=residual, keep_sinks=keep_sinks,
            sink_detect=sink_detect, scale_dtype=scale_dtype))
    return Quantized(policy, bits, group, residual, keep_sinks, sink_detect, scale_dtype)
