"""Passkey retrieval under a cache policy (greedy answer and the NLL of the true one, from one
program), and a small quality set of held-out text and passkeys for sweeps and budget searches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from lcache.data import PasskeyExample, make_passkey, score_passkey
from lcache.data.heldout import heldout_windows
from lcache.data.passkey import answer_text
from lcache.eval.engine import Engine
from lcache.eval.perplexity import ppl
from lcache.sampling import Sampling


def make_examples(tok, context_len: int, depths: Sequence[float], trials: int, seed: int
                  ) -> list[PasskeyExample]:
    """``trials`` prompts per depth, depth-major (keys uniform in [1, 50000], fixed by ``seed``
    and the context)."""
    if trials < 1:
        raise ValueError(f"passkey trials must be >= 1, got {trials}")
    rng = np.random.default_rng([seed, context_len])
    return [make_passkey(tok, context_len, float(d), int(rng.integers(1, 50001)))
            for d in depths for _ in range(trials)]


def score_passkeys(engine: Engine, tok, examples: Sequence[PasskeyExample], policy,
                   max_new_tokens: int, *, pad_to: int | None = None, batch: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy answers and the teacher-forced NLL of the true answer ``" {key}."`` (one program,
    ``Engine.generate_scored``) -> ``(solved [N] bool: first integer == key, answer_nll [N]
    nats per answer token)``."""
    answers = [np.asarray(tok.encode(answer_text(e.key)), np.int32) for e in examples]
    outs, nll = engine.generate_scored([e.prompt_ids for e in examples], answers, policy,
                                       Sampling(max_new_tokens=max_new_tokens), pad_to=pad_to,
                                       batch=batch)
    solved = np.array([score_passkey(tok.decode(o.tolist()), e.key)
                       for o, e in zip(outs, examples, strict=True)])
    return solved, np.array([x.mean() for x in nll])


@dataclasses.dataclass(frozen=True)
class TaskSet:
    """A small quality set: held-out ``texts [K, L]`` (BOS first; the first ``prefix`` tokens
    are the prompt, the rest is scored token by token) and passkey ``examples`` (the answer is
    scored, and greedy generation checked)."""

    texts: np.ndarray
    prefix: int
    examples: tuple

    @property
    def prompts(self) -> list[np.ndarray]:
        """Every prompt of the set (texts then passkeys): what a policy is built for."""
        return [t[:self.prefix] for t in self.texts] + [e.prompt_ids for e in self.examples]

    @property
    def continuation_len(self) -> int:
        """Tokens scored after each text prompt."""
        return self.texts.shape[1] - self.prefix


def make_task_set(tok, num_texts: int, text_len: int, prefix: int, context_len: int,
                  depths: Sequence[float], trials: int, seed: int, offset: int = 0) -> TaskSet:
    """``num_texts`` held-out windows from token ``offset`` plus ``trials`` passkeys per depth."""
    if not 0 < prefix < text_len:
        raise ValueError(f"prefix={prefix} must lie in (0, text_len={text_len})")
    return TaskSet(heldout_windows(tok, num_texts, text_len, offset), prefix,
                   tuple(make_examples(tok, context_len, depths, trials, seed)))


def quality(engine: Engine, tok, task: TaskSet, policy, max_new_tokens: int, *,
            batch: int | None = None) -> dict[str, float]:
    """Under ``policy``: held-out ``ppl`` of the text continuations, passkey ``answer_nll``
    (nats per answer token) and greedy passkey ``accuracy``."""
    nll = engine.continuation_nll([t[:task.prefix] for t in task.texts],
                                  [t[task.prefix:] for t in task.texts], policy, batch=batch)
    solved, answer_nll = score_passkeys(engine, tok, task.examples, policy, max_new_tokens,
                                        batch=batch)
    return dict(ppl=ppl(np.concatenate(nll)), answer_nll=float(answer_nll.mean()),
                accuracy=float(solved.mean()))
