"""The decode engine: one model's compiled programs for generation, teacher-forced NLL and
prefill under any cache policy, keyed by (policy, static shapes) and counted.

    engine = Engine.create(model)
    outs = engine.generate(prompts, policy, Sampling(max_new_tokens=12), pad_to=1024, batch=16)
    nll = engine.stream_nll(stream, StreamingLLM(window=252, num_sinks=4))
    print(engine.report())           # compiles and seconds per program: where the time went

Prompts of different lengths share one program when they share ``pad_to`` and ``batch``;
``precompile(jobs, threads)`` compiles many (policy, shape) programs concurrently before a sweep.
Generation and prefill live here, teacher-forced scoring in ``nll.TeacherForced``, the program
bodies in ``programs``, compilation and its statistics in ``compiled``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lcache.cache import Policy
from lcache.eval import programs, speculative
from lcache.eval.batching import (
    check_fits,
    check_generation,
    check_tokens,
    fill_rows,
    micro_batches,
    pad_prompts,
    row_surplus,
    split_questions,
)
from lcache.eval.compiled import Job, ProgramCache, abstract, signature, spec
from lcache.eval.nll import TeacherForced
from lcache.model import ModelConfig
from lcache.sampling import Sampling

SHARED = ProgramCache()  # engines created without their own cache share these programs


def _key_bits(seed: int, index: int) -> np.ndarray:
    """Raw bits of the sampling key of micro-batch ``index``."""
    return np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(seed), index)))


def _cut_at_eos(row: np.ndarray, eos_id: int | None) -> np.ndarray:
    if eos_id is not None and (row == eos_id).any():
        return row[: int(np.argmax(row == eos_id)) + 1]
    return row


@dataclasses.dataclass(frozen=True)
class Engine(TeacherForced):
    """A model split into ``graphdef`` (static) and ``params`` (arrays) plus its compiled
    programs (``programs``, shared by default). Frozen: a snapshot of the weights.

    ``cache_dtype``: dtype of the caches' full-precision arrays (None: the compute dtype).
    ``sink_layer``: KVSink's layer: policies storing outlier-detected sinks
    (``sink_detect='outlier'``) score prompt tokens by the residual stream after this block
    (None: they use the attention mass).
    """

    graphdef: nnx.GraphDef
    params: nnx.State = dataclasses.field(repr=False)
    cfg: ModelConfig
    programs: ProgramCache = dataclasses.field(default=SHARED, repr=False)
    cache_dtype: str | None = None
    sink_layer: int | None = None

    @classmethod
    def create(cls, model, programs: ProgramCache | None = None, *,
               cache_dtype: str | None = None, sink_layer: int | None = None) -> Engine:
        if sink_layer is not None and not 0 <= sink_layer <= model.cfg.num_layers:
            raise ValueError(f"sink_layer={sink_layer} outside [0, {model.cfg.num_layers}]")
        if cache_dtype is not None:
            cache_dtype = jnp.dtype(cache_dtype).name  # raises on an unknown dtype
        graphdef, params = nnx.split(model)
        return cls(graphdef, params, model.cfg, programs or SHARED, cache_dtype, sink_layer)

    @functools.cached_property
    def _params_sig(self):
        return signature(self.params)

    # -- compiled programs -------------------------------------------------------------------
    def run(self, job: Job):
        """Run one program instance (compiled on first use) -> its outputs."""
        return self.programs.run(self.graphdef, self.params, self._params_sig, job)

    def precompile(self, jobs: Iterable[Job], threads: int = 8) -> float:
        """Compile ``jobs`` (from the ``*_jobs`` methods) ahead of time, ``threads`` at a time ->
        wall seconds."""
        return self.programs.precompile(self.graphdef, self.params, self._params_sig, jobs,
                                        threads)

    def report(self) -> str:
        """Compiles, compile seconds, calls and run seconds per program, as text."""
        return self.programs.report()

    def init_cache(self, policy, batch: int) -> list:
        """Empty per-layer caches of ``batch`` rows (sink tokens prefilled)."""
        return self.run(self._init_cache(policy, batch))

    def _init_cache(self, policy, batch: int) -> Job:
        return Job.of(programs.init_cache, policy=policy, batch=batch,
                      cache_dtype=self.cache_dtype)

    def _prefill(self, policy, caches, tokens, pos, targets, sink_scores: bool = True) -> Job:
        """One chunk; ``sink_scores=False``: no KVSink outlier scores (a chunk that does not
        start the stream, whose own forward from position 0 would misplace them)."""
        return Job.of(programs.prefill, caches, tokens, pos, targets, donate=(0,), policy=policy,
                      sink_layer=self.sink_layer if sink_scores else None)

    def _cache_specs(self, policy, batch: int):
        fn = functools.partial(programs.init_cache, self.graphdef, policy=policy, batch=batch,
                               cache_dtype=self.cache_dtype)
        return abstract(jax.eval_shape(fn, self.params))

    # -- generation --------------------------------------------------------------------------
    def _generate(self, policy, sampling, tokens, lengths, bits, surplus, forced,
                  question=None) -> Job:
        static = dict(policy=policy, sampling=sampling, cache_dtype=self.cache_dtype,
                      sink_layer=self.sink_layer)
        if question is not None:
            return Job.of(programs.generate_split, tokens, lengths, *question, bits, surplus,
                          **static)
        if forced is None:
            return Job.of(programs.generate, tokens, lengths, bits, surplus, **static)
        return Job.of(programs.generate_scored, tokens, lengths, bits, surplus, forced, **static)

    def generate_jobs(self, policy, sampling: Sampling, *, pad_to: int, batch: int,
                      score_to: int = 0, row_budgets: bool = False,
                      question_to: int = 0) -> list[Job]:
        """The program ``generate`` (``score_to = 0``) or ``generate_scored`` (references
        padded to ``score_to`` tokens) runs for ``batch`` rows padded to ``pad_to`` tokens
        (``row_budgets``: called with ``budgets``; ``question_to``: ``generate_split`` with
        questions padded to that many tokens, called with ``question_at``)."""
        bits = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
        forced = spec((batch, score_to)) if score_to else None
        surplus = spec((batch,)) if row_budgets else None
        question = (spec((batch, question_to)), spec((batch,))) if question_to else None
        policy, _ = check_generation(self.cfg, policy, sampling)
        return [self._generate(policy, sampling, spec((batch, pad_to)), spec((batch,)),
                               spec(bits.shape, bits.dtype), surplus, forced, question)]

    def generate(self, prompts: Sequence[Sequence[int]], policy: Policy | Sequence[Policy],
                 sampling: Sampling | None = None, *, pad_to: int | None = None,
                 batch: int | None = None, seed: int = 0, pad_multiple: int = 16,
                 budgets: Sequence[int] | None = None,
                 question_at: Sequence[int] | None = None) -> list[np.ndarray]:
        """Continuations of token-id ``prompts`` under ``policy`` -> one int32 array per prompt
        (cut after ``sampling.eos_id``; ``sampling=None``: greedy, 32 tokens).

        Prompts are right-padded to ``pad_to`` (default: the longest, rounded up to
        ``pad_multiple``) and run ``batch`` rows at a time (default: all at once); the last
        micro-batch is filled with dummy rows that are dropped. Micro-batch ``i`` samples with
        ``fold_in(key(seed), i)``. ``budgets`` (one per prompt, score-based policies built for
        the largest): budget as data, every budget in one program (``row_surplus``).
        ``question_at`` (one index per prompt, ``0 < question_at < len(prompt)``): prompt ``i``
        is prefilled as its context ``[:question_at[i]]`` (padded to ``pad_to``), then its
        question (padded to the longest question rounded up to ``pad_multiple``), so the
        policy compresses the context before the question arrives (``generate_split``).
        """
        question = None if question_at is None else split_questions(prompts, question_at,
                                                                    pad_multiple)
        return self._generate_rows(prompts, None, policy, sampling, pad_to, batch, seed,
                                   pad_multiple, budgets, question)[0]

    def generate_scored(self, prompts: Sequence[Sequence[int]],
                        references: Sequence[Sequence[int]], policy: Policy | Sequence[Policy],
                        sampling: Sampling | None = None, *, pad_to: int | None = None,
                        batch: int | None = None, seed: int = 0, pad_multiple: int = 16,
                        budgets: Sequence[int] | None = None
                        ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """``generate`` plus the teacher-forced NLL (float32 nats) of each prompt's
        ``reference`` continuation (e.g. the true answer: a graded signal where accuracy is 0
        or 1), both from one prefill in one program -> ``(tokens, nll [len(reference)])`` per
        prompt. References are padded to a multiple of ``pad_multiple``."""
        if len(references) != len(prompts) or min(map(len, references)) < 1:
            raise ValueError("need one non-empty reference per prompt")
        forced, _ = pad_prompts(references, pad_multiple)
        out, nll = self._generate_rows(prompts, (forced, max(map(len, references))), policy,
                                       sampling, pad_to, batch, seed, pad_multiple, budgets)
        return out, [x[: len(r)].astype(np.float32) for x, r in zip(nll, references,
                                                                    strict=True)]

    def _generate_rows(self, prompts, scored, policy, sampling, pad_to, batch, seed,
                       pad_multiple, budgets, question=None
                       ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Shared by ``generate`` and ``generate_scored`` (``scored``: None or the padded
        references ``[N, D]`` and their longest real length; ``question``: None or
        ``(contexts, padded questions [N, Q], question lengths [N])``)."""
        sampling = sampling or Sampling()
        tokens, lengths = pad_prompts(prompts, pad_multiple, pad_to=pad_to)
        check_tokens(tokens, self.cfg.vocab_size)
        forced, longest = scored or (None, 0)
        if forced is not None:
            check_tokens(forced, self.cfg.vocab_size)
        policy, new_tokens = check_generation(self.cfg, policy, sampling, longest)
        check_fits(self.cfg, policy, int(lengths.max()), new_tokens)
        surplus = None if budgets is None else row_surplus(policy, budgets, len(tokens))
        q_tokens = q_lengths = None
        if question is not None:
            contexts, q_tokens, q_lengths = question
            tokens, lengths = pad_prompts(contexts, pad_multiple, pad_to=tokens.shape[1])
        out, nll = [], []
        for i, (start, stop) in enumerate(micro_batches(len(tokens), batch)):
            rows = stop - start if batch is None else batch
            fill = lambda x, a=start, b=stop, n=rows: None if x is None else fill_rows(x[a:b], n)
            res = self.run(self._generate(
                policy, sampling, fill(tokens), fill(lengths), _key_bits(seed, i), fill(surplus),
                fill(forced), None if question is None else (fill(q_tokens), fill(q_lengths))))
            toks = res if forced is None else res[0]
            out.extend(np.asarray(toks)[: stop - start])
            if forced is not None:
                nll.extend(np.asarray(res[1])[: stop - start])
        return [_cut_at_eos(row, sampling.eos_id) for row in out], nll

    # -- self-speculative decoding -----------------------------------------------------------
    def generate_speculative(self, prompts: Sequence[Sequence[int]],
                             policy: Policy | Sequence[Policy], sampling: Sampling | None = None,
                             *, draft_len: int, pad_to: int | None = None,
                             batch: int | None = None, seed: int = 0, pad_multiple: int = 16
                             ) -> tuple[list[np.ndarray], dict]:
        """``generate`` with ``draft_len`` register drafts per pass, verified by the model
        (``lcache.eval.speculative``: greedy output equals ``generate``'s token for token,
        sampled output has its distribution) -> ``(tokens per prompt, stats)``; ``stats``:
        ``acceptance_rate`` (accepted / proposed drafts), ``acceptance_per_position``
        ``[draft_len]``, ``passes``. Needs a model trained with ``register_depth >
        draft_len``; caches get room for ``draft_len + 1`` tokens past the last one."""
        speculative.check_drafting(self.cfg, draft_len)
        sampling = sampling or Sampling()
        tokens, lengths = pad_prompts(prompts, pad_multiple, pad_to=pad_to)
        check_tokens(tokens, self.cfg.vocab_size)
        room = sampling.max_new_tokens + draft_len + 1
        policy, _ = check_generation(self.cfg, policy, sampling, room)
        check_fits(self.cfg, policy, int(lengths.max()), room)
        out, accepted, passes = [], 0, 0
        for i, (start, stop) in enumerate(micro_batches(len(tokens), batch)):
            rows = stop - start if batch is None else batch
            job = Job.of(speculative.generate_speculative, fill_rows(tokens[start:stop], rows),
                         fill_rows(lengths[start:stop], rows), _key_bits(seed, i),
                         policy=policy, sampling=sampling, draft_len=draft_len,
                         cache_dtype=self.cache_dtype)
            toks, acc, n = (np.asarray(x)[: stop - start] for x in self.run(job))
            out.extend(toks)
            accepted, passes = accepted + acc.sum(axis=0), passes + int(n.sum())
        per_position = np.asarray(accepted, np.float64) / max(passes, 1)
        stats = dict(acceptance_rate=float(per_position.mean()),
                     acceptance_per_position=per_position.tolist(), passes=passes)
        return [_cut_at_eos(row, sampling.eos_id) for row in out], stats

    # -- prefill -----------------------------------------------------------------------------
    def prefill_jobs(self, policy, *, pad_to: int, batch: int) -> list[Job]:
        """The programs ``prefill`` and ``continuation_nll`` start with (fresh caches, then one
        chunk of ``pad_to`` tokens)."""
        tokens = spec((batch, pad_to))
        return [self._init_cache(policy, batch),
                self._prefill(policy, self._cache_specs(policy, batch), tokens, tokens, tokens)]

    def _prefill_rows(self, policy, tokens, lengths, targets):
        """Fresh caches, one prefill of right-padded rows -> ``(nll [B, T], caches)``."""
        caches = self.init_cache(policy, len(tokens))
        pos = np.where(np.arange(tokens.shape[1])[None] < lengths[:, None],
                       np.arange(tokens.shape[1])[None], -1).astype(np.int32)
        return self.run(self._prefill(policy, caches, tokens, pos, targets))

    def prefill(self, prompts: Sequence[Sequence[int]], policy, *, pad_to: int | None = None,
                batch: int | None = None, pad_multiple: int = 16,
                question_at: Sequence[int] | None = None) -> list:
        """The per-layer caches after prefilling ``prompts`` under ``policy`` (DynamicKV's
        probe), as host arrays of ``len(prompts)`` rows (micro-batches concatenated).
        ``question_at``: each prompt's question as a second chunk (as in ``generate``)."""
        tokens, lengths = pad_prompts(prompts, pad_multiple, pad_to=pad_to)
        check_tokens(tokens, self.cfg.vocab_size)
        check_fits(self.cfg, policy, int(lengths.max()), 0)
        q_tokens = None
        if question_at is not None:
            contexts, q_tokens, q_lengths = split_questions(prompts, question_at, pad_multiple)
            tokens, lengths = pad_prompts(contexts, pad_multiple, pad_to=tokens.shape[1])
        parts = []
        for start, stop in micro_batches(len(tokens), batch):
            rows = stop - start if batch is None else batch
            fill = lambda x, a=start, b=stop, n=rows: fill_rows(x[a:b], n)  # noqa: E731
            tok, length = fill(tokens), fill(lengths)
            _, caches = self._prefill_rows(policy, tok, length, np.zeros_like(tok))
            if q_tokens is not None:
                q_tok, steps = fill(q_tokens), np.arange(q_tokens.shape[1])[None]
                pos = np.where(steps < fill(q_lengths)[:, None], length[:, None] + steps, -1)
                _, caches = self.run(self._prefill(policy, caches, q_tok, pos.astype(np.int32),
                                                   np.zeros_like(q_tok), sink_scores=False))
            parts.append(jax.tree.map(lambda x, n=stop - start: np.asarray(x)[:n], caches))
        return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)

    # -- analysis ----------------------------------------------------------------------------
    def analyze(self, tokens_NT) -> dict[str, np.ndarray]:
        """Full forward of ``tokens [N, T]`` with its taps, sample axis first (the layout of
        ``lcache.analysis``): ``logits [N, T, V]``, ``hidden [N, L+1, K+T, dim]``,
        ``weights [N, L, Hq, K+T, K+T]`` (the variant's own attention weights) and
        ``values [N, L, Hkv, K+T, D]``, float32, ``K`` learnable sink tokens first."""
        tokens = np.asarray(tokens_NT, np.int32)
        check_tokens(tokens, self.cfg.vocab_size)
        out = self.run(Job.of(programs.analyze, tokens))
        return {k: np.asarray(v, np.float32) if k == "logits" else
                np.moveaxis(np.asarray(v, np.float32), 1, 0) for k, v in out.items()}

