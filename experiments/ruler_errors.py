"""Why needle answers fail under each cache policy: the right needle, a distractor, or nothing.

    python -m experiments.ruler_errors --config=configs/ruler_errors.py --workdir=runs/ruler_errors

For every ``policies`` x ``budget_fracs`` x ``contexts`` cell (``lcache.eval.suite``), the
``tasks`` examples (multi-key needles: one target and three distractor lines) are generated
greedily and each answer is classified by ``lcache.data.ruler.answer_kind``: 'correct',
'distractor' (the number of another needle: retrieval worked, key matching did not) or 'other'.
Writes ``ruler_errors.csv`` (``policy,budget_frac,task,context,trials,correct,distractor,other``,
fractions of ``trials``) and prints it with the engine's report.
"""

from __future__ import annotations

import os

from experiments.common import cli, experiment
from lcache.data import ruler
from lcache.data.heldout import heldout_tokens
from lcache.eval import Engine, ProgramCache, load_reference, markdown, suite, write_csv
from lcache.sampling import Sampling


@experiment
def run(c, workdir: str) -> list[dict]:
    model, tok = load_reference(c.model_dir, c.compute_dtype)
    cells = suite.grid(c.policies, c.budget_fracs, c.contexts)
    max_new = max(ruler.MAX_NEW_TOKENS[t] for t in c.tasks)
    suite.check_cells(cells, model.cfg, max_new)
    examples = ruler.make_suite(tok, heldout_tokens(tok), tuple(c.tasks), tuple(c.contexts),
                                tuple(c.depths), c.trials, c.seed)
    engine = Engine.create(model, ProgramCache())
    sampling = Sampling(max_new_tokens=max_new)
    rows = []
    for cell in cells:
        exs = [e for e in examples if e.context == cell.context]
        prompts = [e.prompt_ids for e in exs]
        policy = suite.cell_policy(engine, cell, prompts, max_new, c.probe_rows)
        outs = engine.generate(prompts, policy, sampling, pad_to=cell.context, batch=c.batch)
        kinds = [ruler.answer_kind(e, tok.decode(o.tolist())) for e, o in zip(exs, outs,
                                                                                strict=True)]
        for task in c.tasks:
            got = [k for k, e in zip(kinds, exs, strict=True) if e.task == task]
            rows.append(dict(policy=cell.spec, budget_frac=cell.budget_frac, task=task,
                             context=cell.context, trials=len(got),
                             **{k: got.count(k) / len(got) for k in ruler.ANSWER_KINDS}))
    write_csv(os.path.join(workdir, "ruler_errors.csv"), rows)
    print(markdown(rows, floats="{:.2f}"))
    print(engine.report())
    return rows


if __name__ == "__main__":
    cli(run, "configs/ruler_errors.py")
