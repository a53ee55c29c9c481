"""Per-model head scores for the head-wise specs (``duo``, ``headkv``, ``razor``), computed from
our own held-out text and written as gate files (``lcache.cache.duo.save_gates``'s format):

  duo_proxy.json  DuoAttention gates from kvpress's cheap proxy (``head_patterns``)
  razor.json      RazorAttention retrieval heads (1/0) from induction / echo scores
  duo_gates.json  DuoAttention's optimised gates (``duo_optimise``) on passkey prompts, when
                  ``steps > 0``

Used by ``experiments.head_gates`` and by ``experiments.ruler`` (proxies at run start).
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

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


def write_head_gates(c, folder: str) -> dict[str, np.ndarray]:
    """The gate files of config ``c`` (``configs/head_gates.py``: ``model``, ``texts`` x
    ``tokens`` held-out tokens, ``q_len``, Razor's ``razor_period``/``razor_repeats``,
    DuoAttention's optimisation ``steps``/``sink``/``recent``/``lr``/``l1``) written to
    ``folder`` -> ``{name: gates [L, Hkv]}``."""
    model, tok = load_reference(c.model)
    os.makedirs(folder, exist_ok=True)
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
        save_gates(os.path.join(folder, f"{name}.json"), gates, source=f"{c.model} ({name})")
        logging.info("%s: %s", name, np.round(gates, 3).tolist())
    return out
