"""Cache bytes per token for any storage + policy combination, from the real array sizes.

Sizes come from ``jax.eval_shape`` of each layer's ``policy.init`` (nothing is allocated), so
codes, scales, residual rings, sink buffers and the policy's own metadata (``pos``/``score``,
8 bytes per slot and head) are all counted as they are stored. Fixed-size parts (the residual
ring, sinks) are amortised over the capacity: bytes per token = ``Σ_layers bytes_l / C_l``, the
cost of one token held in every layer (for uniform capacities: total bytes / capacity).

``model_cfg`` is duck-typed (no model import): it needs ``num_layers`` and ``cache_dims``
(``(kv_heads, q_heads, key_dim, value_dim)``), plus ``replace`` and the ``mla_*`` fields for
:func:`table_rows`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from lcache.cache.base import Dense, Policy
from lcache.cache.quantized import Quantized

# the selection policy's bookkeeping, not K/V data
METADATA = ("pos", "score", "seen", "owner", "ring_pos", "start")


def layer_bytes(model_cfg, policy: Policy, batch: int = 1, dtype=jnp.bfloat16) -> dict:
    """``{field: bytes}`` of one layer's state for ``policy`` (the state's dataclass fields; a
    composite state, e.g. head groups, sums its parts' fields of one name)."""
    kv_heads, q_heads, key_dim, value_dim = model_cfg.cache_dims
    state = jax.eval_shape(lambda: policy.init(
        batch, policy.cache_heads(kv_heads, q_heads), key_dim, dtype, value_dim))
    out: dict[str, int] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        name = next(k.name for k in reversed(path) if isinstance(k, jax.tree_util.GetAttrKey))
        out[name] = out.get(name, 0) + int(leaf.size) * leaf.dtype.itemsize
    return out


def cache_bytes_per_token(model_cfg, policy: Policy | Sequence[Policy], batch: int = 1,
                          dtype=jnp.bfloat16, metadata: bool = True) -> float:
    """Bytes one token costs across all layers (per batch row). ``policy``: one for every layer
    or one per layer. ``metadata=False`` leaves out the policy's ``pos``/``score``/``seen``."""
    policies = ((policy,) * model_cfg.num_layers if isinstance(policy, Policy)
                else tuple(policy))
    if len(policies) != model_cfg.num_layers:
        raise ValueError(f"got {len(policies)} policies for {model_cfg.num_layers} layers")
    total = 0.0
    for p in policies:
        sizes = layer_bytes(model_cfg, p, batch, dtype)
        kept = sum(v for k, v in sizes.items() if metadata or k not in METADATA)
        total += kept / (batch * p.capacity)
    return total


def _variants(model_cfg):
    """``[(name, cfg)]``: MHA, GQA (when the config groups heads) and MLA of the same shape.
    A non-MLA config gets DeepSeek's proportions: ``dc = 4 d_h``, ``dr = d_h / 2``."""
    base = model_cfg.replace(mla_kv_lora_rank=0)
    d = base.head_size
    out = [("MHA", base.replace(num_kv_heads=base.num_heads))]
    if base.num_kv_heads != base.num_heads:
        out.append((f"GQA-{base.num_kv_heads}", base))
    mla = model_cfg if model_cfg.use_mla else base.replace(
        mla_kv_lora_rank=4 * d, mla_qk_rope_dim=max(2, d // 2), mla_qk_nope_dim=d, mla_v_dim=d,
        gated_attention=False, attention_impl="xla")
    out.append(("MLA", mla))
    return out


def table_rows(model_cfg, capacity: int = 4096, bits: Sequence[int] = (8, 4, 2),
               group: int = 32, residual: int = 128, keep_sinks: int = 4) -> list[dict]:
    """Rows of the README bytes-per-token table: for MHA, GQA and MLA of ``model_cfg``, a bf16
    ``Dense(capacity)`` cache and KIVI int8/int4/int2 with and without ``keep_sinks`` sinks.

    Each row: ``attention, storage, sinks, bytes_per_token`` (all arrays), ``kv_bytes_per_token``
    (without the policy's metadata) and ``vs_mha_bf16`` (ratio of ``bytes_per_token``).
    """
    dense = Dense(capacity)
    rows = []
    for name, cfg in _variants(model_cfg):
        storages = [("bf16", 0, dense)] + [
            (f"int{b}", n, Quantized(dense, b, group, residual, n))
            for b in bits for n in (0, keep_sinks)]
        for storage, sinks, policy in storages:
            rows.append(dict(attention=name, storage=storage, sinks=sinks,
                             bytes_per_token=cache_bytes_per_token(cfg, policy),
                             kv_bytes_per_token=cache_bytes_per_token(cfg, policy,
                                                                      metadata=False)))
    ref = rows[0]["bytes_per_token"]
    for r in rows:
        r["vs_mha_bf16"] = r["bytes_per_token"] / ref
    return rows


def markdown_table(rows: Sequence[dict]) -> str:
    """The rows of :func:`table_rows` as a markdown table."""
    lines = ["| attention | storage | sinks | bytes/token | K/V bytes/token | vs MHA bf16 |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['attention']} | {r['storage']} | {r['sinks']} | {r['bytes_per_token']:.1f} "
              f"| {r['kv_bytes_per_token']:.1f} | {r['vs_mha_bf16']:.3f} |" for r in rows]
    return "\n".join(lines)
