"""Evaluation: one decode engine (generation, teacher-forced NLL, prefill under any cache
policy, compiled once per policy and shape, counted and timed) and the measurements built on it.
"""

from lcache.eval.batching import check_fits, check_tokens, micro_batches, pad_prompts
from lcache.eval.compiled import Job, ProgramCache, ProgramStats
from lcache.eval.engine import SHARED, Engine, recompute_targets

__all__ = ["SHARED", "Engine", "Job", "ProgramCache", "ProgramStats", "check_fits",
           "check_tokens", "micro_batches", "pad_prompts", "recompute_targets"]
