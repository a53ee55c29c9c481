"""Streaming perplexity of one reference model under cache policies (StreamingLLM Tables 2/3).

    python -m experiments.stream_ppl --config=configs/stream_ppl.py:default --workdir=runs/sppl

Held-out text (BOS + ``stream_tokens`` tokens) is fed one token at a time through window only,
StreamingLLM with 1/2/4/8 sinks and H2O at one cache size, then dense attention over the first
``dense_tokens`` and the sliding window with recomputation on every ``recompute_stride``-th
target. Writes to ``--workdir``:

  stream_ppl.csv        policy,num_sinks,cache_size,tokens,ppl,common_ppl (common: the targets
                        every bounded-cache run scored, i.e. recomputation's)
  stream_ppl_curve.csv  policy,num_sinks,cache_size,end_token,ppl (per ``curve_every`` tokens)
  stream_ppl_nll.npz    every run's per-token NLL (NaN where not scored)
  stream_ppl.png        the curves, log scale
"""

from __future__ import annotations

import os
import time

from absl import logging

from experiments.common import cli, experiment
from lcache.analysis import plots
from lcache.cache import registry
from lcache.data.heldout import heldout_stream
from lcache.eval import (
    Engine,
    ProgramCache,
    chunk_curve,
    curve_rows,
    load_reference,
    markdown,
    save_nll,
    streaming_runs,
    summary_rows,
    write_csv,
)


@experiment
def run(c, workdir: str) -> list[dict]:
    """Run the comparison of config ``c``; write the CSVs and plot; return the summary rows."""
    start = time.time()
    model, tok = load_reference(c.model_dir, c.compute_dtype)
    stream = heldout_stream(tok, c.stream_tokens, c.offset)
    extra = [("h2o", registry.build("h2o", c.cache_size))] if c.h2o else []
    logging.info("%s: %d-token stream, cache %d", c.model_dir, c.stream_tokens, c.cache_size)
    engine = Engine.create(model, ProgramCache())  # this run's programs, reported at the end
    runs = streaming_runs(engine, stream, c.cache_size, tuple(c.sinks), c.dense_tokens,
                          c.recompute_stride, extra, c.chunk, c.recompute_batch)
    rows = summary_rows(runs)
    os.makedirs(workdir, exist_ok=True)
    write_csv(os.path.join(workdir, "stream_ppl.csv"), rows)
    write_csv(os.path.join(workdir, "stream_ppl_curve.csv"), curve_rows(runs, c.curve_every))
    save_nll(os.path.join(workdir, "stream_ppl_nll.npz"), {"": runs})
    ends = chunk_curve(runs[0].nll, c.curve_every)[0]
    plots.plot_lines(ends, {r.label: chunk_curve(r.nll, c.curve_every)[1] for r in runs},
                     os.path.join(workdir, "stream_ppl.png"), "tokens streamed",
                     f"ppl per {c.curve_every} tokens",
                     f"{os.path.basename(c.model_dir)}: cache {c.cache_size}", logy=True)
    print(markdown(rows))
    print(engine.report())
    print(f"wall time {time.time() - start:.0f} s")
    return rows


if __name__ == "__main__":
    cli(run, "configs/stream_ppl.py:default")
