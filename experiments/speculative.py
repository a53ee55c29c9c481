"""Self-speculative decoding with register tokens against plain decoding, under cache policies.

    python -m experiments.speculative --config=configs/speculative.py:gpu --workdir=runs/spec

For every model, policy (a registry spec at ``cache_size``) and batch: plain decoding
(``Engine.generate``) and speculative decoding (``Engine.generate_speculative``) at each draft
length the model's registers allow, on the same held-out prompts, each run once to compile and
warm up, then timed ``repeats`` times (median); tokens/s is new tokens over the wall time of
the whole call (prefill included: end to end). Writes to ``--workdir``:

  speculative.csv            model,draft_len,policy,batch,acceptance_rate,tokens_per_s,speedup
                             (draft_len 0: plain decoding, the baseline of ``speedup``)
  speculative_positions.csv  model,draft_len,policy,batch,position,acceptance_rate (per draft)

In greedy mode it also checks that the speculative tokens equal the plain ones (logged).
"""

from __future__ import annotations

import functools
import os
import statistics
import time

from absl import logging

from experiments.common import cli, experiment
from lcache.cache import registry
from lcache.data.heldout import heldout_windows
from lcache.eval import Engine, ProgramCache, load_reference, markdown, write_csv
from lcache.eval.speculative import check_drafting
from lcache.sampling import Sampling


def _models(text: str) -> list[tuple[str, str]]:
    """``"a=dir1,b=dir2"`` -> ``[(a, dir1), (b, dir2)]``."""
    pairs = [p.split("=", 1) for p in text.split(",") if p]
    if not pairs or any(len(p) != 2 or not all(p) for p in pairs):
        raise ValueError(f"models must be a comma-separated name=dir list, got {text!r}")
    return [tuple(p) for p in pairs]


def _timed(fn, repeats: int):
    """Run ``fn`` once (compile, warm up), then ``repeats`` times -> (median seconds, output)."""
    out = fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), out


@experiment
def run(c, workdir: str) -> list[dict]:
    """Run the comparison of config ``c``; write the CSVs; return the rows of
    ``speculative.csv``."""
    start = time.time()
    loaded = []
    for name, path in _models(c.models):  # every check before any work
        model, tok = load_reference(path, c.compute_dtype)
        lens = [n for n in c.draft_lens if n < model.cfg.register_depth] or [min(c.draft_lens)]
        check_drafting(model.cfg, max(lens))
        loaded.append((name, model, tok, lens))
    room = c.max_new_tokens + max(c.draft_lens) + 1
    sampling = Sampling(max_new_tokens=c.max_new_tokens, temperature=c.temperature)
    rows, positions = [], []
    for name, model, tok, lens in loaded:
        policies = {spec: registry.build(spec, c.cache_size, prompt_len=c.prompt_len,
                                         max_new=room, num_layers=model.cfg.num_layers,
                                         num_model_sinks=model.cfg.num_sink_tokens)
                    for spec in c.policies}
        prompts = heldout_windows(tok, max(c.batches), c.prompt_len, c.offset)
        engine = Engine.create(model, ProgramCache())
        for spec, policy in policies.items():
            for batch in c.batches:
                rows_in = [list(p) for p in prompts[:batch]]
                tokens = batch * c.max_new_tokens
                base_s, base = _timed(functools.partial(
                    engine.generate, rows_in, policy, sampling, pad_to=c.prompt_len), c.repeats)
                key = dict(model=name, policy=spec, batch=batch)
                rows.append(dict(model=name, draft_len=0, policy=spec, batch=batch,
                                 acceptance_rate="", tokens_per_s=tokens / base_s, speedup=1.0))
                for n in lens:
                    secs, (out, st) = _timed(functools.partial(
                        engine.generate_speculative, rows_in, policy, sampling, draft_len=n,
                        pad_to=c.prompt_len), c.repeats)
                    if c.temperature == 0:
                        same = all((a == b).all() for a, b in zip(base, out, strict=True))
                        logging.info("%s %s batch %d draft %d: greedy tokens %s plain", name,
                                     spec, batch, n, "equal" if same else "DIFFER FROM")
                    rows.append(dict(model=name, draft_len=n, policy=spec, batch=batch,
                                     acceptance_rate=st["acceptance_rate"],
                                     tokens_per_s=tokens / secs, speedup=base_s / secs))
                    positions += [dict(key, draft_len=n, position=i + 1, acceptance_rate=a)
                                  for i, a in enumerate(st["acceptance_per_position"])]
        print(engine.report())
    os.makedirs(workdir, exist_ok=True)
    write_csv(os.path.join(workdir, "speculative.csv"), rows)
    write_csv(os.path.join(workdir, "speculative_positions.csv"),
              [dict(model=r["model"], draft_len=r["draft_len"], policy=r["policy"],
                    batch=r["batch"], position=r["position"],
                    acceptance_rate=r["acceptance_rate"]) for r in positions])
    print(markdown(rows))
    print(f"wall time {time.time() - start:.0f} s")
    return rows


if __name__ == "__main__":
    cli(run, "configs/speculative.py:smoke")
