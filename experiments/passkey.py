"""Passkey retrieval (Landmark Attention, algorithms.md §11) under cache policies.

    python -m experiments.passkey --config=configs/passkey.py:reduced --workdir=runs/passkey

First the check the rest depends on: greedy accuracy with the full cache at the training
context (``check_context``). Then, for every context length, ``trials`` keys at each depth are
generated greedily (``max_new_tokens``) under every policy spec (``lcache.cache.registry``)
and budget (a budget of at least the context is skipped: nothing to compress) and scored by the
first integer of the answer (``score_passkey``); the teacher-forced NLL of the true answer comes
from the same program (``lcache.eval.passkey.score_passkeys``). Every context is padded to the
longest one and a cell's prompts run in micro-batches of ``batch`` rows, so each (policy,
budget) is one compiled program for all contexts, compiled ahead of time in ``threads``
threads (DynamicKV, which probes each cell's prompts, compiles per cell). Policies are sized for
that padded length (PyramidKV's schedule included).
Writes to ``--workdir``:

  passkey.csv        policy,budget,context_len,depth,accuracy,answer_nll
                     (dense: budget = context_len; answer_nll in nats per answer byte)
  passkey_check.csv  context_len,trials,accuracy of the full-cache check
  passkey.png        accuracy heatmaps (depth x context) per policy and budget
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
from lcache.data import make_passkey
from lcache.eval import Engine, ProgramCache, load_reference, markdown, write_csv
from lcache.eval.passkey import make_examples, score_passkeys
from lcache.eval.policies import policy_for_prompts
from lcache.sampling import Sampling

PAD = 16  # prompt and answer padding multiple


def check_grid(c, tok, num_layers: int) -> None:
    """Fail before any work on a depth outside [0, 1], a context too short for the prompt, an
    unknown policy spec or a budget that a policy cannot hold."""
    bad = [d for d in c.depths if not 0.0 <= d <= 1.0]
    if bad:
        raise ValueError(f"passkey depths must lie in [0, 1], got {bad}")
    for context_len in {*c.contexts, c.check_context}:
        make_passkey(tok, context_len, 0.5, 50000)  # raises if the context is too short
    for kind in c.policies:
        for budget in c.budgets:
            registry.check(kind, budget, prompt_len=max(c.contexts), num_layers=num_layers)


def accuracy_rows(engine: Engine, tok, c, kind: str, budget: int, context_len: int,
                  pad_to: int) -> list[dict]:
    """``policy,budget,context_len,depth,accuracy,answer_nll`` rows of one grid cell: its
    depths x trials prompts padded to ``pad_to`` tokens, ``c.batch`` rows at a time."""
    examples = make_examples(tok, context_len, c.depths, c.trials, c.seed)
    batch = c.batch or None
    policy = policy_for_prompts(engine, kind, budget, [e.prompt_ids for e in examples],
                                max_new=c.max_new_tokens, pad_to=pad_to, batch=batch)
    solved, nll = score_passkeys(engine, tok, examples, policy, c.max_new_tokens, pad_to=pad_to,
                                 batch=batch)
    shape = (len(c.depths), c.trials)
    acc, nll = solved.reshape(shape).mean(axis=1), nll.reshape(shape).mean(axis=1)
    return [dict(policy=kind, budget=budget, context_len=context_len, depth=float(d),
                 accuracy=float(a), answer_nll=float(n))
            for d, a, n in zip(c.depths, acc, nll, strict=True)]


def grid_cells(c) -> list[tuple[int, str, int]]:
    """``(context_len, spec, budget)`` of every cell: dense at the context, the other specs at
    each budget below it."""
    return [(n, kind, budget) for n in c.contexts for kind in c.policies
            for budget in ([n] if registry.parse(kind).name == "dense"
                           else [b for b in c.budgets if b < n])]


def precompile(engine: Engine, c, pad_to: int) -> None:
    """Compile the program of every (spec, budget) that does not probe its prompts, in
    ``c.threads`` threads."""
    rows = c.batch or len(c.depths) * c.trials
    sampling = Sampling(max_new_tokens=c.max_new_tokens)
    specs = {(kind, budget) for _, kind, budget in grid_cells(c)
             if "probe" not in registry.REGISTRY[registry.parse(kind).name].needs}
    jobs = [j for kind, budget in sorted(specs) for j in engine.generate_jobs(
        policy_for_prompts(engine, kind, budget, [[0]], max_new=c.max_new_tokens, pad_to=pad_to),
        sampling, pad_to=pad_to, batch=rows, score_to=PAD)]
    engine.precompile(jobs, c.threads)


def cells(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """Rows -> ``{(policy, budget label): {(depth, context_len): accuracy}}``; the dense
    policies' budget label is 'full'."""
    out = {}
    for r in rows:
        label = "full" if r["policy"].startswith("dense") else str(r["budget"])
        out.setdefault((r["policy"], label), {})[r["depth"], r["context_len"]] = r["accuracy"]
    return out


def summary(rows: list[dict], contexts) -> list[dict]:
    """Mean accuracy over depths per policy, budget and context ('-': not run)."""
    table = []
    for (kind, label), acc in cells(rows).items():
        row = dict(policy=kind, budget=label)
        for ctx in contexts:
            vals = [a for (_, n), a in acc.items() if n == ctx]
            row[f"ctx {ctx}"] = f"{np.mean(vals):.2f}" if vals else "-"
        table.append(row)
    return table


def plot_heatmaps(rows: list[dict], depths, contexts, path: str, cols: int = 4) -> str:
    """One accuracy heatmap (depth x context length) per policy and budget."""
    panels = cells(rows)
    n_rows = -(-len(panels) // cols)
    fig = Figure(figsize=(2.6 * cols + 1, 2.4 * n_rows + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, cols, squeeze=False, gridspec_kw=dict(hspace=0.5)).ravel()
    for ax, ((kind, label), acc) in zip(axes, panels.items(), strict=False):
        grid = np.full((len(depths), len(contexts)), np.nan)
        for (d, n), a in acc.items():
            grid[list(depths).index(d), list(contexts).index(n)] = a
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
        for (i, j), a in np.ndenumerate(grid):
            ax.text(j, i, "" if np.isnan(a) else f"{a:.2f}", ha="center", va="center",
                    fontsize=7, color="w" if a < 0.5 else "k")
        ax.set_xticks(range(len(contexts)), [str(x) for x in contexts], fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
        ax.set_title(f"{kind}, budget {label}", fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    fig.colorbar(im, ax=list(axes), shrink=0.6, label="accuracy")
    fig.supxlabel("context length")
    fig.supylabel("depth")
    fig.savefig(path, format="png")
    return path


@experiment
def run(c, workdir: str) -> list[dict]:
    start = time.time()
    model, tok = load_reference(c.model_dir, c.compute_dtype)
    check_grid(c, tok, model.cfg.num_layers)
    engine = Engine.create(model, ProgramCache())  # this run's programs, reported at the end
    examples = make_examples(tok, c.check_context, c.depths, c.trials, c.seed + 1)
    dense = policy_for_prompts(engine, "dense", 0, [e.prompt_ids for e in examples],
                               max_new=c.max_new_tokens)
    check = score_passkeys(engine, tok, examples, dense, c.max_new_tokens,
                           batch=c.batch or None)[0].mean()
    print(f"full-cache check at context {c.check_context}: accuracy {check:.3f} over "
          f"{len(examples)} prompts" + ("" if check >= 0.9 else
                                       " -- the model does NOT reliably solve the task"))
    os.makedirs(workdir, exist_ok=True)
    write_csv(os.path.join(workdir, "passkey_check.csv"), [dict(
        context_len=c.check_context, trials=len(examples), accuracy=float(check))])
    pad_to = -(-max(c.contexts) // PAD) * PAD
    precompile(engine, c, pad_to)
    rows = []
    for context_len, kind, budget in grid_cells(c):
        rows += accuracy_rows(engine, tok, c, kind, budget, context_len, pad_to)
        logging.info("context %d %s budget %d: accuracy %.3f (%.0f s)", context_len, kind,
                     budget, np.mean([r["accuracy"] for r in rows[-len(c.depths):]]),
                     time.time() - start)
    write_csv(os.path.join(workdir, "passkey.csv"), rows)
    plot_heatmaps(rows, c.depths, c.contexts, os.path.join(workdir, "passkey.png"))
    print(markdown(summary(rows, c.contexts)))
    print(engine.report())
    print(f"wall time {time.time() - start:.0f} s")
    return rows


if __name__ == "__main__":
    cli(run, "configs/passkey.py:default")
