"""Passkey retrieval (Landmark Attention, algorithms.md §11) under cache policies.

    python -m experiments.passkey --config=configs/passkey.py:reduced --workdir=runs/passkey

First the check the rest depends on: greedy accuracy with the full cache at the training
context (``check_context``). Then, for every context length, ``trials`` keys at each depth are
generated greedily (``lcache.generate``, ``max_new_tokens``) under every policy spec
(``lcache.cache.registry``) and budget (a budget of at least the context is skipped: nothing
to compress) and scored by the first integer of the answer (``score_passkey``); the
teacher-forced NLL of the true answer is recorded too.
Writes to ``--workdir``:

  passkey.csv        policy,budget,context_len,depth,accuracy,answer_nll
                     (dense: budget = context_len; answer_nll in nats per answer byte)
  passkey_check.csv  context_len,trials,accuracy of the full-cache check
  passkey.png        accuracy heatmaps (depth x context) per policy and budget
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
from absl import logging
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments import streaming
from lcache.cache import registry
from lcache.data import make_passkey, score_passkey
from lcache.data.passkey import answer_text
from lcache.generate import generate, pad_prompts
from lcache.sampling import Sampling

PAD = 16  # prompt padding multiple (``lcache.generate``)


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


def make_examples(tok, context_len: int, depths, trials: int, seed: int) -> list:
    """``trials`` prompts per depth (keys uniform in [1, 50000], fixed by ``seed``)."""
    rng = np.random.default_rng([seed, context_len])
    return [make_passkey(tok, context_len, float(d), int(rng.integers(1, 50001)))
            for d in depths for _ in range(trials)]


def policy_for(kind: str, budget: int, model, prompts, c, extra: int | None = None):
    """The policy of spec ``kind`` for this batch of ``prompts`` (int arrays; DynamicKV probes
    them first), with room for ``extra`` new tokens (default ``c.max_new_tokens``)."""
    tokens, lengths = pad_prompts(prompts, PAD)
    t = tokens.shape[1]
    pos = np.where(np.arange(t)[None] < lengths[:, None], np.arange(t)[None], -1)

    def probe(policy):
        return streaming.prefill(model, tokens, pos, policy)[1]

    return registry.build(kind, budget, prompt_len=t, num_layers=model.cfg.num_layers,
                          max_new=c.max_new_tokens if extra is None else extra,
                          num_model_sinks=model.cfg.num_sink_tokens, probe=probe)


def solved(model, tok, examples, policy, max_new_tokens: int) -> np.ndarray:
    """Greedy generation under ``policy`` -> ``[len(examples)]`` bool: first integer == key."""
    out = generate(model, [e.prompt_ids for e in examples], policy,
                   Sampling(max_new_tokens=max_new_tokens), pad_multiple=PAD)
    return np.array([score_passkey(tok.decode(o.tolist()), e.key)
                     for o, e in zip(out, examples, strict=True)])


def answer_nll(model, tok, examples, policy) -> np.ndarray:
    """Teacher-forced NLL of the answer " {key}." after each prompt (nats per byte, mean over
    the answer) -> ``[len(examples)]``: a graded signal where greedy accuracy is all 0 or 1."""
    answers = [np.asarray(tok.encode(answer_text(e.key)), np.int32) for e in examples]
    nll = streaming.continuation_nll(model, [e.prompt_ids for e in examples], answers, policy,
                                     PAD)
    return np.array([x.mean() for x in nll])


def accuracy_rows(model, tok, c, kind: str, budget: int, context_len: int) -> list[dict]:
    """``policy,budget,context_len,depth,accuracy,answer_nll`` rows of one grid cell."""
    examples = make_examples(tok, context_len, c.depths, c.trials, c.seed)
    policy = policy_for(kind, budget, model, [e.prompt_ids for e in examples], c)
    shape = (len(c.depths), c.trials)
    acc = solved(model, tok, examples, policy, c.max_new_tokens).reshape(shape).mean(axis=1)
    nll = answer_nll(model, tok, examples, policy).reshape(shape).mean(axis=1)
    return [dict(policy=kind, budget=budget, context_len=context_len, depth=float(d),
                 accuracy=float(a), answer_nll=float(n))
            for d, a, n in zip(c.depths, acc, nll, strict=True)]


@dataclasses.dataclass(frozen=True)
class TaskSet:
    """A small quality set for the sweep and the budget search: held-out ``texts [K, L]`` (BOS
    first; the first ``prefix`` tokens are the prompt, the rest is scored token by token) and
    passkey ``examples`` (the answer is scored, and greedy generation checked)."""

    texts: np.ndarray
    prefix: int
    examples: tuple

    @property
    def prompts(self) -> list[np.ndarray]:
        return [t[:self.prefix] for t in self.texts] + [e.prompt_ids for e in self.examples]


def make_task_set(tok, num_texts: int, text_len: int, prefix: int, context_len: int, depths,
                  trials: int, seed: int, offset: int = 0) -> TaskSet:
    """``num_texts`` held-out windows from token ``offset`` plus ``trials`` passkeys per depth."""
    if not 0 < prefix < text_len:
        raise ValueError(f"prefix={prefix} must lie in (0, text_len={text_len})")
    return TaskSet(streaming.heldout_windows(tok, num_texts, text_len, offset), prefix,
                   tuple(make_examples(tok, context_len, depths, trials, seed)))


def quality(model, tok, task: TaskSet, kind: str, budget: int, c, policy=None
            ) -> tuple[dict, object]:
    """Held-out ``ppl`` of the text continuations, passkey ``answer_nll`` and greedy
    ``accuracy`` under policy ``kind``/``budget`` (or the given per-layer ``policy``), built for
    the whole batch of prompts -> ``(metrics, policy)``. Compressing policies get no decode
    slots beyond their budget (decode then evicts), so the cache holds ``budget`` tokens like
    the other policies."""
    k = len(task.texts)
    cont = task.texts.shape[1] - task.prefix
    extra = max(cont, c.max_new_tokens) if kind.startswith("dense") else 0
    if policy is None:
        policy = policy_for(kind, budget, model, task.prompts, c, extra)
    answers = [np.asarray(tok.encode(answer_text(e.key)), np.int32) for e in task.examples]
    nll = streaming.continuation_nll(model, task.prompts, [t[task.prefix:] for t in task.texts]
                                     + answers, policy, PAD)
    acc = solved(model, tok, list(task.examples), policy, c.max_new_tokens).mean()
    return dict(ppl=streaming.ppl(np.concatenate(nll[:k])),
                answer_nll=float(np.mean([x.mean() for x in nll[k:]])),
                accuracy=float(acc)), policy


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


@streaming.experiment
def run(c, workdir: str) -> list[dict]:
    start = time.time()
    model, tok = streaming.load_reference(c.model_dir, c.compute_dtype)
    check_grid(c, tok, model.cfg.num_layers)
    examples = make_examples(tok, c.check_context, c.depths, c.trials, c.seed + 1)
    dense = policy_for("dense", 0, model, [e.prompt_ids for e in examples], c)
    check = solved(model, tok, examples, dense, c.max_new_tokens).mean()
    print(f"full-cache check at context {c.check_context}: accuracy {check:.3f} over "
          f"{len(examples)} prompts" + ("" if check >= 0.9 else
                                       " -- the model does NOT reliably solve the task"))
    os.makedirs(workdir, exist_ok=True)
    streaming.write_csv(os.path.join(workdir, "passkey_check.csv"), [dict(
        context_len=c.check_context, trials=len(examples), accuracy=float(check))])
    rows = []
    for context_len in c.contexts:
        for kind in c.policies:
            budgets = [context_len] if kind.startswith("dense") else [
                b for b in c.budgets if b < context_len]
            for budget in budgets:
                rows += accuracy_rows(model, tok, c, kind, budget, context_len)
                logging.info("context %d %s budget %d: accuracy %.3f (%.0f s)", context_len,
                             kind, budget, np.mean([r["accuracy"] for r in rows[-len(c.depths):]]),
                             time.time() - start)
    streaming.write_csv(os.path.join(workdir, "passkey.csv"), rows)
    plot_heatmaps(rows, c.depths, c.contexts, os.path.join(workdir, "passkey.png"))
    print(streaming.markdown(summary(rows, c.contexts)))
    print(f"wall time {time.time() - start:.0f} s")
    return rows


if __name__ == "__main__":
    streaming.cli(run, "configs/passkey.py:default")
