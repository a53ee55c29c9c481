"""EvolKV-style per-layer budgets (algorithms.md §5b): CMA-ES (evosax) under a total budget.

    python -m experiments.evolve_budgets --config=configs/evolve_budgets.py:small \
        --workdir=runs/evolve

A candidate is a vector of per-layer logits; ``allocate`` maps it to budgets that sum exactly
to ``budget x layers`` (softmax share of what is left after ``min_budget`` per layer, in steps
of ``quantum``, largest remainder). Layers are searched bottom-up in ``groups`` (EvolKV's
group-wise scheme: one CMA-ES per group, started from the incumbent, the other groups frozen;
a group's best replaces the incumbent only if it is fitter). Within a layer, SnapKV picks
the tokens (registry spec ``snapkv(<config.snap>)``; the baselines' budgets come from
``pyramidkv`` / ``dynamickv`` with the same arguments). Fitness (minimised) on a small task
set (``lcache.eval.passkey.TaskSet``): ``log ppl`` of held-out continuations + passkey answer
NLL - passkey accuracy. The result is compared with uniform, PyramidKV and DynamicKV budgets
on the search set and on a test set (other texts and keys). Writes ``evolve.csv``
(``method,split,budgets,ppl,answer_nll,accuracy,fitness``), ``evolve_history.csv`` and
``evolve.png`` (budgets per layer).
"""

from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from evosax.algorithms import CMA_ES

from experiments.common import cli, experiment
from lcache.analysis import plots
from lcache.cache import registry, uniform
from lcache.eval import Engine, ProgramCache, load_reference, markdown, pad_prompts, write_csv
from lcache.eval.passkey import make_task_set, quality
from lcache.eval.policies import policy_for_prompts


def allocate(logits, total: int, minimum: int, quantum: int) -> tuple[int, ...]:
    """``logits [L]`` -> ``L`` budgets >= ``minimum`` summing exactly to ``total``."""
    logits = np.asarray(logits, np.float64)
    free = total - logits.size * minimum
    if free < 0:
        raise ValueError(f"a total budget of {total} cannot give {logits.size} layers "
                         f"{minimum} tokens each")
    units, rest = divmod(free, quantum)
    w = np.exp(logits - logits.max())
    share = w / w.sum() * units
    alloc = np.floor(share).astype(int)
    alloc[np.argsort(-(share - alloc), kind="stable")[:units - alloc.sum()]] += 1
    budgets = minimum + alloc * quantum
    budgets[np.argmax(w)] += rest
    return tuple(int(b) for b in budgets)


def fitness(q: dict) -> float:
    """Minimised: log held-out ppl + passkey answer NLL - passkey accuracy."""
    return math.log(q["ppl"]) + q["answer_nll"] - q["accuracy"]


class Evaluator:
    """Quality of per-layer SnapKV budgets on one task set, memoised by budgets."""

    def __init__(self, engine: Engine, tok, task, c):
        self.engine, self.tok, self.task, self.c = engine, tok, task, c
        self.prompt_len = pad_prompts(task.prompts)[0].shape[1]
        self.memo: dict[tuple[int, ...], dict] = {}

    def __call__(self, budgets: tuple[int, ...]) -> dict:
        if budgets not in self.memo:
            spec = f"snapkv({self.c.snap})"
            policy = tuple(registry.build(spec, b, prompt_len=self.prompt_len) for b in budgets)
            q = quality(self.engine, self.tok, self.task, policy, self.c.max_new_tokens)
            self.memo[budgets] = dict(q, fitness=fitness(q))
        return self.memo[budgets]


def search(evaluate: Evaluator, num_layers: int, c) -> tuple[tuple[int, ...], list[dict]]:
    """Group-wise CMA-ES from uniform logits -> (best budgets, history rows). A group's best
    candidate replaces the incumbent only if it is fitter, so the result is never worse on the
    search set than the uniform start."""
    total = c.budget * num_layers
    logits = np.zeros(num_layers)
    best = evaluate(allocate(logits, total, c.min_budget, c.quantum))["fitness"]
    key = jax.random.key(c.seed)
    history = []
    for g, layers in enumerate(np.array_split(np.arange(num_layers), c.groups)):
        es = CMA_ES(population_size=c.popsize, solution=jnp.zeros(layers.size))
        params = es.default_params.replace(std_init=c.sigma)
        key, sub = jax.random.split(key)
        state = es.init(sub, jnp.asarray(logits[layers]), params)
        for gen in range(c.generations):
            key, k_ask, k_tell = jax.random.split(key, 3)
            pop, state = es.ask(k_ask, state, params)
            fit = []
            for i, member in enumerate(np.asarray(pop)):
                trial = logits.copy()
                trial[layers] = member
                budgets = allocate(trial, total, c.min_budget, c.quantum)
                q = evaluate(budgets)
                fit.append(q["fitness"])
                history.append(dict(group=g, generation=gen, member=i,
                                    budgets="-".join(map(str, budgets)), **q))
            state, _ = es.tell(k_tell, pop, jnp.asarray(fit), state, params)
            logging.info("group %d generation %d: best %.4f (%d evaluated)", g, gen,
                         float(state.best_fitness), len(evaluate.memo))
        if float(state.best_fitness) < best:
            best = float(state.best_fitness)
            logits[layers] = np.asarray(state.best_solution)
    return allocate(logits, total, c.min_budget, c.quantum), history


BASELINES = {"pyramid": "pyramidkv", "dynamic": "dynamickv"}  # allocator -> registry name


def baseline(name: str, evaluate: Evaluator, model, c) -> tuple[tuple[int, ...], dict]:
    """Uniform, PyramidKV or DynamicKV (probed on this task set's prompts) budgets + quality."""
    if name == "uniform":
        budgets = uniform(c.budget, model.cfg.num_layers)
    elif name in BASELINES:
        policy = policy_for_prompts(evaluate.engine, f"{BASELINES[name]}({c.snap})", c.budget,
                                    evaluate.task.prompts)
        budgets = tuple(p.budget for p in policy)
    else:
        raise ValueError(f"unknown baseline {name!r}; expected uniform, pyramid or dynamic")
    return budgets, evaluate(budgets)


@experiment
def run(c, workdir: str) -> list[dict]:
    start = time.time()
    model, tok = load_reference(c.model_dir, c.compute_dtype)
    engine = Engine.create(model, ProgramCache())  # this run's programs, reported at the end
    t = c.task
    span = t.num_texts * (t.text_len - 1)
    sets = {split: Evaluator(engine, tok, make_task_set(
        tok, t.num_texts, t.text_len, t.prefix, t.context_len, t.depths, t.trials,
        c.seed + i, c.train_offset + i * span), c) for i, split in enumerate(("search", "test"))}
    allocate(np.zeros(model.cfg.num_layers), c.budget * model.cfg.num_layers, c.min_budget,
             c.quantum)  # a total that cannot be split fails here, before any work
    best, history = search(sets["search"], model.cfg.num_layers, c)
    rows = []
    for split, evaluate in sets.items():
        for name in (*c.baselines, "evolved"):
            budgets, q = ((best, evaluate(best)) if name == "evolved"
                          else baseline(name, evaluate, model, c))
            rows.append(dict(method=name, split=split, budgets="-".join(map(str, budgets)), **q))
            logging.info("%s", rows[-1])
    os.makedirs(workdir, exist_ok=True)
    write_csv(os.path.join(workdir, "evolve.csv"), rows)
    write_csv(os.path.join(workdir, "evolve_history.csv"), history)
    plots.plot_lines(np.arange(model.cfg.num_layers),
                     {f"{r['method']}": [int(b) for b in r["budgets"].split("-")]
                      for r in rows if r["split"] == "search"},
                     os.path.join(workdir, "evolve.png"), "layer", "budget (tokens)",
                     f"per-layer budgets, total {c.budget} x {model.cfg.num_layers}")
    print(markdown(rows))
    print(engine.report())
    print(f"wall time {time.time() - start:.0f} s")
    return rows


if __name__ == "__main__":
    cli(run, "configs/evolve_budgets.py:default")
