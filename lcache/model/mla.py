"""Multi-head latent attention (DeepSeek-V2/V3, algorithms.md §6) over a latent KV cache.

Per token ``h`` (dims: ``dc`` latent, ``dn`` no-RoPE and ``dr`` RoPE query/key parts, ``dv``
value, ``H`` heads): ``c = RMSNorm(W_DKV h) [dc]``; one RoPE key shared by all heads
``k_r = RoPE(W_KR h) [dr]``; queries ``W_UQ RMSNorm(W_DQ h)`` (or ``W_Q h`` without query
compression) split per head into ``q_n [dn]`` and ``q_r = RoPE(.) [dr]``; per head
``k_n = W_UK c``, ``v = W_UV c``; logits ``(q_n·k_n + q_r·k_r) / sqrt(dn + dr)``.

Cache: one cache head (``H = 1``) of the ordinary policy interface, ``keys = k_r [B, 1, C, dr]``
(rotated with original positions, or raw for policies with ``rope_mode == 'cache'``) and
``values = c [B, 1, C, dc]`` (after its RMSNorm), i.e. ``dc + dr`` numbers per token and layer.
Every selection policy therefore selects latent tokens, seeing the attention mass summed over
all query heads; quantized storage quantizes ``k_r`` per channel and ``c`` per token. The
``queries`` policies get at prefill are the rotated ``q_r`` scaled by ``sqrt(dr / (dn + dr))``,
so ``softmax(q·k / sqrt(dr))`` over the cached keys is the RoPE part of the true logits: a proxy
for query-voting policies (SnapKV, TOVA), since the latent part needs ``W_UK`` and ``c``.

Cached attention has two paths (``ModelConfig.mla_impl``), equal up to rounding:
'naive' up-projects ``k_n`` and ``v`` for every cached token; 'absorb' folds ``W_UK`` into the
query (``q_n W_UK -> [dc]``) and ``W_UV`` into the output, attending with the ``dc + dr`` latent
directly (multi-query attention over the cache; per-head keys are never formed).
Under ``attention_impl`` 'pallas' (or 'auto' on GPU/TPU) decode runs the absorbed MLA kernel
(``pallas_kernels.mla_decode``; softmax, 'absorb' only); prefill always attends through the
``jnp`` path (the prefill kernel takes per-head keys of a power-of-2 width, not the latent).
Not implemented: DeepSeek's YaRN ``mscale``.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from lcache.attention.core import grouped_attention
from lcache.attention.decode import mla_decode_over_view
from lcache.cache import Policy, PrefillMass
from lcache.model.config import ModelConfig
from lcache.model.layers import INIT_STD, RMSNorm, dense
from lcache.model.rope import apply_rope, model_inv_freq
from pallas_kernels import dispatch


class MLAttention(nnx.Module):
    """MLA with the entry points of ``layers.Attention``: ``__call__``, ``prefill``, ``decode``."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        h, dc, dr = cfg.num_heads, cfg.mla_kv_lora_rank, cfg.mla_qk_rope_dim
        dn, dv, dq = cfg.mla_qk_nope_dim, cfg.mla_v_dim, cfg.mla_q_lora_rank
        if dq:
            self.wq_a = dense(rngs, cfg.dim, dq, cfg)
            self.q_norm = RMSNorm(dq, cfg.norm_eps)
        self.wq_b = dense(rngs, dq or cfg.dim, h * (dn + dr), cfg)
        self.wkv_a = dense(rngs, cfg.dim, dc + dr, cfg)
        self.kv_norm = RMSNorm(dc, cfg.norm_eps)
        self.wkv_b = dense(rngs, dc, h * (dn + dv), cfg)  # W_UK and W_UV, per head
        self.wo = dense(rngs, h * dv, cfg.dim, cfg, std=INIT_STD / (2 * cfg.num_layers) ** 0.5)
        if cfg.attention == "sink_logit":
            self.sink_logit = nnx.Param(jnp.zeros((h,), jnp.float32))

    @property
    def inv_freq(self):
        return model_inv_freq(self.cfg.replace(head_dim=self.cfg.mla_qk_rope_dim))

    # -- projections -----------------------------------------------------------------------------
    def _project(self, x):
        """``x [B, T, dim]`` -> ``q_n [B, H, T, dn]``, ``q_r [B, H, T, dr]`` (not rotated),
        ``c [B, 1, T, dc]``, ``k_r [B, 1, T, dr]`` (not rotated)."""
        cfg = self.cfg
        b, t, _ = x.shape
        dc, dn = cfg.mla_kv_lora_rank, cfg.mla_qk_nope_dim
        q = self.wq_b(self.q_norm(self.wq_a(x)) if cfg.mla_q_lora_rank else x)
        q = q.reshape(b, t, cfg.num_heads, -1).transpose(0, 2, 1, 3)
        kv = self.wkv_a(x)[:, None]
        return q[..., :dn], q[..., dn:], self.kv_norm(kv[..., :dc]), kv[..., dc:]

    def _up_weights(self):
        """``W_UK [dc, H, dn]`` and ``W_UV [dc, H, dv]`` in the compute dtype."""
        cfg = self.cfg
        w = self.wkv_b.kernel[...].astype(jnp.dtype(cfg.compute_dtype))
        w = w.reshape(cfg.mla_kv_lora_rank, cfg.num_heads, -1)
        return w[..., :cfg.mla_qk_nope_dim], w[..., cfg.mla_qk_nope_dim:]

    def _scale(self):
        """DeepSeek's logit scale ``1/sqrt(dn + dr)``."""
        return (self.cfg.mla_qk_nope_dim + self.cfg.mla_qk_rope_dim) ** -0.5

    def _attend(self, q_n, q_r, k_r_B1SR, c_B1SC, mask_B11TS, impl, taps=None):
        """``out [B, H, T, dv]`` and the mass each key received, summed over heads
        ``[B, 1, S]``. ``q_r`` and ``k_r`` arrive rotated. A ``taps`` dict (naive path) receives
        ``weights [B, H, T, S]`` and the up-projected ``values [B, H, S, dv]``."""
        cfg = self.cfg
        scale = self._scale()
        sink = None if cfg.attention != "sink_logit" else self.sink_logit[...]
        kw = dict(variant=cfg.attention, scale=scale, sigmoid_bias=cfg.sigmoid_bias)
        w_uk, w_uv = self._up_weights()
        h = cfg.num_heads
        if impl == "absorb":  # one latent "key head" read by H query heads
            q_lat = jnp.einsum("bhtn,chn->bhtc", q_n, w_uk)
            q = jnp.concatenate([q_lat, q_r.astype(q_lat.dtype)], -1)[:, None]  # [B,1,H,T,.]
            k = jnp.concatenate([c_B1SC, k_r_B1SR.astype(c_B1SC.dtype)], -1)
            out_lat, mass = grouped_attention(
                q, k, c_B1SC, mask_B11TS, sink_logit_HG=None if sink is None else sink[None],
                **kw)
            return jnp.einsum("bhtc,chv->bhtv", out_lat[:, 0], w_uv), mass
        k_n = jnp.einsum("bsc,chn->bhsn", c_B1SC[:, 0], w_uk)
        v = jnp.einsum("bsc,chv->bhsv", c_B1SC[:, 0], w_uv)
        s = k_n.shape[2]
        k = jnp.concatenate([k_n, jnp.broadcast_to(k_r_B1SR, (k_n.shape[0], h, s,
                                                             k_r_B1SR.shape[-1]))], -1)
        q = jnp.concatenate([q_n, q_r.astype(q_n.dtype)], -1)[:, :, None]  # [B,H,1,T,.]
        out, mass, *weights = grouped_attention(
            q, k.astype(q.dtype), v, mask_B11TS, return_weights=taps is not None,
            sink_logit_HG=None if sink is None else sink[:, None], **kw)
        if taps is not None:
            taps.update(weights=weights[0][:, :, 0], values=v)
        return out[:, :, 0], mass.sum(axis=1, keepdims=True)

    def _in_window(self, q_pos, k_pos):
        """Broadcast bool: key within the model's sliding window of the query (or no window)."""
        w = self.cfg.sliding_window
        return k_pos > q_pos - w if w else jnp.ones((), bool)

    def _output(self, out_BHTV):
        b, h, t, dv = out_BHTV.shape
        return self.wo(out_BHTV.transpose(0, 2, 1, 3).reshape(b, t, h * dv))

    # -- entry points ----------------------------------------------------------------------------
    def __call__(self, x, pos_BT, taps: dict | None = None):
        """Full causal attention over ``x [B, T, dim]`` at positions ``pos [B, T]``; ``taps``
        as in ``layers.Attention`` (values are the per-head up-projections)."""
        q_n, q_r, c, k_r = self._project(x)
        q_r = apply_rope(q_r, pos_BT[:, None], self.inv_freq)
        k_r = apply_rope(k_r, pos_BT[:, None], self.inv_freq)
        q_pos, k_pos = pos_BT[:, :, None], pos_BT[:, None, :]
        mask = ((k_pos <= q_pos) & self._in_window(q_pos, k_pos))[:, None, None]  # [B,1,1,T,S]
        out, _ = self._attend(q_n, q_r, k_r, c, mask, "naive", taps)
        return self._output(out)

    def prefill(self, x, pos_BT, state, policy: Policy):
        """Attend a chunk over the cache view plus itself, then let the policy store it."""
        q_n, q_r, c, k_r = self._project(x)
        full = policy.view(state)
        view = full.flat()  # [B, 1, F, .]: the latent cache in the view's flat frame
        rope_pos = (pos_BT - full.query_offset[:, None])[:, None]
        q_r = apply_rope(q_r, rope_pos, self.inv_freq)
        k_r_rot = apply_rope(k_r, rope_pos, self.inv_freq)
        cache_k = view.keys if view.keys_rotated else apply_rope(
            view.keys, view.rope_pos, self.inv_freq)
        keys = jnp.concatenate([cache_k.astype(k_r_rot.dtype), k_r_rot], axis=2)
        latent = jnp.concatenate([view.values.astype(c.dtype), c], axis=2)
        chunk_pos = pos_BT[:, None]  # [B, 1, T]
        key_pos = jnp.concatenate([view.key_pos, chunk_pos], axis=2)
        key_ok = jnp.concatenate([view.valid, chunk_pos >= 0], axis=2)
        q_pos = pos_BT[:, None, None, :, None]
        mask = (key_ok[:, :, None, None, :] & (q_pos >= 0)
                & policy.visible(q_pos, key_pos[:, :, None, None, :])
                & self._in_window(q_pos, key_pos[:, :, None, None, :]))
        out, mass = self._attend(q_n, q_r, keys, latent, mask, self.cfg.mla_impl)
        cap = view.keys.shape[2]
        stored = k_r_rot if policy.rope_mode == "original" else k_r
        cfg = self.cfg
        proxy_q = q_r * (cfg.mla_qk_rope_dim / (cfg.mla_qk_nope_dim + cfg.mla_qk_rope_dim)) ** 0.5
        state = policy.prefill(state, stored, c, pos_BT, queries=proxy_q,
                               mass=PrefillMass(cache=mass[..., :cap], chunk=mass[..., cap:]))
        return self._output(out), state

    def decode(self, x, pos_B, state, policy: Policy):
        """One token per row ``x [B, 1, dim]``: insert its latent, attend over the view.

        Under a kernel ``attention_impl`` (softmax, 'absorb') the absorbed MLA kernel reads
        the latent view (``mla_decode_over_view``); entries with a logit bias have no kernel
        ('pallas' raises, 'auto' logs and uses the ``jnp`` path)."""
        cfg = self.cfg
        q_n, q_r, c, k_r = self._project(x)
        if policy.rope_mode == "original":
            k_r = apply_rope(k_r, pos_B[:, None, None], self.inv_freq)
        state = policy.append(state, k_r[:, :, 0], c[:, :, 0], pos_B)
        full = policy.view(state).restrict(
            lambda key_pos: self._in_window(pos_B[:, None, None], key_pos))
        view = full.flat()
        q_r = apply_rope(q_r, (pos_B - full.query_offset)[:, None, None], self.inv_freq)

        def reference():
            keys = view.keys if view.keys_rotated else apply_rope(view.keys, view.rope_pos,
                                                                  self.inv_freq)
            mask = view.valid[:, :, None, None, :]
            return self._attend(q_n, q_r, keys, view.values.astype(c.dtype), mask,
                                cfg.mla_impl)

        def kernel(interpret):
            del interpret  # the MLA op decides (dispatch)
            w_uk, w_uv = self._up_weights()
            q_lat = jnp.einsum("bhn,chn->bhc", q_n[:, :, 0], w_uk)
            out_lat, probs = mla_decode_over_view(
                q_lat, q_r[:, :, 0], full, self.inv_freq, scale=self._scale(),
                impl=cfg.attention_impl)
            return jnp.einsum("bhc,chv->bhv", out_lat, w_uv)[:, :, None], probs

        if cfg.attention == "softmax" and cfg.mla_impl == "absorb":
            reason = (None if view.bias is None else
                      "the MLA kernel takes no entries with a logit bias (compensation tokens)")
            found = dispatch.Kernel(reason, kernel)
            out, slot_probs = dispatch.run("MLAttention.decode", cfg.attention_impl, reference,
                                           gpu=found, tpu=found)
        else:
            out, slot_probs = reference()
        state = policy.observe(state, slot_probs)
        return self._output(out), state
