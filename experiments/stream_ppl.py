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

from experiments import streaming
from lcache.analysis import plots


@streaming.experiment
def run(c, workdir: str) -> list[dict]:
    """Run the comparison of config ``c``; write the CSVs and plot; return the summary rows."""
    start = time.time()
    model, tok = streaming.load_reference(c.model_dir, c.compute_dtype)
    stream = streaming.heldout_stream(tok, c.stream_tokens, c.offset)
    logging.info("%s: %d-token stream, cache %d", c.model_dir, c.stream_tokens, c.cache_size)
    runs = streaming.streaming_runs(model, stream, c.cache_size, tuple(c.sinks), c.dense_tokens,
                                    c.recompute_stride, c.h2o, c.chunk, c.recompute_batch)
    rows = streaming.summary_rows(runs)
    curve = streaming.curve_rows(runs, c.curve_every)
    os.makedirs(workdir, exist_ok=True)
    streaming.write_csv(os.path.join(workdir, "stream_ppl.csv"), rows)
    streaming.write_csv(os.path.join(workdir, "stream_ppl_curve.csv"), curve)
    streaming.save_nll(os.path.join(workdir, "stream_ppl_nll.npz"), {"": runs})
    ends = streaming.chunk_curve(runs[0].nll, c.curve_every)[0]
    plots.plot_lines(ends, {r.label: streaming.chunk_curve(r.nll, c.curve_every)[1]
                            for r in runs},
                     os.path.join(workdir, "stream_ppl.png"), "tokens streamed",
                     f"ppl per {c.curve_every} tokens",
                     f"{os.path.basename(c.model_dir)}: cache {c.cache_size}", logy=True)
    print(streaming.markdown(rows))
    print(f"wall time {time.time() - start:.0f} s")
    return rows


if __name__ == "__main__":
    streaming.cli(run, "configs/stream_ppl.py:default")
