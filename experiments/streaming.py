"""Shared helpers of the experiments: reference models, held-out text, per-token NLL under a
cache policy (token-by-token decode, dense prefill, sliding window with recomputation), the sink
rate and CSV output. Policies come from spec strings (``lcache.cache.registry``).

Stream layout: ``stream [N + 1]`` int32 = BOS then ``N`` held-out tokens; step ``i`` feeds
``stream[i]`` at text position ``i`` and scores ``stream[i + 1]``, so ``stream_nll``,
``dense_nll`` and ``recompute_nll`` all return ``nll [N]`` float32 (nats) for the same targets.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from lcache.analysis import sink_rate
from lcache.cache import Dense, SlidingWindow, StreamingLLM, registry
from lcache.checkpoint import load_model
from lcache.data import ByteTokenizer, list_files, load_tokens, split_files
from lcache.generate import pad_prompts
from lcache.model import ModelConfig, Transformer

# -- models and text -------------------------------------------------------------------------


RANDOM_MODELS = {  # untrained stand-ins that make smoke runs cheap (small graphs compile fast)
    "random": dict(dim=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=160),
    "random-sink": dict(dim=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_dim=160,
                        num_sink_tokens=1),
}


def load_reference(model_dir: str, compute_dtype: str = "float32"):
    """-> ``(model, tokenizer)`` from a checkpoint directory, or an untrained byte-level model
    for ``model_dir`` in ``RANDOM_MODELS``. float32 compute by default (CPUs lack fast bf16).

    Raises ValueError when the weights do not match the checkpoint's config (``load_model``) or
    the checkpoint ships no tokenizer of the model's vocabulary."""
    if model_dir in RANDOM_MODELS:
        cfg = ModelConfig(**RANDOM_MODELS[model_dir], compute_dtype=compute_dtype)
        return Transformer(cfg, nnx.Rngs(0)), ByteTokenizer()
    model, tok, _ = load_model(model_dir, compute_dtype=compute_dtype)
    if tok is None or tok.vocab_size != model.cfg.vocab_size:
        raise ValueError(f"checkpoint {model_dir!r}: tokenizer vocabulary "
                         f"{getattr(tok, 'vocab_size', None)} does not match the model's "
                         f"{model.cfg.vocab_size}")
    return model, tok


_HELDOUT: dict[str, np.ndarray] = {}


def heldout_tokens(tokenizer) -> np.ndarray:
    """The held-out split of the default corpus (``lcache.sources.load_corpus(None)``'s
    ``heldout``, without tokenizing the training files) -> int32 ``[M]``, cached per
    tokenizer fingerprint."""
    key = tokenizer.fingerprint
    if key not in _HELDOUT:
        _HELDOUT[key] = load_tokens(split_files(list_files(None))[1], tokenizer)
    return _HELDOUT[key]


def heldout_stream(tokenizer, num_tokens: int, offset: int = 0) -> np.ndarray:
    """BOS + ``num_tokens`` held-out tokens from ``offset`` -> int32 ``[num_tokens + 1]``."""
    text = heldout_tokens(tokenizer)
    if num_tokens < 1 or offset < 0:
        raise ValueError(f"need num_tokens >= 1 and offset >= 0, got {num_tokens}, {offset}")
    if offset + num_tokens > text.size:
        raise ValueError(f"a stream of {num_tokens} tokens from offset {offset} is longer than "
                         f"the held-out text ({text.size} tokens)")
    return np.concatenate([[tokenizer.bos_id], text[offset:offset + num_tokens]]).astype(np.int32)


def heldout_windows(tokenizer, num: int, length: int, offset: int = 0) -> np.ndarray:
    """``num`` consecutive held-out windows, each BOS + ``length - 1`` tokens -> ``[num, length]``
    (the training layout: sinks form on the BOS column)."""
    flat = heldout_stream(tokenizer, num * (length - 1), offset)[1:]
    out = np.full((num, length), tokenizer.bos_id, np.int32)
    out[:, 1:] = flat.reshape(num, length - 1)
    return out


# -- per-token NLL -----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("graphdef", "policy", "batch"))
def _init_cache(graphdef, params, *, policy, batch):
    return nnx.merge(graphdef, params).init_cache(policy, batch)


def init_cache(model, policy, batch: int) -> list:
    """Compiled ``model.init_cache`` (op by op it is slow for models with sink tokens, whose
    init prefills them)."""
    graphdef, params = nnx.split(model)
    return _init_cache(graphdef, params, policy=policy, batch=batch)


def _nll(logits, targets):
    """``logits [..., V]`` float32, ``targets [...]`` -> NLL ``[...]``."""
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - picked


@functools.partial(jax.jit, static_argnames=("graphdef", "policy"), donate_argnames=("caches",))
def _decode_scan(graphdef, params, caches, inputs_TB, targets_TB, pos_TB, *, policy):
    """``T`` decode steps compiled as one ``lax.scan`` -> ``(caches, nll [T, B])``."""
    model = nnx.merge(graphdef, params)

    def step(caches, x):
        tok, tgt, pos = x
        logits, caches = model.decode(tok, pos, caches, policy)
        return caches, _nll(logits, tgt)

    return jax.lax.scan(step, caches, (inputs_TB, targets_TB, pos_TB))


def decode_nll(model, caches, tokens_BT, pos0, policy, chunk: int = 1024,
               label: str = "decode") -> tuple[list, np.ndarray]:
    """Feed ``tokens [B, T]`` one step at a time at positions ``pos0 [B] + t``, scoring each
    next token -> ``(caches, nll [B, T - 1])``.

    The steps run ``chunk`` at a time inside one compiled scan (the last chunk is padded: its
    extra steps come after every scored token, so they change nothing that is returned).
    """
    tokens = np.asarray(tokens_BT, np.int32)
    b, t = tokens.shape
    n = t - 1
    steps = -(-n // chunk) * chunk
    inputs = np.zeros((steps, b), np.int32)
    targets = np.zeros((steps, b), np.int32)
    inputs[:n], targets[:n] = tokens[:, :-1].T, tokens[:, 1:].T
    pos = np.asarray(pos0, np.int32)[None, :] + np.arange(steps, dtype=np.int32)[:, None]
    graphdef, params = nnx.split(model)
    out, start = [], time.time()
    for s in range(0, steps, chunk):
        caches, nll = _decode_scan(graphdef, params, caches, inputs[s:s + chunk],
                                   targets[s:s + chunk], pos[s:s + chunk], policy=policy)
        out.append(np.asarray(nll))
        done = min(s + chunk, n)
        logging.info("%s %d/%d tokens, %.1f tok/s", label, done, n, done / (time.time() - start))
    return caches, np.concatenate(out)[:n].T.astype(np.float32)


def stream_nll(model, stream, policy, chunk: int = 1024, label: str = "") -> np.ndarray:
    """Token-by-token streaming (the StreamingLLM evaluation) of ``stream [N + 1]`` -> ``[N]``."""
    caches = init_cache(model, policy, 1)
    _, nll = decode_nll(model, caches, np.asarray(stream)[None], np.zeros(1, np.int32), policy,
                        chunk, label)
    return nll[0]


@functools.partial(jax.jit, static_argnames=("graphdef", "policy"), donate_argnames=("caches",))
def _prefill(graphdef, params, caches, tokens_BT, pos_BT, *, policy):
    model = nnx.merge(graphdef, params)
    return model.prefill(tokens_BT, pos_BT, caches, policy)


def prefill(model, tokens_BT, pos_BT, policy, caches=None):
    """Compiled ``model.prefill`` of ``tokens [B, T]`` at ``pos [B, T]`` (-1 = padding) into
    ``caches`` (fresh ones by default) -> ``(logits [B, T, V], caches)``."""
    if caches is None:
        caches = init_cache(model, policy, len(tokens_BT))
    graphdef, params = nnx.split(model)
    return _prefill(graphdef, params, caches, jnp.asarray(tokens_BT, jnp.int32),
                    jnp.asarray(pos_BT, jnp.int32), policy=policy)


def continuation_nll(model, prompts, continuations, policy, pad: int = 16) -> list[np.ndarray]:
    """Prefill each prompt under ``policy`` (one batch, right-padded to a multiple of ``pad``),
    then feed its continuation one decode step at a time -> per row ``nll [len(cont)]``.

    ``prompts``/``continuations``: sequences of int arrays (continuations >= 1 token). A
    compressing policy (SnapKV, ...) compresses once after the prompt, as in the references.
    """
    if len(prompts) != len(continuations) or min(map(len, continuations)) < 1:
        raise ValueError("need one non-empty continuation per prompt")
    tokens, lengths = pad_prompts(prompts, pad)
    t = tokens.shape[1]
    pos = np.where(np.arange(t)[None] < lengths[:, None], np.arange(t)[None], -1)
    logits, caches = prefill(model, tokens, pos, policy)
    d = max(map(len, continuations))
    cont = np.zeros((len(prompts), d), np.int32)
    for i, c in enumerate(continuations):
        cont[i, :len(c)] = c
    last = jnp.take_along_axis(logits, jnp.asarray(lengths - 1)[:, None, None], axis=1)[:, 0]
    first = np.asarray(_nll(last, jnp.asarray(cont[:, 0])))
    rest = np.zeros((len(prompts), 0), np.float32)
    if d > 1:
        _, rest = decode_nll(model, caches, cont, lengths, policy, chunk=d - 1)
    return [np.concatenate([[first[i]], rest[i, :len(c) - 1]]).astype(np.float32)
            for i, c in enumerate(continuations)]


def dense_nll(model, stream, chunk: int = 512, label: str = "dense") -> np.ndarray:
    """Full attention over all of ``stream [N + 1]`` -> ``[N]``: a ``Dense`` cache filled by
    chunked prefill, which is token-by-token decoding computed ``chunk`` queries at a time
    (nothing is evicted, keys keep their original positions, so the result is the same)."""
    stream = np.asarray(stream, np.int32)
    n = stream.size - 1
    steps = -(-n // chunk) * chunk
    policy = Dense(steps + model.cfg.num_sink_tokens)
    tokens = np.zeros(steps, np.int32)
    tokens[:n] = stream[:-1]
    pos = np.where(np.arange(steps) < n, np.arange(steps), -1).astype(np.int32)
    caches = init_cache(model, policy, 1)
    out, start = [], time.time()
    for s in range(0, steps, chunk):
        logits, caches = prefill(model, tokens[None, s:s + chunk], pos[None, s:s + chunk],
                                 policy, caches)
        out.append(np.asarray(logits[0]))
        logging.info("%s %d/%d tokens, %.1f tok/s", label, min(s + chunk, n), n,
                     min(s + chunk, n) / (time.time() - start))
    logits = np.concatenate(out)[:n]
    return np.asarray(_nll(jnp.asarray(logits), jnp.asarray(stream[1:])), np.float32)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _last_logits(graphdef, params, windows_BW, last_B):
    logits = nnx.merge(graphdef, params)(windows_BW)
    return jnp.take_along_axis(logits, last_B[:, None, None], axis=1)[:, 0]


def recompute_targets(n: int, stride: int) -> np.ndarray:
    """Target indices the recomputation baseline scores: every ``stride``-th of ``n``."""
    if stride < 1:
        raise ValueError(f"recompute stride must be >= 1, got {stride}")
    return np.arange(0, n, stride)


def recompute_nll(model, stream, window: int, stride: int = 1, batch: int = 32,
                  label: str = "recompute") -> np.ndarray:
    """Sliding window with re-computation (the StreamingLLM paper's baseline): target ``i`` is
    scored by a fresh full forward over the last ``window`` tokens ``stream[i - window + 1 : i
    + 1]`` at positions ``0..window-1`` (plus the model's own sink tokens), ``batch`` windows per
    forward. Only every ``stride``-th target is scored (``recompute_targets``) -> ``[N]`` NLL with
    NaN elsewhere."""
    if window < 1:
        raise ValueError(f"recompute window must be >= 1, got {window}")
    stream = np.asarray(stream, np.int32)
    n = stream.size - 1
    idx = recompute_targets(n, stride)
    width = min(window, n)
    graphdef, params = nnx.split(model)
    nll = np.full(n, np.nan, np.float32)
    start = time.time()
    for s in range(0, idx.size, batch):
        rows = idx[s:s + batch]
        rows = np.concatenate([rows, np.repeat(rows[-1:], batch - rows.size)])  # fixed shape
        first = np.maximum(rows - window + 1, 0)
        cols = first[:, None] + np.arange(width)[None, :]
        windows = stream[np.minimum(cols, stream.size - 1)]  # right padding after the target
        logits = _last_logits(graphdef, params, jnp.asarray(windows),
                              jnp.asarray(rows - first, jnp.int32))
        scored = _nll(logits, jnp.asarray(stream[rows + 1]))
        k = min(batch, idx.size - s)
        nll[rows[:k]] = np.asarray(scored)[:k]
        logging.info("%s %d/%d targets, %.1f targets/s", label, s + k, idx.size,
                     (s + k) / (time.time() - start))
    return nll


def ppl(nll, mask=None) -> float:
    """``exp(mean NLL)`` over finite entries (and ``mask``)."""
    nll = np.asarray(nll, np.float64)
    keep = np.isfinite(nll) if mask is None else np.isfinite(nll) & mask
    if not keep.any():
        raise ValueError("no scored tokens")
    return float(math.exp(nll[keep].mean()))


def chunk_curve(nll, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-chunk perplexity -> ``(end token of each chunk [K], ppl [K])`` (NaN-aware)."""
    nll = np.asarray(nll, np.float64)
    ends = np.arange(size, nll.size + size - 1, size).clip(max=nll.size)
    vals = [ppl(nll[e - size:e]) if np.isfinite(nll[e - size:e]).any() else np.nan
            for e in ends]
    return ends, np.array(vals)


# -- the StreamingLLM comparison -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
    """One policy's per-token NLL over a stream: ``nll [N]``, NaN where it was not scored."""

    policy: str  # dense / window / streaming_llm / recompute / h2o
    num_sinks: int
    cache_size: int  # tokens the cache holds (0: unbounded dense)
    nll: np.ndarray

    @property
    def label(self) -> str:
        if self.policy == "streaming_llm":
            return f"{self.num_sinks}+{self.cache_size - self.num_sinks}"
        return self.policy


def streaming_runs(model, stream, cache_size: int, sinks: Sequence[int] = (1, 2, 4),
                   dense_tokens: int = -1, recompute_stride: int = 0, h2o: bool = False,
                   chunk: int = 1024, recompute_batch: int = 32) -> list[Run]:
    """The StreamingLLM Table 2/3 comparison on ``stream [N + 1]`` at a fixed cache size:
    window only (``SlidingWindow``), ``s`` sinks + ``cache_size - s`` window for each ``s`` in
    ``sinks`` (``0`` is the window row), dense full attention over the first ``dense_tokens``
    targets (-1: all, 0: none), sliding window with recomputation over ``cache_size`` tokens
    (the model's own sink tokens included; every ``recompute_stride``-th target, 0: none) and
    H2O (half heavy, half recent).
    """
    n = len(stream) - 1
    if cache_size < 2 or any(not 0 <= s < cache_size for s in sinks):
        raise ValueError(f"cache_size={cache_size} cannot hold sinks {tuple(sinks)} plus a window")
    runs = [Run("window", 0, cache_size, stream_nll(model, stream, SlidingWindow(cache_size),
                                                    chunk, "window"))]
    for s in sorted(set(sinks) - {0}):
        pol = StreamingLLM(window=cache_size - s, num_sinks=s)
        runs.append(Run("streaming_llm", s, cache_size,
                        stream_nll(model, stream, pol, chunk, f"{s} sinks")))
    if h2o:
        pol = registry.build("h2o", cache_size)
        runs.append(Run("h2o", 0, cache_size, stream_nll(model, stream, pol, chunk, "h2o")))
    if dense_tokens:
        m = n if dense_tokens < 0 else min(dense_tokens, n)
        nll = np.full(n, np.nan, np.float32)
        nll[:m] = dense_nll(model, stream[:m + 1])
        runs.append(Run("dense", 0, 0, nll))
    if recompute_stride:
        width = cache_size - model.cfg.num_sink_tokens
        runs.append(Run("recompute", 0, cache_size, recompute_nll(
            model, stream, width, recompute_stride, recompute_batch)))
    return runs


def summary_rows(runs: Sequence[Run]) -> list[dict]:
    """``policy, num_sinks, cache_size, tokens, ppl`` per run, plus ``common_ppl`` over the
    targets that every bounded-cache run scored (recomputation may score every k-th only; dense,
    which may stop early, is left out of the intersection and scored on it where it can)."""
    bounded = [np.isfinite(r.nll) for r in runs if r.policy != "dense"] or [np.isfinite(
        runs[0].nll)]
    common = np.logical_and.reduce(bounded)
    return [dict(policy=r.policy, num_sinks=r.num_sinks, cache_size=r.cache_size,
                 tokens=int(np.isfinite(r.nll).sum()), ppl=ppl(r.nll),
                 common_ppl=ppl(r.nll, common) if (common & np.isfinite(r.nll)).any()
                 else float("nan"))
            for r in runs]


def save_nll(path: str, groups: dict[str, Sequence[Run]]) -> None:
    """Per-token NLL of every run of every group to an ``.npz``, keys
    ``<group><policy>_<num_sinks>_<cache_size>``."""
    np.savez_compressed(path, **{f"{g}{r.policy}_{r.num_sinks}_{r.cache_size}": r.nll
                                 for g, runs in groups.items() for r in runs})


def curve_rows(runs: Sequence[Run], size: int) -> list[dict]:
    """Per-chunk perplexity of every run: ``policy, num_sinks, cache_size, end_token, ppl``."""
    rows = []
    for r in runs:
        ends, vals = chunk_curve(r.nll, size)
        rows += [dict(policy=r.policy, num_sinks=r.num_sinks, cache_size=r.cache_size,
                      end_token=int(e), ppl=float(v)) for e, v in zip(ends, vals, strict=True)]
    return rows


# -- sinks -------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _attention_weights(graphdef, params, tokens_NT):
    return nnx.merge(graphdef, params).analyze(tokens_NT)["weights"]


def first_token_sink_rate(model, windows_NT, eps: float = 0.3) -> dict[str, float]:
    """Gu et al.'s sink rate (fraction of (sample, layer, head) whose mean attention on a key
    exceeds ``eps``) from ``analyze`` over ``windows [N, T]`` (BOS first).

    -> ``{'first': rate on the first position, 'bos': rate on BOS}``: the same key unless the
    model prepends learnable sink tokens (then the first position is its sink token)."""
    graphdef, params = nnx.split(model)
    weights = _attention_weights(graphdef, params, jnp.asarray(windows_NT, jnp.int32))
    attn = np.asarray(weights).transpose(1, 0, 2, 3, 4)  # [N, L, H, K+T, K+T]
    k = model.cfg.num_sink_tokens
    return {"first": sink_rate(attn, eps, k=0), "bos": sink_rate(attn, eps, k=k)}


# -- output ------------------------------------------------------------------------------------


def write_csv(path: str, rows: Sequence[dict]) -> str:
    """Rows of dicts (same keys) -> CSV at ``path`` (folders created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def markdown(rows: Sequence[dict], floats: str = "{:.3f}") -> str:
    """Rows of dicts (same keys) -> a markdown table, floats formatted with ``floats``."""
    def cell(v):
        return floats.format(v) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(cell(v) for v in r.values()) + " |" for r in rows]
    return "\n".join(lines)


def experiment(run: Callable) -> Callable:
    """Decorates an experiment's ``run(config, workdir)``: with ``config.fast_compile`` (the
    smoke configs, where compiling dominates) XLA skips most optimisations while it runs (same
    results, about 35% less CPU time)."""

    @functools.wraps(run)
    def wrapped(c, workdir: str):
        before = jax.config.read("jax_disable_most_optimizations")
        jax.config.update("jax_disable_most_optimizations", before or c.get("fast_compile", False))
        try:
            return run(c, workdir)
        finally:
            jax.config.update("jax_disable_most_optimizations", before)

    return wrapped


def cli(run: Callable, default_config: str) -> None:
    """An experiment's entry point: ``--config`` (an ml_collections config file) and
    ``--workdir`` flags, then ``run(config, workdir)``."""
    config = config_flags.DEFINE_config_file("config", default_config)
    workdir = flags.DEFINE_string("workdir", None, "output directory", required=True)

    def main(argv):
        del argv
        run(config.value, workdir.value)

    app.run(main)
