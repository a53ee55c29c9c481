"""Budgets: token counts or prompt fractions, per-layer allocators and the bytes they cost.

Allocators return one capacity per layer (Python ints, window included); ``per_layer`` turns them
into a tuple of policies, which the model stores as caches of different sizes (the memory saving
is real, not a mask). Allocation needs the prompt length, a static shape, so it runs on the host
before tracing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from lcache.cache import validate as v
from lcache.cache.base import Policy

ROUNDINGS = ("factory", "kvpress")


@dataclasses.dataclass(frozen=True)
class Budget:
    """Tokens kept per layer and head: ``Budget(tokens=n)`` or ``Budget(fraction=f)`` of the
    prompt. ``Budget.from_compression_ratio(r)`` is kvpress's ``compression_ratio``."""

    tokens: int | None = None
    fraction: float | None = None

    def __post_init__(self):
        if (self.tokens is None) == (self.fraction is None):
            raise ValueError(f"Budget needs exactly one of tokens / fraction, got "
                             f"tokens={self.tokens}, fraction={self.fraction}")
        v.check_fields(self, tokens=v.optional(v.integer(1)),
                       fraction=v.optional(v.real(0, 1, lo_open=True)))

    @classmethod
    def from_compression_ratio(cls, ratio: float) -> Budget:
        if not 0 <= ratio < 1:
            raise ValueError(f"compression ratio must be in [0, 1), got {ratio}")
        return cls(fraction=1 - ratio)

    def exact(self, prompt_len: int) -> float:
        """Unrounded tokens (kvpress's PyramidKV works with ``T * (1 - ratio)`` as a float)."""
        return float(self.tokens) if self.tokens is not None else prompt_len * self.fraction

    def resolve(self, prompt_len: int) -> int:
        """Tokens for a ``prompt_len``-token prompt: ``max(1, int(T * fraction))`` as kvpress's
        ``compute_n_kept``. A token count beyond the prompt is an error (nothing to compress)."""
        if prompt_len < 1:
            raise ValueError(f"prompt_len must be >= 1, got {prompt_len}")
        if self.tokens is not None:
            if self.tokens > prompt_len:
                raise ValueError(f"budget of {self.tokens} tokens is larger than the "
                                 f"{prompt_len}-token prompt: nothing would be compressed")
            return self.tokens
        return max(1, int(prompt_len * self.fraction))


def uniform(budget: int, num_layers: int) -> tuple[int, ...]:
    """The same capacity in every layer."""
    if budget < 1 or num_layers < 1:
        raise ValueError(f"uniform needs budget >= 1 and num_layers >= 1, got {budget}, "
                         f"{num_layers}")
    return (budget,) * num_layers


def pyramid(budget: int | Budget, num_layers: int, prompt_len: int, window: int = 8,
            beta: float = 20, rounding: str = "factory") -> tuple[int, ...]:
    """PyramidKV (Cai et al.): an arithmetic sequence of capacities, largest in layer 0, whose
    mean is the uniform budget (algorithms.md §4).

    ``rounding='factory'`` is KVCache-Factory ``PyramidKVCluster`` with ``budget`` tokens
    including the window: integer steps ``(max - min) // (L - 1)`` (so the last layer can get a
    few more than the paper's ``k_total / (beta L)``: 25, not 14, for 32 layers at 128), no
    compression if the prompt is shorter than the budget, a uniform budget if shorter than
    ``2 * (budget - window)``. ``rounding='kvpress'`` is kvpress
    0.5.5 ``PyramidKVPress.get_layer_budget``: float arithmetic on ``k = T * (1 - ratio)``, Python
    ``round``, a uniform ``max(1, round(k))`` when the schedule is infeasible.
    """
    v.check_args("pyramid", beta=(beta, v.real(0, lo_open=True)))
    if num_layers < 1 or prompt_len < 1 or window < 0:
        raise ValueError(f"pyramid needs num_layers >= 1, prompt_len >= 1, window >= 0; got "
                         f"{num_layers}, {prompt_len}, {window}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"pyramid rounding must be one of {ROUNDINGS}, got {rounding!r}")
    t, last = prompt_len, max(num_layers - 1, 1)
    if rounding == "kvpress":
        k = budget.exact(t) if isinstance(budget, Budget) else float(budget)
        min_num = k / beta
        max_num = 2 * k - min_num
        if max_num >= t - window:
            max_num = t - window
            min_num = 2 * k - max_num
        if not t >= max_num >= min_num >= window:
            return (max(1, round(k)),) * num_layers
        steps = (max_num - min_num) / last if num_layers > 1 else 0.0
        return tuple(round(max_num - layer * steps) for layer in range(num_layers))
    cap = budget.resolve(t) if isinstance(budget, Budget) else int(budget)
    if cap <= window:
        raise ValueError(f"pyramid budget={cap} must exceed window={window}")
    if t < cap:
        return (t,) * num_layers
    if t < 2 * (cap - window):
        return (cap,) * num_layers
    min_num = int((cap - window) // beta)
    max_num = 2 * (cap - window) - min_num
    if max_num >= t - window:
        max_num = t - window
        min_num = 2 * (cap - window) - max_num
    steps = (max_num - min_num) // last if num_layers > 1 else 0
    return tuple(max_num - layer * steps + window for layer in range(num_layers))


def dynamic(probe_states: Sequence, budget: int, window: int = 8,
            r_max: float = 10) -> tuple[int, ...]:
    """DynamicKV (Zhou et al., 2025) per-layer capacities from a first, probing prefill.

    Our model prefills layer by layer inside one call, so DynamicKV is two passes: (1) prefill
    with ``SnapKV(budget=prompt_len, window=8, kernel=7, decode_capacity=0)`` in every layer
    (keeps everything and stores each token's pooled vote in ``state.score``); (2)
    ``dynamic(probe_caches, budget)`` gives capacities for ``per_layer(SnapKV...)`` and the
    prompt is prefilled again.

    Rule (algorithms.md §5a, after DreamMr/DynamicKV ``DynamicKVClusterV11``; one global
    reallocation after all layers, where the reference enforces the total): with
    ``base = budget - window`` and ``B_max = min(r_max * base, T - window)``, each head offers
    its ``B_max`` best prefix scores; the global top ``base * heads * layers`` (over the batch
    too) are counted per layer; layer ``l`` gets ``count_l / (batch * heads)`` tokens plus the
    window, rounded by largest remainder so the total stays ``budget * layers``. Runs on the
    host (capacities are static shapes).
    """
    base = budget - window
    if base < 1:
        raise ValueError(f"dynamic budget={budget} must exceed window={window}")
    if r_max < 1:
        raise ValueError(f"dynamic r_max must be >= 1, got {r_max}")
    offers, rows = [], None
    for state in probe_states:
        pos, seen = np.asarray(state.pos), np.asarray(state.seen)[:, None, None]
        prefix = (pos >= 0) & (pos < seen - window)
        score = np.where(prefix, np.asarray(state.score, np.float64), -np.inf)
        rows = score.shape[0] * score.shape[1]
        b_max = int(min(r_max * base, prefix.sum(-1).max()))
        offers.append(-np.sort(-score, axis=-1)[..., :b_max].reshape(-1))
    if not offers:
        raise ValueError("dynamic needs at least one probe state")
    layer_of = np.concatenate([np.full(o.size, i) for i, o in enumerate(offers)])
    scores = np.concatenate(offers)
    n_win = min(base * rows * len(offers), int(np.isfinite(scores).sum()))
    winners = layer_of[np.argsort(-scores, kind="stable")[:n_win]]
    share = np.bincount(winners, minlength=len(offers)) / rows
    alloc = np.floor(share).astype(int)
    short = int(round(share.sum())) - alloc.sum()
    for i in np.argsort(-(share - alloc), kind="stable")[:short]:
        alloc[i] += 1
    return tuple(int(a) + window for a in alloc)


def per_layer(policy_factory: Callable[[int], Policy], budgets: Sequence[int]
              ) -> tuple[Policy, ...]:
    """One policy per layer: ``per_layer(lambda b: SnapKV(budget=b), pyramid(...))``."""
    return tuple(policy_factory(int(b)) for b in budgets)


def layer_policies(policy: Policy | Sequence[Policy], num_layers: int) -> tuple[Policy, ...]:
    """One policy per layer from a policy (shared by every layer) or ``num_layers`` policies."""
    if isinstance(policy, Policy):
        return (policy,) * num_layers
    if not isinstance(policy, Sequence) or not all(isinstance(p, Policy) for p in policy):
        raise TypeError(f"policy must be a cache Policy or a sequence of one Policy per layer, "
                        f"got {type(policy).__name__} {policy!r:.200}")
    if len(policy) != num_layers:
        raise ValueError(f"got {len(policy)} per-layer policies for {num_layers} layers")
    return tuple(policy)


def cache_bytes(policies: Policy | Sequence[Policy], batch: int, heads: int, head_dim: int,
                dtype=jnp.bfloat16, q_heads: int | None = None) -> int:
    """Bytes of all layers' cache states (keys, values, positions, scores) without allocating;
    ``heads`` KV heads, ``q_heads`` query heads for per-query-head policies (default ``heads``)."""
    policies = (policies,) if isinstance(policies, Policy) else tuple(policies)
    return sum(p.nbytes(batch, p.cache_heads(heads, q_heads or heads), head_dim, dtype=dtype)
               for p in policies)
