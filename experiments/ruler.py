"""The RULER-style suite under cache policies: which policy wins, at what memory, on which task.

    python -m experiments.ruler --config=configs/ruler.py:gpu --workdir=runs/ruler

Every registry spec in ``policies`` x ``budget_fracs`` of the context x ``contexts``, each cell
one compiled program over all ``tasks`` x ``depths`` x ``trials`` (``lcache.eval.suite``).
Head-wise specs that read the model's head scores (duo, headkv, razor) load the gate file named
by ``gate_files[<policy name>]`` from the directory ``gates`` (``experiments.head_gates``'s
output for this model: another model's shape is refused before any cell runs); with ``gates``
empty, the run first writes the proxies (DuoAttention's calibration proxy, RazorAttention's
retrieval heads; ``head_gates`` config, no optimisation) for this model to ``<workdir>/gates``.
With ``question_after_compression`` every prompt's context is prefilled (and compressed) before
its question arrives (``lcache.eval.suite``). Writes to ``--workdir``:

  ruler.csv             policy,budget_frac,task,context,depth,trials,accuracy,cache_bytes
                        (rewritten after every cell, so a cut run keeps what it finished;
                        ``--config.resume`` runs only the cells it lacks)
  ruler_heatmap_<f>.png accuracy depth x context per policy at budget fraction f
  ruler_pareto_<n>.png  accuracy vs cache bytes per task at context n, Pareto front
and prints mean accuracy per policy x budget and per policy x task, and the engine's report.
"""

from __future__ import annotations

import csv
import os
import time

import numpy as np
from absl import logging

from experiments.common import cli, experiment
from lcache.analysis.head_gates import write_head_gates
from lcache.cache import registry
from lcache.data import ruler
from lcache.data.heldout import heldout_tokens
from lcache.eval import (
    Engine,
    ProgramCache,
    load_reference,
    markdown,
    suite,
    suite_plots,
    write_csv,
)


def table(rows: list[dict], column: str) -> list[dict]:
    """Mean accuracy per (policy, budget) row and ``column`` value."""
    out: dict[tuple, dict] = {}
    for r in rows:
        key = (r["policy"], r["budget_frac"])
        cell = out.setdefault(key, dict(policy=r["policy"], budget=f"{r['budget_frac']:g}"))
        cell.setdefault(str(r[column]), []).append(r["accuracy"])
    return [{k: f"{np.mean(v):.2f}" if isinstance(v, list) else v for k, v in row.items()}
            for row in out.values()]


def read_rows(path: str) -> list[dict]:
    """Rows of an earlier ``ruler.csv`` with their types (a cut run is resumed from them)."""
    types = dict(budget_frac=float, context=int, depth=float, trials=int, accuracy=float,
                 cache_bytes=int)
    with open(path) as f:
        return [{k: types.get(k, str)(v) for k, v in r.items()} for r in csv.DictReader(f)]


def gate_files(c, cells, workdir: str) -> dict[str, str]:
    """``{policy name: gate file}`` for the head-wise specs among ``cells`` (see the module
    docstring); computes the proxies into ``<workdir>/gates`` when ``c.gates`` is empty."""
    names = sorted({registry.parse(x.spec).name for x in cells if suite.uses_head_scores(x.spec)})
    if not names:
        return {}
    missing = [n for n in names if n not in c.gate_files]
    if missing:
        raise ValueError(f"config.gate_files names no gate file for {missing} (it has "
                         f"{sorted(c.gate_files)})")
    folder = c.gates or os.path.join(workdir, "gates")
    if not c.gates:
        write_head_gates(c.head_gates, folder)
    return {n: os.path.join(folder, c.gate_files[n]) for n in names}


@experiment
def run(c, workdir: str) -> list[dict]:
    start = time.time()
    model, tok = load_reference(c.model_dir, c.compute_dtype)
    cells = suite.grid(c.policies, c.budget_fracs, c.contexts)
    max_new = max(ruler.MAX_NEW_TOKENS[t] for t in c.tasks)
    suite.check_cells([x for x in cells if not suite.uses_head_scores(x.spec)], model.cfg,
                      max_new)  # before the gates are computed
    scores = suite.load_head_scores(gate_files(c, cells, workdir), model.cfg)
    suite.check_cells(cells, model.cfg, max_new, scores)
    examples = ruler.make_suite(tok, heldout_tokens(tok), tuple(c.tasks), tuple(c.contexts),
                                tuple(c.depths), c.trials, c.seed)
    logging.info("%d cells x %d examples", len(cells), len(examples))
    os.makedirs(workdir, exist_ok=True)
    csv_path = os.path.join(workdir, "ruler.csv")
    done = read_rows(csv_path) if c.resume and os.path.exists(csv_path) else []
    finished = {(r["policy"], r["budget_frac"], r["context"]) for r in done}
    todo = [cell for cell in cells if (cell.spec, cell.budget_frac, cell.context) not in finished]
    logging.info("%d of %d cells already in %s", len(cells) - len(todo), len(cells), csv_path)

    def on_cell(cell, rows):
        done.extend(rows)
        write_csv(csv_path, done)

    engine = Engine.create(model, ProgramCache())
    if todo:
        suite.run_suite(engine, tok, examples, todo, batch=c.batch, threads=c.threads,
                        probe_rows=c.probe_rows, head_scores=scores,
                        question_after_compression=c.question_after_compression,
                        on_cell=on_cell)
    rows = done
    for frac in c.budget_fracs:
        suite_plots.heatmaps(rows, frac, os.path.join(workdir, f"ruler_heatmap_{frac:g}.png"))
    for context in c.contexts:
        suite_plots.pareto(rows, context, os.path.join(workdir, f"ruler_pareto_{context}.png"))
    mode = ", questions after compression" if c.question_after_compression else ""
    print(f"{os.path.basename(c.model_dir)}: mean accuracy over tasks, depths, contexts{mode}")
    print(markdown(table(rows, "context")))
    print(markdown(table(rows, "task")))
    print(engine.report())
    print(f"wall time {time.time() - start:.0f} s")
    return rows


if __name__ == "__main__":
    cli(run, "configs/ruler.py:gpu")
