"""Generation with any cache policy: prefill + ``lax.while_loop`` decode under one ``jit``.

A thin public wrapper over ``lcache.eval.Engine.generate`` (the one decode engine): generating
N tokens compiles once per (policy, sampling, padded prompt shape), never per step, and the
compiled program is shared by every call with the same model graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lcache.cache import Policy
from lcache.eval import Engine
from lcache.eval.batching import check_fits, pad_prompts
from lcache.sampling import Sampling

__all__ = ["check_fits", "generate", "pad_prompts"]


def generate(model, prompts: Sequence[Sequence[int]], policy: Policy | Sequence[Policy],
             sampling: Sampling | None = None, seed: int = 0, pad_multiple: int = 16
             ) -> list[np.ndarray]:
    """Generate continuations of token-id prompts -> one int32 array per prompt.

    A row stops after its ``sampling.eos_id`` (included) or ``max_new_tokens``
    (``sampling=None``: greedy, 32 tokens). All prompts run as one batch; for fixed shapes and
    micro-batches use ``Engine.generate(..., pad_to=, batch=)``.
    """
    return Engine.create(model).generate(prompts, policy, sampling, seed=seed,
                                         pad_multiple=pad_multiple)
