"""Per-model head scores for the head-wise specs (``duo``, ``headkv``, ``razor``).

    python -m experiments.head_gates --config=configs/head_gates.py:smoke --workdir=runs/gates

From our own held-out text (nothing downloaded), for the checkpoint ``config.model``:
  duo_proxy.json  DuoAttention gates from kvpress's cheap proxy (``head_patterns``)
  razor.json      RazorAttention retrieval heads (1/0) from induction / echo scores on
                  repeated random blocks (top 14% / 1%)
  duo_gates.json  DuoAttention's optimised gates (``duo_optimise``) on passkey prompts, when
                  ``config.steps > 0``
Each file is ``lcache.cache.duo.save_gates``'s format; load one with
``duo.load_gates(path, num_layers=, num_kv_heads=)`` and pass it as ``head_scores`` to
``registry.build`` / ``eval.policy_for_prompts``.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from experiments.common import cli
from lcache.analysis.head_patterns import duo_proxy_gates, razor_head_scores
from lcache.cache.duo import save_gates
from lcache.cache.razor import razor_heads
from lcache.data.heldout import heldout_stream
from lcache.eval import load_reference


def passkey_rows(tok, n: int, t: int, seed: int = 0):
    """``(tokens [n, t], answer [n, t])``: held-out text with a 5-digit key stated early and
    repeated at the end; the answer tokens are the repetition (retrieval-dependent)."""
    rng = np.random.default_rng(seed)
    text = heldout_stream(tok, n * t)[1:].reshape(n, t)
    tokens, answer = text.copy(), np.zeros((n, t), bool)
    for i in range(n):
        key = tok.encode(f" the pass key is {rng.integers(10000, 99999)}.")
        start = int(rng.integers(1, t // 4))
        tokens[i, start:start + len(key)] = key
        tokens[i, t - len(key):] = key
        answer[i, t - len(key):] = True
    return tokens, answer


def run(c, workdir: str) -> dict:
    model, tok = load_reference(c.model)
    os.makedirs(workdir, exist_ok=True)
    texts = heldout_stream(tok, c.texts * c.tokens)[1:].reshape(c.texts, c.tokens)
    out = {"duo_proxy": duo_proxy_gates(model, texts, c.q_len)}
    induction, echo = razor_head_scores(model, c.razor_period, c.razor_repeats)
    out["razor"] = razor_heads(induction, echo).astype(np.float64)
    if c.steps:
        from lcache.analysis.duo_optimise import optimise_duo_gates

        tokens, answer = passkey_rows(tok, c.texts, c.tokens)
        out["duo_gates"], losses = optimise_duo_gates(
            model, tokens, answer, sink=c.sink, recent=c.recent, steps=c.steps, lr=c.lr,
            l1=c.l1)
        logging.info("duo optimisation: loss %.4g -> %.4g", losses[0], losses[-1])
    for name, gates in out.items():
        save_gates(os.path.join(workdir, f"{name}.json"), gates, source=f"{c.model} ({name})")
        logging.info("%s: %s", name, np.round(gates, 3).tolist())
    return out


if __name__ == "__main__":
    cli(run, "configs/head_gates.py:smoke")
