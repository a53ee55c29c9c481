"""The RULER-style suite under cache policies: which policy wins, at what memory, on which task.

A **cell** is (policy spec, budget fraction, context). Its examples (every task, depth and
trial of ``lcache.data.ruler.make_suite`` at that context) run as one batch of greedy
generations through ``Engine.generate`` in fixed micro-batches padded to the context, so every
cell is one compiled program, shared by all its tasks and depths; the cells of a score-based
spec whose budget only sets its capacity (SnapKV, TOVA, key norm, random) also share one program
across budgets (budget as data, ``share_budgets``). The programs of a context are
compiled ahead of time in threads (``Engine.precompile``) before its first cell runs (a run cut
short keeps whole contexts); the engine's report says where the time went.

The budget of a cell is ``round(budget_frac * context)`` tokens per layer and head (sinks and
windows included, ``lcache.cache.registry``); ``dense`` and the full-cache quantized specs
(``dense@...``) run at ``budget_frac = 1`` only. DynamicKV allocates its per-layer budgets from
a probe prefill of the cell's first ``probe_rows`` prompts (the reference allocates per prompt;
one allocation per cell keeps the batch on one program).

``question_after_compression``: every prompt is prefilled as two chunks, its context and then
its question (``TaskExample.question_at``), so a policy compresses the context without knowing
the question — the setting of a cache reused for several questions (KVzip), where query-aware
selection (SnapKV) has no question to vote with and query-agnostic scores should win.

Head-wise specs that read the model's head scores (``duo``, ``headkv``, ``razor``: their
registry entries need ``head_scores``) get them from ``head_scores``, a mapping from the
policy's registry name to ``[L, Hkv]`` scores (``load_head_scores`` reads the gate files of
``experiments.head_gates``), checked against the model's shape before any work.

Rows: ``policy, budget_frac, task, context, depth, trials, accuracy, cache_bytes`` with
``cache_bytes`` the bytes of all layers' caches for one sequence at the storage's dtypes (keys,
values, positions, scores, quantization scales: ``lcache.cache.cache_bytes``), as allocated:
head groups (DuoAttention, RazorAttention, HeadKV) count each group's heads at its own
capacity, AdaKV / ExpectedAttention pools their ``H * budget`` entries and per-head rings.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from absl import logging

from lcache.cache import ScoredPolicy, cache_bytes, duo, registry
from lcache.data import ruler
from lcache.eval.batching import split_questions
from lcache.eval.engine import Engine
from lcache.eval.progress import Progress
from lcache.sampling import Sampling

FULL = "dense"  # specs whose name is this run at budget_frac = 1 only


@dataclasses.dataclass(frozen=True)
class Cell:
    """One policy at one budget and context."""

    spec: str
    budget_frac: float
    context: int

    @property
    def budget(self) -> int:
        return registry.round_half_up(self.budget_frac * self.context)

    @property
    def full(self) -> bool:
        return registry.parse(self.spec).name == FULL


def grid(specs: Sequence[str], fracs: Sequence[float], contexts: Sequence[int]) -> list[Cell]:
    """Every spec at every budget fraction and context; full-cache specs at fraction 1 only."""
    if not specs or not fracs or not contexts:
        raise ValueError("specs, fracs and contexts must be non-empty")
    bad = [f for f in fracs if not 0 < f <= 1]
    if bad:
        raise ValueError(f"budget fractions must lie in (0, 1], got {bad}")
    cells = []
    for context in contexts:
        for spec in specs:
            full = registry.parse(spec).name == FULL
            cells += [Cell(spec, 1.0 if full else float(f), int(context))
                      for f in ((1.0,) if full else fracs)]
    return cells


def uses_head_scores(spec: str) -> bool:
    """True for a spec whose policy reads the model's head scores (duo, headkv, razor)."""
    entry = registry.REGISTRY.get(registry.parse(spec).name)  # unknown: registry.check says
    return entry is not None and "head_scores" in entry.needs


def load_head_scores(files: Mapping[str, str], cfg) -> dict[str, np.ndarray]:
    """``{policy name: path}`` of gate files (``duo.save_gates``'s format, written by
    ``experiments.head_gates``) -> ``{policy name: scores [L, Hkv]}``; ValueError naming the
    file when it belongs to another model shape."""
    return {name: duo.load_gates(path, num_layers=cfg.num_layers,
                                 num_kv_heads=cfg.cache_dims[0])
            for name, path in files.items()}


def _scores_of(spec: str, head_scores: Mapping[str, np.ndarray], cfg):
    """The ``[L, Hkv]`` head scores ``spec`` reads (None for specs that read none)."""
    if not uses_head_scores(spec):
        return None
    name = registry.parse(spec).name
    if name not in head_scores:
        raise ValueError(f"{name} reads the model's head scores: give head_scores[{name!r}] "
                         "([L, Hkv], e.g. a gate file of experiments.head_gates); got scores "
                         f"for {sorted(head_scores) or 'no policy'}")
    scores, want = np.asarray(head_scores[name]), (cfg.num_layers, cfg.cache_dims[0])
    if scores.shape != want:
        raise ValueError(f"head_scores[{name!r}] has shape {scores.shape}, the model has "
                         f"{want[0]} layers x {want[1]} KV heads (scores of another model?)")
    return scores


def check_cells(cells: Sequence[Cell], cfg, max_new: int,
                head_scores: Mapping[str, np.ndarray] | None = None) -> None:
    """Raise ValueError (before any work) for a spec the registry refuses at its budget, or
    head scores (``{policy name: [L, Hkv]}``) missing or of another model's shape."""
    for c in cells:
        try:
            registry.check(c.spec, c.budget, prompt_len=c.context, num_layers=cfg.num_layers,
                           max_new=max_new, num_model_sinks=cfg.num_sink_tokens,
                           head_scores=_scores_of(c.spec, head_scores or {}, cfg))
        except ValueError as err:
            raise ValueError(f"cell {c.spec} at {c.budget_frac:g} of context {c.context} "
                             f"({c.budget} tokens): {err}") from err


def cell_policy(engine: Engine, cell: Cell, prompts: Sequence[np.ndarray], max_new: int,
                probe_rows: int, head_scores: Mapping[str, np.ndarray] | None = None,
                question_at: Sequence[int] | None = None):
    """The policy of ``cell`` (DynamicKV probes the first ``probe_rows`` prompts, split at
    ``question_at`` if given; head-wise specs read their ``head_scores``)."""
    def probe(policy):
        cut = None if question_at is None else list(question_at[:probe_rows])
        return engine.prefill(list(prompts[:probe_rows]), policy, pad_to=cell.context,
                              batch=min(probe_rows, len(prompts)), question_at=cut)

    return registry.build(cell.spec, cell.budget, prompt_len=cell.context,
                          num_layers=engine.cfg.num_layers, max_new=max_new,
                          num_model_sinks=engine.cfg.num_sink_tokens, probe=probe,
                          head_scores=_scores_of(cell.spec, head_scores or {}, engine.cfg))


def policy_bytes(policy, cfg) -> int:
    """Bytes of all layers' caches for one sequence (bf16 full-precision storage), each layer
    its state's arrays as allocated (head groups: every group at its own capacity)."""
    layers = tuple(policy) if isinstance(policy, tuple) else (policy,) * cfg.num_layers
    kv, q, dk, _ = cfg.cache_dims
    return cache_bytes(layers, 1, kv, dk, q_heads=q)


def share_budgets(policies: dict[Cell, object]) -> dict[Cell, object]:
    """Budget as data: cells of one spec and context whose policies differ only in their
    ``budget`` field (score-based policies with a fixed protected window: SnapKV, TOVA, key norm,
    random) run the policy built at their largest budget, each row keeping its own
    (``Engine.generate(budgets=...)``): one program for all of them -> ``{cell: shared policy}``
    (cells that cannot share are left out). Cache bytes stay those of each cell's own policy."""
    groups: dict[tuple[str, int], list[Cell]] = {}
    for c in policies:
        groups.setdefault((c.spec, c.context), []).append(c)
    out = {}
    for cells in groups.values():
        big = policies[max(cells, key=lambda c: c.budget)]
        if len(cells) < 2 or not isinstance(big, ScoredPolicy) or "budget" not in {
                f.name for f in dataclasses.fields(big)}:
            continue
        if all(dataclasses.replace(big, budget=policies[c].budget) == policies[c] for c in cells):
            out.update({c: big for c in cells})
    return out


def _needs_probe(spec: str) -> bool:
    return "probe" in registry.REGISTRY[registry.parse(spec).name].needs


def run_suite(engine: Engine, tok, examples: Sequence[ruler.TaskExample], cells: Sequence[Cell],
              *, batch: int, threads: int = 8, probe_rows: int = 32,
              head_scores: Mapping[str, np.ndarray] | None = None,
              question_after_compression: bool = False,
              on_cell: Callable[[Cell, list[dict]], None] | None = None,
              progress: Progress | None = None) -> list[dict]:
    """Every cell over the ``examples`` of its context -> result rows (see module docstring).

    ``batch`` rows per micro-batch; ``threads`` concurrent compilations; ``head_scores``:
    ``{policy name: [L, Hkv]}`` for the head-wise specs (module docstring);
    ``question_after_compression``: each prompt's context is prefilled, and compressed, before
    its question arrives as a second chunk (one compressed context serving later questions:
    query-aware selection no longer sees the question); ``on_cell`` is called with each
    finished cell's rows (partial CSVs); ``progress`` (default: a bar of its own over the
    cells) steps once per cell."""
    max_new = max(ruler.MAX_NEW_TOKENS[e.task] for e in examples)
    check_cells(cells, engine.cfg, max_new, head_scores)
    by_context: dict[int, list] = {}
    for e in examples:
        by_context.setdefault(e.context, []).append(e)
    missing = sorted({c.context for c in cells} - set(by_context))
    if missing:
        raise ValueError(f"no examples at contexts {missing}")
    sampling = Sampling(max_new_tokens=max_new)
    rows, progress = [], progress or Progress(len(cells), "cells")
    for context in dict.fromkeys(c.context for c in cells):  # compile, then run, per context
        group = [c for c in cells if c.context == context]
        exs = by_context[context]
        prompts = [e.prompt_ids for e in exs]
        question_at = [e.question_at for e in exs] if question_after_compression else None
        question_to = (0 if question_at is None else
                       split_questions(prompts, question_at)[1].shape[1])  # padded question
        own = {c: cell_policy(engine, c, [], max_new, probe_rows, head_scores) for c in group
               if not _needs_probe(c.spec)}
        shared = share_budgets(own)
        programs = {(shared.get(c, p), c in shared): None for c, p in own.items()}
        jobs = [j for p, rows_budgets in programs for j in engine.generate_jobs(
            p, sampling, pad_to=context, batch=batch, row_budgets=rows_budgets,
            question_to=question_to)]
        start = time.perf_counter()
        engine.precompile(jobs, threads)
        logging.info("context %d: %d programs precompiled in %.1f s (%d threads)", context,
                     len(jobs), time.perf_counter() - start, threads)
        for cell in group:
            policy = own.get(cell) or cell_policy(engine, cell, prompts, max_new, probe_rows,
                                                  head_scores, question_at)
            budgets = [cell.budget] * len(prompts) if cell in shared else None
            outs = engine.generate(prompts, shared.get(cell, policy), sampling, pad_to=context,
                                   batch=batch, budgets=budgets, question_at=question_at)
            ok = np.array([ruler.score(e, tok.decode(o.tolist()))
                           for e, o in zip(exs, outs, strict=True)])
            cell_rows = summarize(cell, exs, ok, policy_bytes(policy, engine.cfg))
            rows += cell_rows
            if on_cell:
                on_cell(cell, cell_rows)
            progress.step(f"{cell.spec} {cell.budget_frac:g} ctx {context}: {ok.mean():.2f}")
    return rows


def summarize(cell: Cell, examples: Sequence[ruler.TaskExample], solved: np.ndarray,
              nbytes: int) -> list[dict]:
    """One row per (task, depth) of a cell."""
    groups: dict[tuple[str, float], list[bool]] = {}
    for e, ok in zip(examples, solved, strict=True):
        groups.setdefault((e.task, e.depth), []).append(bool(ok))
    return [dict(policy=cell.spec, budget_frac=cell.budget_frac, task=task,
                 context=cell.context, depth=depth, trials=len(v), accuracy=float(np.mean(v)),
                 cache_bytes=nbytes)
            for (task, depth), v in groups.items()]
