"""Teacher-forced NLL under a cache policy, the half of ``Engine`` that scores given tokens:
a long stream token by token (compiled ``lax.scan`` chunks), continuations after prompts, and
the two baselines of the StreamingLLM comparison (dense attention by chunked prefill, the
sliding window with recomputation). NLL is float32 nats per target token.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from absl import logging

from lcache.cache import Dense, reserve_decode_room
from lcache.eval import programs
from lcache.eval.batching import check_fits, check_tokens, fill_rows, micro_batches, pad_prompts
from lcache.eval.compiled import Job, spec


class TeacherForced:
    """Mixed into ``Engine``: uses its ``run``, ``init_cache``, ``_init_cache``, ``_prefill``,
    ``_prefill_rows``, ``_cache_specs`` and ``cfg``."""

    def decode_nll_jobs(self, policy, *, batch: int, chunk: int) -> list[Job]:
        """The programs ``stream_nll`` runs for ``batch`` rows, ``chunk`` steps per call."""
        steps = spec((chunk, batch))
        return [self._init_cache(policy, batch),
                Job.of(programs.decode_nll, self._cache_specs(policy, batch), steps, steps, steps,
                       donate=(0,), policy=policy)]

    def decode_nll(self, caches, tokens_BT, pos0_B, policy, chunk: int = 1024,
                   label: str = "decode") -> tuple[list, np.ndarray]:
        """Feed ``tokens [B, T]`` one decode step at a time at positions ``pos0 [B] + t`` into
        ``caches``, scoring each next token -> ``(caches, nll [B, T - 1])`` float32 nats.

        ``chunk`` steps run per call in one compiled scan (the last chunk is padded after every
        scored token, so the padding changes nothing that is returned).
        """
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        tokens = np.asarray(tokens_BT, np.int32)
        check_tokens(tokens, self.cfg.vocab_size)
        b, t = tokens.shape
        n = t - 1
        steps = -(-n // chunk) * chunk
        inputs = np.zeros((steps, b), np.int32)
        targets = np.zeros((steps, b), np.int32)
        inputs[:n], targets[:n] = tokens[:, :-1].T, tokens[:, 1:].T
        pos = np.asarray(pos0_B, np.int32)[None, :] + np.arange(steps, dtype=np.int32)[:, None]
        out, start = [], time.perf_counter()
        for s in range(0, steps, chunk):
            caches, nll = self.run(Job.of(programs.decode_nll, caches, inputs[s:s + chunk],
                                          targets[s:s + chunk], pos[s:s + chunk], donate=(0,),
                                          policy=policy))
            out.append(np.asarray(nll))
            done = min(s + chunk, n)
            logging.info("%s %d/%d tokens, %.1f tok/s", label, done, n,
                         done / (time.perf_counter() - start))
        return caches, np.concatenate(out)[:n].T.astype(np.float32)

    def stream_nll(self, stream, policy, chunk: int = 1024, label: str = "stream") -> np.ndarray:
        """Token-by-token streaming (the StreamingLLM evaluation) of ``stream [N + 1]`` (BOS
        first) under ``policy`` -> ``nll [N]``: step ``i`` feeds ``stream[i]`` at position
        ``i`` and scores ``stream[i + 1]``."""
        caches = self.init_cache(policy, 1)
        _, nll = self.decode_nll(caches, np.asarray(stream)[None], np.zeros(1, np.int32),
                                 policy, chunk, label)
        return nll[0]

    def continuation_nll(self, prompts: Sequence[Sequence[int]],
                         continuations: Sequence[Sequence[int]], policy, *,
                         pad_to: int | None = None, batch: int | None = None,
                         pad_multiple: int = 16) -> list[np.ndarray]:
        """Prefill each prompt under ``policy`` (a compressing policy compresses once, after the
        prompt; an unsized decode room is sized for the continuations), then feed its
        continuation one decode step at a time -> per row
        ``nll [len(continuation)]`` float32 nats. Continuations are padded to a multiple of
        ``pad_multiple`` steps, so lengths that round alike share one program."""
        if len(prompts) != len(continuations) or min(map(len, continuations)) < 1:
            raise ValueError("need one non-empty continuation per prompt")
        tokens, lengths = pad_prompts(prompts, pad_multiple, pad_to=pad_to)
        cont, _ = pad_prompts(continuations, pad_multiple)
        check_tokens(cont, self.cfg.vocab_size)
        check_tokens(tokens, self.cfg.vocab_size)
        steps = max(map(len, continuations)) - 1
        policy = reserve_decode_room(policy, steps)  # SnapKV(decode_capacity=None): room for them
        check_fits(self.cfg, policy, int(lengths.max()), steps)
        out = []
        for start, stop in micro_batches(len(tokens), batch):
            rows = stop - start if batch is None else batch
            tok, lens, c = (fill_rows(x[start:stop], rows) for x in (tokens, lengths, cont))
            targets = np.zeros_like(tok)
            targets[np.arange(rows), lens - 1] = c[:, 0]
            nll, caches = self._prefill_rows(policy, tok, lens, targets)
            first = np.asarray(nll)[np.arange(rows), lens - 1]
            _, rest = self.decode_nll(caches, c, lens, policy, chunk=c.shape[1] - 1,
                                      label="continuation")
            out.extend(np.concatenate([first[:, None], rest], axis=1)[: stop - start])
        return [row[: len(c)].astype(np.float32) for row, c in zip(out, continuations,
                                                                   strict=True)]

    def dense_nll(self, stream, chunk: int = 512, label: str = "dense") -> np.ndarray:
        """Full attention over all of ``stream [N + 1]`` -> ``nll [N]``: a ``Dense`` cache
        filled by chunked prefill, i.e. token-by-token decoding computed ``chunk`` queries at a
        time (nothing is evicted and keys keep their positions, so the result is the same)."""
        stream = np.asarray(stream, np.int32)
        check_tokens(stream, self.cfg.vocab_size)
        n = stream.size - 1
        steps = -(-n // chunk) * chunk
        policy = Dense(steps + self.cfg.num_sink_tokens)
        tokens = np.zeros((1, steps), np.int32)
        targets = np.zeros((1, steps), np.int32)
        tokens[0, :n], targets[0, :n] = stream[:-1], stream[1:]
        pos = np.where(np.arange(steps) < n, np.arange(steps), -1).astype(np.int32)[None]
        caches = self.init_cache(policy, 1)
        out, start = [], time.perf_counter()
        for s in range(0, steps, chunk):
            nll, caches = self.run(self._prefill(policy, caches, tokens[:, s:s + chunk],
                                                 pos[:, s:s + chunk], targets[:, s:s + chunk]))
            out.append(np.asarray(nll[0]))
            done = min(s + chunk, n)
            logging.info("%s %d/%d tokens, %.1f tok/s", label, done, n,
                         done / (time.perf_counter() - start))
        return np.concatenate(out)[:n].astype(np.float32)

    def recompute_nll(self, stream, window: int, stride: int = 1, batch: int = 32,
                      label: str = "recompute") -> np.ndarray:
        """Sliding window with re-computation (the StreamingLLM paper's baseline): target ``i``
        of ``stream [N + 1]`` is scored by a fresh full forward over the last ``window`` tokens
        ``stream[i - window + 1 : i + 1]`` at positions ``0..window-1`` (plus the model's own
        sink tokens), ``batch`` windows per forward. Only every ``stride``-th target is scored
        (``recompute_targets``) -> ``nll [N]`` with NaN elsewhere."""
        if window < 1:
            raise ValueError(f"recompute window must be >= 1, got {window}")
        stream = np.asarray(stream, np.int32)
        check_tokens(stream, self.cfg.vocab_size)
        n = stream.size - 1
        idx = recompute_targets(n, stride)
        width = min(window, n)
        nll = np.full(n, np.nan, np.float32)
        start = time.perf_counter()
        for s in range(0, idx.size, batch):
            rows = fill_rows(idx[s:s + batch], batch)
            first = np.maximum(rows - window + 1, 0)
            cols = first[:, None] + np.arange(width)[None, :]
            windows = stream[np.minimum(cols, stream.size - 1)]  # right padding after the target
            scored = self.run(Job.of(programs.window_nll, windows,
                                     (rows - first).astype(np.int32), stream[rows + 1]))
            k = min(batch, idx.size - s)
            nll[rows[:k]] = np.asarray(scored)[:k]
            logging.info("%s %d/%d targets, %.1f targets/s", label, s + k, idx.size,
                         (s + k) / (time.perf_counter() - start))
        return nll


def recompute_targets(n: int, stride: int) -> np.ndarray:
    """Target indices the recomputation baseline scores: every ``stride``-th of ``n``."""
    if stride < 1:
        raise ValueError(f"recompute stride must be >= 1, got {stride}")
    return np.arange(0, n, stride)
