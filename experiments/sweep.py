"""Quality against cache bytes, per policy and storage (a Pareto plot).

    python -m experiments.sweep --config=configs/sweep.py:reduced --workdir=runs/sweep

For each policy spec (``lcache.cache.registry``; ``@intN`` = KIVI storage) and budget,
one batch of prompts (held-out text prefixes and passkey prompts) is prefilled, then the text
continuations and passkey answers are scored token by token and the passkeys generated greedily
(``lcache.eval.passkey.quality``); compressing policies get no decode room beyond their budget,
so the cache holds ``budget`` tokens. Bytes are the cache's arrays for one sequence at bf16
(``lcache.cache.cache_bytes``: keys, values, codes, scales, residual ring, positions, scores).
Writes ``sweep.csv`` (``policy,budget,cache_bytes,ppl,answer_nll,accuracy``) and ``sweep.png``.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import logging
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments.common import cli, experiment
from lcache.cache import registry
from lcache.eval import Engine, ProgramCache, load_reference, markdown, write_csv
from lcache.eval.passkey import make_task_set, quality
from lcache.eval.policies import policy_for_prompts
from lcache.eval.suite import policy_bytes
from lcache.eval.suite_plots import pareto_front


def pareto(xs, ys) -> np.ndarray:
    """Indices of the points no other point beats (lower x and lower y), by x."""
    return pareto_front(xs, -np.asarray(ys, float))


def plot(rows: list[dict], path: str) -> str:
    """ppl and passkey-answer NLL against cache bytes (log), one marker per policy, Pareto
    front of each panel as a line."""
    fig = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    x = np.array([r["cache_bytes"] for r in rows], float) / 1024
    for ax, key, label in ((axes[0], "ppl", "held-out ppl (per byte)"),
                           (axes[1], "answer_nll", "passkey answer NLL (nats/byte)")):
        y = np.array([r[key] for r in rows], float)
        for kind in dict.fromkeys(r["policy"] for r in rows):
            sel = [i for i, r in enumerate(rows) if r["policy"] == kind]
            ax.scatter(x[sel], y[sel], label=kind, s=24)
        front = pareto(x, y)
        ax.plot(x[front], y[front], color="k", lw=0.8, alpha=0.6, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("cache KiB per sequence (bf16 storage)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


@experiment
def run(c, workdir: str) -> list[dict]:
    start = time.time()
    model, tok = load_reference(c.model_dir, c.compute_dtype)
    task = make_task_set(tok, c.num_texts, c.text_len, c.prefix, c.context_len, c.depths,
                         c.trials, c.seed, c.offset)
    for kind in c.policies:  # fail before any work on a budget a policy cannot hold
        for budget in c.budgets:
            registry.check(kind, budget, prompt_len=c.prefix, num_layers=model.cfg.num_layers)
    engine = Engine.create(model, ProgramCache())  # this run's programs, reported at the end
    rows = []
    for kind in c.policies:
        dense = registry.parse(kind).name == "dense"
        room = max(task.continuation_len, c.max_new_tokens) if dense else 0
        for budget in [0] if dense else c.budgets:
            policy = policy_for_prompts(engine, kind, budget, task.prompts, max_new=room)
            q = quality(engine, tok, task, policy, c.max_new_tokens)
            rows.append(dict(policy=kind, budget=budget, cache_bytes=policy_bytes(policy,
                                                                                  model.cfg),
                             **q))
            logging.info("%s: %s (%.0f s)", kind, rows[-1], time.time() - start)
    os.makedirs(workdir, exist_ok=True)
    write_csv(os.path.join(workdir, "sweep.csv"), rows)
    plot(rows, os.path.join(workdir, "sweep.png"))
    print(markdown(rows))
    print(engine.report())
    print(f"wall time {time.time() - start:.0f} s")
    return rows


if __name__ == "__main__":
    cli(run, "configs/sweep.py:default")
