"""Evaluation: one decode engine (generation, teacher-forced NLL, prefill under any cache
policy, compiled once per policy and shape, counted and timed) and the measurements built on it:
the StreamingLLM comparison, perplexities on common targets, result tables.
"""

from lcache.eval.batching import check_fits, check_tokens, micro_batches, pad_prompts
from lcache.eval.compiled import Job, ProgramCache, ProgramStats
from lcache.eval.engine import SHARED, Engine
from lcache.eval.models import RANDOM_MODELS, load_reference
from lcache.eval.nll import recompute_targets
from lcache.eval.perplexity import chunk_curve, common_ppl, common_targets, ppl
from lcache.eval.progress import Progress
from lcache.eval.report import markdown, write_csv
from lcache.eval.streaming import Run, curve_rows, save_nll, streaming_runs, summary_rows

__all__ = ["RANDOM_MODELS", "SHARED", "Engine", "Job", "ProgramCache", "ProgramStats", "Progress",
           "Run", "check_fits", "check_tokens", "chunk_curve", "common_ppl", "common_targets",
           "curve_rows", "load_reference", "markdown", "micro_batches", "pad_prompts", "ppl",
           "recompute_targets", "save_nll", "streaming_runs", "summary_rows", "write_csv"]
