"""A registry spec built for a batch of prompts: the prompt length it is sized for is the
padded length the cache sees, and DynamicKV's probe is a prefill of those prompts."""

from __future__ import annotations

from collections.abc import Sequence

from lcache.cache import registry
from lcache.eval.batching import pad_prompts
from lcache.eval.engine import Engine


def policy_for_prompts(engine: Engine, spec: str, budget: int, prompts: Sequence[Sequence[int]],
                       *, max_new: int = 0, pad_to: int | None = None, batch: int | None = None,
                       pad_multiple: int = 16, head_scores=None):
    """``registry.build(spec, budget, ...)`` for ``prompts`` padded to ``pad_to`` (default: the
    longest, rounded up to ``pad_multiple``) with room for ``max_new`` new tokens; a probing
    spec (DynamicKV) prefills all ``prompts``, ``batch`` rows at a time. Policies that do not
    depend on the prompts come out equal for every batch of one padded length, so they share
    one compiled program. ``head_scores [L, Hkv]``: the model's head gates / scores for the
    head-wise specs (duo, headkv, razor; ``lcache.cache.duo.load_gates``)."""
    t = pad_prompts(prompts, pad_multiple, pad_to=pad_to)[0].shape[1]

    def probe(policy):
        return engine.prefill(prompts, policy, pad_to=t, batch=batch)

    return registry.build(spec, budget, prompt_len=t, num_layers=engine.cfg.num_layers,
                          max_new=max_new, num_model_sinks=engine.cfg.num_sink_tokens,
                          probe=probe, head_scores=head_scores)
