"""Headline demo: StreamingLLM on our two reference models (the README's main command).

    python -m experiments.demo --config=configs/demo.py --workdir=runs/demo

For the vanilla softmax model and the model trained with one learnable sink token, a held-out
byte stream (16x the training context by default) goes through the model one token at a time
with a fixed cache (half the training context, and a small one): window only, 1/2/4 sinks +
window and the sliding window with recomputation, then dense attention. It prints the perplexity
table (per byte), the sink rate on the first token that explains it, and a text sample from the
softmax model under StreamingLLM past its cache size.
Each cache size in ``cache_sizes`` gets its own rows (dense and the sink rates are per model).
Writes ``demo.csv`` (``model,policy,num_sinks,cache_size,tokens,ppl,common_ppl``),
``demo_curve.csv``, ``demo_sink_rate.csv``, ``demo_nll.npz`` (per-token NLL of every run),
``demo_<model>_cache<N>.png`` and ``sample.txt`` to ``--workdir``.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import logging

from experiments.common import cli, experiment
from lcache.analysis import first_token_sink_rate, plots
from lcache.cache import StreamingLLM
from lcache.data.heldout import heldout_stream, heldout_windows
from lcache.eval import (
    Engine,
    ProgramCache,
    chunk_curve,
    load_reference,
    markdown,
    save_nll,
    streaming_runs,
    summary_rows,
    write_csv,
)
from lcache.sampling import Sampling

PUBLISHED = ("Published (StreamingLLM Table 3, 160M models, cache 1024, PPL): vanilla 27.87 window "
             "only vs 18.05 with 4 sinks; learnable sink token 1235 without it vs 18.01 with it. "
             "Llama-2-7B (Table 2, cache 4096): 3359.95 vs 9.59.")


def pivot(rows: list[dict], rates: dict[str, dict]) -> list[dict]:
    """Summary rows -> one row per model and cache size: ppl per policy over the whole stream
    (dense, whose cache holds everything, repeated on each), recomputation and window only on
    the bytes the recomputation scores (``*``), then the model's sink rates."""
    dense = {r["model"]: r["ppl"] for r in rows if r["policy"] == "dense"}
    out = {}
    for r in rows:
        if r["policy"] == "dense":
            continue
        s = r["num_sinks"]
        label = {"window": "window only", "streaming_llm": f"{s} sink{'s' * (s > 1)} + window",
                 "recompute": "recompute*"}.get(r["policy"], r["policy"])
        row = out.setdefault((r["model"], r["cache_size"]), dict(model=r["model"],
                                                                 cache=r["cache_size"]))
        row[label] = r["ppl"]
        if r["policy"] == "window":  # on the bytes the recomputation baseline scores
            row["window only*"] = r["common_ppl"]
    for (name, _), row in out.items():
        row.update({"dense": dense[name], "sink rate, first token": rates[name]["first"],
                    "sink rate, BOS": rates[name]["bos"]})
    return list(out.values())


def sample_text(engine: Engine, tok, c) -> str:
    """A continuation of ``c.prompt`` under StreamingLLM(4 sinks) with a cache far smaller than
    the text generated."""
    policy = StreamingLLM.from_budget(c.sample_cache, num_sinks=4)
    ids = [tok.bos_id, *tok.encode(c.prompt)]
    out = engine.generate([ids], policy, Sampling(max_new_tokens=c.sample_tokens,
                                                  temperature=c.temperature), seed=c.seed)[0]
    return c.prompt + tok.decode(out.tolist())


@experiment
def run(c, workdir: str) -> list[dict]:
    start = time.time()
    rows, curves, rates, nll, sample = [], {}, {}, {}, ""
    programs = ProgramCache()  # both models' compiled programs, reported together
    for name, model_dir in c.models:
        model, tok = load_reference(model_dir, c.compute_dtype)
        engine = Engine.create(model, programs)
        stream = heldout_stream(tok, c.stream_tokens, c.offset)
        for i, cache in enumerate(c.cache_sizes):
            logging.info("%s: %d-byte stream, cache %d", name, c.stream_tokens, cache)
            runs = streaming_runs(engine, stream, cache, tuple(c.sinks), -1 if i == 0 else 0,
                                  c.recompute_stride, chunk=c.chunk)
            rows += [dict(model=name, **r) for r in summary_rows(runs)]
            nll.setdefault(f"{name}_", []).extend(runs)
            curves.update({(name, cache, r.label): chunk_curve(
                r.nll, c.curve_every)[1] for r in runs})
        windows = heldout_windows(tok, c.sink_samples, c.sink_len, c.offset + c.stream_tokens)
        rates[name] = first_token_sink_rate(engine.analyze(windows)["weights"],
                                            model.cfg.num_sink_tokens, c.sink_eps)
        if name == c.sample_model:
            sample = sample_text(engine, tok, c)
    write_outputs(c, workdir, rows, curves, rates, sample)
    save_nll(os.path.join(workdir, "demo_nll.npz"), nll)
    print(f"Held-out stream of {c.stream_tokens} bytes (training context 512), perplexity per "
          f"byte; * = on every {c.recompute_stride}-th byte, the ones the sliding window with "
          f"recomputation scores; sink rate = Gu et al. (eps {c.sink_eps}, T={c.sink_len}), "
          "fraction of (sample, layer, head) on the first token / on BOS.")
    print(markdown(pivot(rows, rates)))
    print(PUBLISHED)
    print(f"Sample ({c.sample_model} model, StreamingLLM 4+{c.sample_cache - 4}, "
          f"{c.sample_tokens} new bytes):\n{sample}")
    print(programs.report())
    print(f"wall time {time.time() - start:.0f} s")
    return rows


def write_outputs(c, workdir: str, rows, curves, rates, sample) -> None:
    """CSVs, one curve plot per model and cache size (with the model's dense curve) and the
    text sample."""
    os.makedirs(workdir, exist_ok=True)
    write_csv(os.path.join(workdir, "demo.csv"), rows)
    write_csv(os.path.join(workdir, "demo_sink_rate.csv"),
                        [dict(model=m, position=k, sink_rate=v) for m, r in rates.items()
                         for k, v in r.items()])
    ends = chunk_curve(np.zeros(c.stream_tokens), c.curve_every)[0]
    write_csv(os.path.join(workdir, "demo_curve.csv"), [
        dict(model=m, cache=n, run=label, end_token=int(e), ppl=float(v))
        for (m, n, label), ys in curves.items() for e, v in zip(ends, ys, strict=True)])
    for name, _ in c.models:
        for cache in c.cache_sizes:
            plots.plot_lines(ends, {label: ys for (m, n, label), ys in curves.items()
                                    if m == name and (n == cache or label == "dense")},
                             os.path.join(workdir, f"demo_{name}_cache{cache}.png"),
                             "bytes streamed", f"ppl per {c.curve_every} bytes",
                             f"{name} model, cache {cache}", logy=True)
    with open(os.path.join(workdir, "sample.txt"), "w") as f:
        f.write(sample)


if __name__ == "__main__":
    cli(run, "configs/demo.py:default")
