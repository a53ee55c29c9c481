"""Headline demo: StreamingLLM on our two reference models, then one small retrieval row (the
README's main command).

    python -m experiments.demo --config=configs/demo.py --workdir=runs/demo

For the vanilla softmax model and the model trained with one learnable sink token, a held-out
byte stream (3x the training context by default) goes through the model one token at a time
with a fixed cache of each size in ``cache_sizes`` (sinks included): ``window`` (window only),
``streaming_llm(sinks=N)`` (the first N tokens pinned + window) and the sliding window with
recomputation (``recompute``, on every ``recompute_stride``-th byte), then dense attention
over the whole stream, scored inside and past the training context (``lcache.eval.streaming``).
Then the sink rate on the first token that explains the gap, a text sample of the softmax model
under ``sample_policy`` past its cache size, and one retrieval row: ``retrieval.trials``
RULER-style ``retrieval.task`` prompts per depth (``lcache.data.ruler``, held-out haystack) at
``retrieval.context`` through the suite runner (``lcache.eval.suite``), each spec of
``retrieval.policies`` at ``retrieval.budget_frac`` of the context. A progress bar on stderr
counts every run. Policies are named by registry specs everywhere (``lcache.cache.registry``;
``recompute`` is the recomputation baseline, not a cache).

Writes to ``--workdir``:

  demo.csv            model,policy,num_sinks,cache_size,tokens,ppl,common_ppl,ppl_in_context,
                      ppl_past_context (common: the targets every bounded cache scored, i.e.
                      recomputation's; in / past: the targets before / from the training context)
  demo_curve.csv      model,cache,policy,end_token,ppl (per ``curve_every`` bytes)
  demo_sink_rate.csv  model,position,sink_rate
  demo_retrieval.csv  policy,budget_frac,task,context,depth,trials,accuracy,cache_bytes
  demo_nll.npz        per-token NLL of every run
  demo_<model>_cache<N>.png, sample.txt
"""

from __future__ import annotations

import os
import time

import numpy as np

from experiments.common import cli, experiment
from lcache.analysis import first_token_sink_rate, plots
from lcache.cache import registry
from lcache.data import ruler
from lcache.data.heldout import heldout_stream, heldout_tokens, heldout_windows
from lcache.eval import (
    Engine,
    ProgramCache,
    Progress,
    Run,
    chunk_curve,
    common_ppl,
    load_reference,
    markdown,
    save_nll,
    streaming_runs,
    suite,
    summary_rows,
    write_csv,
)
from lcache.sampling import Sampling

PUBLISHED = ("Published (StreamingLLM Table 3, 160M models trained at context 2048, cache 1024, "
             "PPL): vanilla 27.87 window only vs 18.05 with 4 sinks; learnable sink token 1235 "
             "without it vs 18.01 with it. Llama-2-7B (Table 2, cache 4096): 3359.95 vs 9.59.")


def pivot(rows: list[dict], rates: dict[str, dict], most: str) -> list[dict]:
    """Summary rows -> one row per model and cache size: ppl per spec over the whole stream,
    ``recompute`` and ``most`` (a spec) on the bytes recomputation scores (``*``), dense
    attention (one cache holding everything: the model's value on every row) inside and past the
    training context, and the model's sink rate on the first token."""
    dense = {r["model"]: r for r in rows if r["policy"] == "dense"}
    out = {}
    for r in rows:
        if r["policy"] == "dense":
            continue
        row = out.setdefault((r["model"], r["cache_size"]), dict(model=r["model"],
                                                                 cache=r["cache_size"]))
        if r["policy"] != "recompute":
            row[r["policy"]] = r["ppl"]
        if r["policy"] in (most, "recompute"):
            row[f"{r['policy']}*"] = r["common_ppl"]
    for (name, _), row in out.items():
        row.update({"dense, in context": dense[name]["ppl_in_context"],
                    "dense, past context": dense[name]["ppl_past_context"],
                    "sink rate": rates[name]["first"]})
    return list(out.values())


def retrieval_row(rows: list[dict], model: str) -> dict:
    """Suite rows of one context and task -> ``model, task, context`` and the accuracy of each
    spec over all its depths and trials."""
    acc: dict[str, list] = {}
    for r in rows:
        acc.setdefault(r["policy"], []).append((r["accuracy"] * r["trials"], r["trials"]))
    return dict(model=model, task=rows[0]["task"], context=rows[0]["context"],
                **{spec: sum(a for a, _ in v) / sum(n for _, n in v) for spec, v in acc.items()})


def num_steps(c, cells) -> int:
    """Progress steps: per model its streaming runs (each cache: window, each sink count,
    recompute; dense once) and its sink rate, then the sample and the retrieval cells."""
    per_cache = 1 + len(set(c.sinks) - {0}) + bool(c.recompute_stride)
    return len(c.models) * (len(c.cache_sizes) * per_cache + 2) + 1 + len(cells)


def check(c, models: dict) -> None:
    """Raise ValueError for a model name, cache size or spec the config cannot run, before any
    work (the retrieval cells are checked by ``suite.check_cells``)."""
    for key in (c.sample_model, c.retrieval.model):
        if key not in models:
            raise ValueError(f"model {key!r} is not one of the demo's models {sorted(models)}")
    for cache in c.cache_sizes:
        for s in c.sinks:
            registry.check(f"streaming_llm(sinks={s})", cache)
    registry.check(c.sample_policy, c.sample_cache)


@experiment
def run(c, workdir: str) -> list[dict]:
    start = time.time()
    models = {name: load_reference(d, c.compute_dtype) for name, d in c.models}
    check(c, models)
    r = c.retrieval
    cells = suite.grid(tuple(r.policies), (r.budget_frac,), (r.context,))
    suite.check_cells(cells, models[r.model][0].cfg, ruler.MAX_NEW_TOKENS[r.task])
    r_tok = models[r.model][1]
    examples = ruler.make_suite(r_tok, heldout_tokens(r_tok), (r.task,), (r.context,),
                                tuple(r.depths), r.trials, c.seed)
    progress = Progress(num_steps(c, cells), "runs")
    rows, curves, rates, runs, sample, found = [], {}, {}, {}, "", []
    programs = ProgramCache()  # both models' compiled programs, reported together
    for name, (model, tok) in models.items():
        engine = Engine.create(model, programs)
        runs[f"{name}_"], model_rows, model_curves = stream(c, engine, tok, name, progress)
        rows += model_rows
        curves.update(model_curves)
        windows = heldout_windows(tok, c.sink_samples, c.sink_len, c.offset + c.stream_tokens)
        rates[name] = first_token_sink_rate(engine.analyze(windows)["weights"],
                                            model.cfg.num_sink_tokens, c.sink_eps)
        progress.step(f"{name}: sink rate")
        if name == c.sample_model:
            sample = sample_text(engine, tok, c)
            progress.step(f"{name}: text sample")
        if name == r.model:
            found = suite.run_suite(engine, tok, examples, cells, batch=r.batch,
                                    threads=r.threads, progress=progress)
    write_outputs(c, workdir, rows, curves, rates, sample, found)
    save_nll(os.path.join(workdir, "demo_nll.npz"), runs)
    show(c, rows, rates, sample, found, model.cfg.max_seq_len)  # the same for both models
    print(programs.report())
    print(f"wall time {time.time() - start:.0f} s")
    return rows


def stream(c, engine: Engine, tok, name: str, progress: Progress
           ) -> tuple[list[Run], list[dict], dict]:
    """The streaming runs of model ``name`` at every cache size (dense with the first) ->
    ``(runs, summary rows, curves)``: rows with the policy's spec and the perplexity before /
    from the training context, curves keyed ``(name, cache, spec)``."""
    text = heldout_stream(tok, c.stream_tokens, c.offset)
    in_context = np.arange(c.stream_tokens) < engine.cfg.max_seq_len
    out, rows, curves = [], [], {}
    for i, cache in enumerate(c.cache_sizes):
        runs = streaming_runs(engine, text, cache, tuple(c.sinks), -1 if i == 0 else 0,
                              c.recompute_stride, chunk=c.chunk,
                              on_run=lambda run: progress.step(
                                  f"{name} {run.spec} {run.cache_size or ''}"))
        rows += [dict(model=name, **(row | dict(policy=run.spec)),
                      ppl_in_context=common_ppl(run.nll, in_context),
                      ppl_past_context=common_ppl(run.nll, ~in_context))
                 for run, row in zip(runs, summary_rows(runs), strict=True)]
        curves.update({(name, cache, run.spec): chunk_curve(run.nll, c.curve_every)[1]
                       for run in runs})
        out += runs
    return out, rows, curves


def sample_text(engine: Engine, tok, c) -> str:
    """A continuation of ``c.prompt`` under ``c.sample_policy`` with a cache of
    ``c.sample_cache`` tokens, far fewer than the bytes generated."""
    policy = registry.build(c.sample_policy, c.sample_cache)
    ids = [tok.bos_id, *tok.encode(c.prompt)]
    out = engine.generate([ids], policy, Sampling(max_new_tokens=c.sample_tokens,
                                                  temperature=c.temperature), seed=c.seed)[0]
    return c.prompt + tok.decode(out.tolist())


def show(c, rows, rates, sample, found, context: int) -> None:
    """Print the streaming table, the retrieval row and the sample, with what they measure."""
    n, r = c.stream_tokens, c.retrieval
    most = f"streaming_llm(sinks={max(c.sinks)})"
    print(f"Held-out stream of {n} bytes ({n / context:.3g}x the training context of {context}), "
          f"perplexity per byte; * = on every {c.recompute_stride}-th byte, the ones the "
          "sliding window with recomputation scores; dense in / past context = on the first "
          f"{context} bytes / on the rest; sink rate = Gu et al. on the first token (eps "
          f"{c.sink_eps}, T={c.sink_len}), fraction of (sample, layer, head).")
    print(markdown(pivot(rows, rates, most)))
    print(PUBLISHED)
    budget = registry.round_half_up(r.budget_frac * r.context)
    print(f"Retrieval: {r.task} ({r.model} model, {r.trials} prompts at each depth "
          f"{', '.join(f'{d:g}' for d in r.depths)}, greedy), accuracy; bounded caches keep "
          f"{r.budget_frac:g} of the context ({budget} tokens per layer and head).")
    print(markdown([retrieval_row(found, r.model)], "{:.2f}"))
    print(f"Sample ({c.sample_model} model, {c.sample_policy} with a cache of {c.sample_cache}, "
          f"{c.sample_tokens} new bytes):\n{sample}")


def write_outputs(c, workdir: str, rows, curves, rates, sample, found) -> None:
    """CSVs, one curve plot per model and cache size (with the model's dense curve) and the
    text sample."""
    os.makedirs(workdir, exist_ok=True)
    write_csv(os.path.join(workdir, "demo.csv"), rows)
    write_csv(os.path.join(workdir, "demo_sink_rate.csv"),
              [dict(model=m, position=k, sink_rate=v) for m, r in rates.items()
               for k, v in r.items()])
    write_csv(os.path.join(workdir, "demo_retrieval.csv"), found)
    ends = chunk_curve(np.zeros(c.stream_tokens), c.curve_every)[0]
    write_csv(os.path.join(workdir, "demo_curve.csv"), [
        dict(model=m, cache=n, policy=spec, end_token=int(e), ppl=float(v))
        for (m, n, spec), ys in curves.items() for e, v in zip(ends, ys, strict=True)])
    for name, _ in c.models:
        for cache in c.cache_sizes:
            plots.plot_lines(ends, {spec: ys for (m, n, spec), ys in curves.items()
                                    if m == name and (n == cache or spec == "dense")},
                             os.path.join(workdir, f"demo_{name}_cache{cache}.png"),
                             "bytes streamed", f"ppl per {c.curve_every} bytes",
                             f"{name} model, cache {cache}", logy=True)
    with open(os.path.join(workdir, "sample.txt"), "w") as f:
        f.write(sample)


if __name__ == "__main__":
    cli(run, "configs/demo.py:default")
