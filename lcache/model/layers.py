"""Decoder building blocks (Flax NNX): RMSNorm, SwiGLU MLP and the attention block.

The attention block has three entry points sharing one set of weights: ``__call__`` (full causal
sequence, training), ``prefill`` (a chunk over a cache: attend, then let the policy compress) and
``decode`` (one token: let the policy insert, then attend over its view).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from lcache.attention import prefill as attn_prefill
from lcache.attention.core import grouped_attention
from lcache.attention.decode import decode_over_view, kernel_sink
from lcache.cache import KVState, Policy, PrefillMass
from lcache.cache.voting import observed_sum
from lcache.model.config import ModelConfig
from lcache.model.rope import apply_rope, model_inv_freq

INIT_STD = 0.02
FUSED_MULTIPLE = 64  # fused training attention pads the sequence to a multiple of this


def dense(rngs, fan_in, fan_out, cfg: ModelConfig, bias=False, std=INIT_STD):
    return nnx.Linear(fan_in, fan_out, use_bias=bias, dtype=jnp.dtype(cfg.compute_dtype),
                      kernel_init=nnx.initializers.normal(std), rngs=rngs)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...]).astype(x.dtype)


class SwiGLU(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        out_std = INIT_STD / (2 * cfg.num_layers) ** 0.5
        self.gate = dense(rngs, cfg.dim, cfg.ffn_dim, cfg)
        self.up = dense(rngs, cfg.dim, cfg.ffn_dim, cfg)
        self.down = dense(rngs, cfg.ffn_dim, cfg.dim, cfg, std=out_std)

    def __call__(self, x):
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class Attention(nnx.Module):
    """GQA attention with RoPE, optional qkv bias, sink logit, output gate and sliding window.

    ``cfg.sliding_window = W > 0`` lets a query at position ``t`` see keys in ``(t - W, t]``
    (Mistral), in the full forward and, on top of any cache policy, in prefill and decode.
    """

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        hq, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_size
        self.q = dense(rngs, cfg.dim, hq * d, cfg, bias=cfg.qkv_bias)
        self.k = dense(rngs, cfg.dim, hkv * d, cfg, bias=cfg.qkv_bias)
        self.v = dense(rngs, cfg.dim, hkv * d, cfg, bias=cfg.qkv_bias)
        self.o = dense(rngs, hq * d, cfg.dim, cfg, std=INIT_STD / (2 * cfg.num_layers) ** 0.5)
        if cfg.gated_attention:
            self.gate = dense(rngs, cfg.dim, hq * d, cfg)
        if cfg.attention == "sink_logit":
            self.sink_logit = nnx.Param(jnp.zeros((hq,), jnp.float32))

    @property
    def inv_freq(self):
        return model_inv_freq(self.cfg)

    # -- projections -------------------------------------------------------------------------
    def _heads(self, x, n):  # [B, T, n*D] -> [B, n, T, D]
        b, t, _ = x.shape
        return x.reshape(b, t, n, self.cfg.head_size).transpose(0, 2, 1, 3)

    def _qkv(self, x):
        cfg = self.cfg
        return (self._heads(self.q(x), cfg.num_heads), self._heads(self.k(x), cfg.num_kv_heads),
                self._heads(self.v(x), cfg.num_kv_heads))

    def _sink_param(self):  # [Hq] or None
        return self.sink_logit[...] if self.cfg.attention == "sink_logit" else None

    def _sink_logit(self, groups):  # [Hkv, G] or None
        sink = self._sink_param()
        return None if sink is None else sink.reshape(-1, groups)

    def _output(self, x, out_BHGTD):
        """Merge heads, apply the gate (from the layer input ``x``) and the output projection."""
        b, h, g, t, d = out_BHGTD.shape
        out = out_BHGTD.reshape(b, h * g, t, d).transpose(0, 2, 1, 3).reshape(b, t, h * g * d)
        if self.cfg.gated_attention:
            out = out * jax.nn.sigmoid(self.gate(x).astype(jnp.float32)).astype(out.dtype)
        return self.o(out)

    def _attend(self, q_BHqTD, k_BHSD, v_BHSD, mask_BHGTS, return_weights=False, bias_BHS=None):
        b, hq, t, d = q_BHqTD.shape
        h = k_BHSD.shape[1]
        q = q_BHqTD.reshape(b, h, hq // h, t, d)
        return grouped_attention(q, k_BHSD, v_BHSD, mask_BHGTS, variant=self.cfg.attention,
                                 sink_logit_HG=self._sink_logit(hq // h),
                                 sigmoid_bias=self.cfg.sigmoid_bias,
                                 return_weights=return_weights, bias_BHS=bias_BHS)

    def _fused(self, q_BHqTD, k_BHTD, v_BHTD):
        """Causal flash attention through cuDNN (``jax.nn.dot_product_attention``) for training:
        never materialises the ``T x T`` weights. -> ``out [B, Hkv, G, T, D]``, or None where it
        does not apply (other variants or windows, float32 compute, not a GPU, a shape cuDNN
        rejects at trace time)."""
        cfg = self.cfg
        want = cfg.train_attention == "cudnn" or (
            cfg.train_attention == "auto" and jax.default_backend() == "gpu")
        if not want or cfg.attention != "softmax" or cfg.sliding_window or (
                jnp.dtype(cfg.compute_dtype) == jnp.float32):
            return None
        t = q_BHqTD.shape[2]
        pad = -t % FUSED_MULTIPLE  # cuDNN refuses e.g. T = 2049 (2048 + a sink token); causal
        # attention never lets a real query see the zero keys appended after it
        q, k, v = (jnp.pad(a, ((0, 0), (0, 0), (0, pad), (0, 0))).transpose(0, 2, 1, 3)
                   for a in (q_BHqTD, k_BHTD, v_BHTD))  # [B, T + pad, H, D]
        try:
            out_BTHD = jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                    implementation="cudnn")[:, :t]
        except (ValueError, NotImplementedError, RuntimeError) as err:
            if cfg.train_attention == "cudnn":
                raise
            logging.warning("cuDNN attention unavailable (%s); using the XLA path", err)
            return None
        b, t, hq, d = out_BTHD.shape
        h = k_BHTD.shape[1]
        return out_BTHD.transpose(0, 2, 1, 3).reshape(b, h, hq // h, t, d)

    def _in_window(self, q_pos, k_pos):
        """Broadcast bool: key within the model's sliding window of the query (or no window)."""
        w = self.cfg.sliding_window
        return k_pos > q_pos - w if w else jnp.ones((), bool)

    # -- entry points ------------------------------------------------------------------------
    def __call__(self, x, pos_BT, taps: dict | None = None):
        """Full causal attention over ``x [B, T, dim]`` at positions ``pos [B, T]``.

        If ``taps`` is a dict, it receives ``weights [B, Hq, T, T]`` (float32) and
        ``values [B, Hkv, T, D]`` for sink analysis.
        """
        q, k, v = self._qkv(x)
        q = apply_rope(q, pos_BT[:, None], self.inv_freq)
        k = apply_rope(k, pos_BT[:, None], self.inv_freq)
        fused = None if taps is not None else self._fused(q, k, v)  # positions are 0..T-1 here
        if fused is not None:
            return self._output(x, fused)
        q_pos, k_pos = pos_BT[:, :, None], pos_BT[:, None, :]
        mask = ((k_pos <= q_pos) & self._in_window(q_pos, k_pos))[:, None, None]  # [B,1,1,T,S]
        if taps is None:
            out, _ = self._attend(q, k, v, mask)
        else:
            out, _, weights = self._attend(q, k, v, mask, return_weights=True)
            b, h, g, t, s = weights.shape
            taps.update(weights=weights.reshape(b, h * g, t, s), values=v)
        return self._output(x, out)

    def prefill(self, x, pos_BT, state: KVState, policy: Policy):
        """Attend a chunk over the cache view plus itself, then let the policy store it.

        Under a kernel ``attention_impl`` a fresh causal chunk attends through the Pallas
        prefill kernels, any other through the explicit masks (``lcache.attention.prefill``).
        """
        cfg = self.cfg
        q, k, v = self._qkv(x)
        full = policy.view(state)
        view = full.flat()  # [B, H, F, .]: every segment, in the view's flat frame
        rope_pos = (pos_BT - full.query_offset[:, None])[:, None]
        q_rot, k_rot = (apply_rope(q, rope_pos, self.inv_freq),
                        apply_rope(k, rope_pos, self.inv_freq))
        heads, cap = view.keys.shape[1:3]
        reps = heads // cfg.num_kv_heads  # per-query-head caches store repeated KV
        k_rot_c, k_c, v_c = (jnp.repeat(a, reps, axis=1) for a in (k_rot, k, v))
        kernel = attn_prefill.uses_kernel(cfg.attention_impl, cfg.attention,
                                          cfg.sliding_window, policy)
        window = policy.observation_window if kernel else None

        def masked():
            cache_keys = view.keys if view.keys_rotated else apply_rope(
                view.keys, view.rope_pos, self.inv_freq)
            keys = jnp.concatenate([cache_keys.astype(k_rot_c.dtype), k_rot_c], axis=2)
            values = jnp.concatenate([view.values.astype(v_c.dtype), v_c], axis=2)
            chunk_pos = jnp.broadcast_to(pos_BT[:, None], k_c.shape[:3])
            key_pos = jnp.concatenate([view.key_pos, chunk_pos], axis=2)  # [B, H, S]
            key_ok = jnp.concatenate([view.valid, chunk_pos >= 0], axis=2)
            q_pos = pos_BT[:, None, None, :, None]  # [B,1,1,T,1]
            mask = (key_ok[:, :, None, None, :] & (q_pos >= 0)
                    & policy.visible(q_pos, key_pos[:, :, None, None, :])
                    & self._in_window(q_pos, key_pos[:, :, None, None, :]))
            bias = None if view.bias is None else jnp.concatenate(
                [view.bias, jnp.zeros(chunk_pos.shape, jnp.float32)], axis=2)
            out, mass = self._attend(q_rot, keys, values, mask, bias_BHS=bias)
            votes = None if window is None else observed_sum(q_rot, pos_BT, window, keys,
                                                             key_pos)
            b, h, g, t, d = out.shape
            return out.reshape(b, h * g, t, d), PrefillMass(mass[..., :cap], mass[..., cap:],
                                                            votes)

        def fused():
            sink = kernel_sink(cfg.attention, self._sink_param(), cfg.num_heads)
            return attn_prefill.kernel_chunk(q_rot, k_rot, v, pos_BT, cache_heads=heads,
                                             capacity=cap, sink_Hq=sink, window=window,
                                             impl=cfg.attention_impl)

        out, mass = (jax.lax.cond(attn_prefill.fresh_chunk(view.valid, pos_BT), fused, masked)
                     if kernel else masked())
        stored = k_rot_c if policy.rope_mode == "original" else k_c
        state = policy.prefill(state, stored, v_c, pos_BT, queries=q_rot, mass=mass)
        return self._output(x, out[:, :, None]), state

    def decode(self, x, pos_B, state: KVState, policy: Policy):
        """One token per row ``x [B, 1, dim]``: insert it, attend over the view, give feedback."""
        q, k, v = self._qkv(x)
        if policy.rope_mode == "original":
            k = apply_rope(k, pos_B[:, None, None], self.inv_freq)
        cfg = self.cfg
        reps = policy.cache_heads(cfg.num_kv_heads, cfg.num_heads) // cfg.num_kv_heads
        k, v = jnp.repeat(k, reps, axis=1), jnp.repeat(v, reps, axis=1)
        state = policy.append(state, k[:, :, 0], v[:, :, 0], pos_B)
        view = policy.view(state).restrict(
            lambda key_pos: self._in_window(pos_B[:, None, None], key_pos))
        q_rot = apply_rope(q, (pos_B - view.query_offset)[:, None, None], self.inv_freq)
        out_BHqD, slot_probs = decode_over_view(
            q_rot[:, :, 0], view, self.inv_freq, variant=self.cfg.attention,
            sink_logit=self._sink_param(),
            sigmoid_bias=self.cfg.sigmoid_bias, impl=self.cfg.attention_impl,
            feedback=policy.reads_feedback)
        if policy.reads_feedback:
            state = policy.observe(state, slot_probs)
        b, hq, d = out_BHqD.shape
        h = view.num_heads
        return self._output(x, out_BHqD.reshape(b, h, hq // h, 1, d)), state
