"""The compiled programs of the evaluation engine: pure functions of the model's graphdef and
params, device arrays and static keyword arguments (the policy, the sampling rule).

Each is compiled once per (static arguments, argument shapes) by ``ProgramCache`` and never per
token: decode runs inside ``lax.while_loop`` / ``lax.scan``. Token positions count text tokens
from 0 (``-1`` marks padding); rows are right-padded to a common length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lcache.cache import Policy
from lcache.cache.scored import block_slots
from lcache.cache.sinks import WithSinkScore, outlier_score
from lcache.model.layer_stack import LayerStack
from lcache.sampling import sample_logits


def token_nll(logits, targets):
    """``logits [..., V]`` float32, ``targets [...]`` int -> NLL ``[...]`` in nats."""
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - picked


def prompt_positions(lengths_B, t: int):
    """``[B, T]`` text positions of right-padded rows of ``lengths [B]`` (``-1`` = padding)."""
    steps = jnp.arange(t, dtype=jnp.int32)[None]
    return jnp.where(steps < lengths_B[:, None], steps, -1)


def with_sink_scores(model, tokens_BT, policy, sink_layer: int | None):
    """KVSink: every (per-layer) policy with ``sink_detect='outlier'`` gets the outlier score
    ``[B, T]`` of the chunk's residual stream after block ``sink_layer`` (a full forward of the
    chunk from position 0: exact for a prompt prefilled in one chunk). ``sink_layer=None``: no
    hidden state reaches the cache, such policies fall back to the attention mass."""
    layers = (policy,) if isinstance(policy, Policy) else tuple(policy)
    wants = [getattr(p, "sink_detect", None) == "outlier" for p in layers]
    if sink_layer is None or not any(wants):
        return policy
    score = outlier_score(model(tokens_BT, return_hidden=True)[1][sink_layer])
    wrapped = tuple(WithSinkScore(p, score) if w else p for p, w in zip(layers, wants,
                                                                          strict=True))
    return wrapped[0] if isinstance(policy, Policy) else wrapped


def init_cache(graphdef, params, *, policy, batch: int, cache_dtype: str | None):
    """Empty per-layer caches for ``batch`` rows of ``cache_dtype`` (None: the compute dtype),
    holding the model's sink tokens, if any."""
    dtype = None if cache_dtype is None else jnp.dtype(cache_dtype)
    return nnx.merge(graphdef, params).init_cache(policy, batch, dtype)


def prefill(graphdef, params, caches, tokens_BT, pos_BT, targets_BT, *, policy,
            sink_layer: int | None):
    """A chunk ``tokens [B, T]`` at ``pos [B, T]`` into ``caches`` -> ``(nll [B, T], caches)``:
    ``nll[b, t]`` scores ``targets[b, t]`` as the token after ``tokens[b, t]``."""
    model = nnx.merge(graphdef, params)
    chunk_policy = with_sink_scores(model, tokens_BT, policy, sink_layer)
    logits, caches = model.prefill(tokens_BT, pos_BT, caches, chunk_policy)
    return token_nll(logits, targets_BT), caches


def decode_nll(graphdef, params, caches, inputs_TB, targets_TB, pos_TB, *, policy):
    """``T`` teacher-forced decode steps as one ``lax.scan`` -> ``(caches, nll [T, B])``."""
    model = nnx.merge(graphdef, params)

    def step(caches, x):
        tok, tgt, pos = x
        logits, caches = model.decode(tok, pos, caches, policy)
        return caches, token_nll(logits, tgt)

    return jax.lax.scan(step, caches, (inputs_TB, targets_TB, pos_TB))


def _fresh_caches(model, batch: int, surplus_B, policy, cache_dtype):
    """Empty caches for ``batch`` rows; ``surplus [B]`` (or None): slots each row of a
    score-based policy leaves blocked, its budget below the policy's (budget as data)."""
    # one policy for every layer: layer-stacked caches, so the blocks run as one lax.scan and
    # the program traces and compiles one block instead of L
    caches = model.init_cache(policy, batch,
                              None if cache_dtype is None else jnp.dtype(cache_dtype),
                              stacked=isinstance(policy, Policy))
    # fresh caches are constants: without the barrier XLA constant-folds ops on them (seconds
    # per op on GPU, measured: 196 s to compile 53 RULER programs on 16 threads)
    caches = jax.lax.optimization_barrier(caches)
    if surplus_B is not None:
        block = lambda c: block_slots(c, surplus_B)  # noqa: E731
        caches = caches.map(block) if isinstance(caches, LayerStack) else list(map(block, caches))
    return caches


def _last_logits(logits_BTV, lengths_B):
    """``[B, V]`` logits after each row's last real token."""
    return jnp.take_along_axis(logits_BTV, (lengths_B - 1)[:, None, None], axis=1)[:, 0]


def _prompt_logits(model, tokens_BT, lengths_B, surplus_B, policy, cache_dtype, sink_layer):
    """Prefill right-padded prompts into fresh caches -> (logits after each prompt's last token
    ``[B, V]``, caches)."""
    caches = _fresh_caches(model, tokens_BT.shape[0], surplus_B, policy, cache_dtype)
    logits, caches = model.prefill(tokens_BT, prompt_positions(lengths_B, tokens_BT.shape[1]),
                                   caches, with_sink_scores(model, tokens_BT, policy, sink_layer))
    return _last_logits(logits, lengths_B), caches


def _split_prompt_logits(model, context_BT, context_len_B, question_BQ, question_len_B,
                         surplus_B, policy, cache_dtype, sink_layer):
    """Prefill each row's context, then its question as a second chunk at positions
    ``context_len + j``: the policy compresses the context before it sees the question (one
    compressed context serving later questions) -> (logits after the question ``[B, V]``,
    caches). KVSink's outlier scores (``with_sink_scores``) come from the context chunk."""
    caches = _fresh_caches(model, context_BT.shape[0], surplus_B, policy, cache_dtype)
    _, caches = model.prefill(context_BT, prompt_positions(context_len_B, context_BT.shape[1]),
                              caches, with_sink_scores(model, context_BT, policy, sink_layer))
    q_pos = prompt_positions(question_len_B, question_BQ.shape[1])
    q_pos = jnp.where(q_pos >= 0, q_pos + context_len_B[:, None], -1)
    logits, caches = model.prefill(question_BQ, q_pos, caches, policy)
    return _last_logits(logits, question_len_B), caches


def _sample_loop(model, last_BV, caches, lengths_B, rng_bits, policy, sampling):
    """Sample after the prompts, then decode in a ``lax.while_loop`` until every row has its
    ``eos_id`` or ``max_new_tokens`` -> ``[B, max_new_tokens]`` int32 (``eos_id`` after the
    end)."""
    rng, sub = jax.random.split(jax.random.wrap_key_data(rng_bits))
    first = sample_logits(last_BV, sub, sampling)
    n = sampling.max_new_tokens
    out = jnp.zeros((first.shape[0], n), jnp.int32).at[:, 0].set(first)
    eos = -1 if sampling.eos_id is None else sampling.eos_id

    def cond(carry):
        i, _, _, done, _, _ = carry
        return (i < n) & ~jnp.all(done)

    def body(carry):
        i, tok, caches, done, out, rng = carry
        logits, caches = model.decode(tok, lengths_B + i - 1, caches, policy)
        rng, sub = jax.random.split(rng)
        nxt = jnp.where(done, eos, sample_logits(logits, sub, sampling))
        return i + 1, nxt, caches, done | (nxt == eos), out.at[:, i].set(nxt), rng

    carry = (jnp.int32(1), first, caches, first == eos, out, rng)
    return jax.lax.while_loop(cond, body, carry)[4]


def _forced_nll(model, last_BV, caches, lengths_B, forced_BD, policy):
    """Teacher-forced NLL ``[B, D]`` of ``forced [B, D]`` after the prompts (token ``j`` fed at
    position ``lengths + j``), from the same post-prompt caches the sampler starts from."""
    first = token_nll(last_BV, forced_BD[:, 0])

    def step(caches, x):
        tok, tgt, j = x
        logits, caches = model.decode(tok, lengths_B + j, caches, policy)
        return caches, token_nll(logits, tgt)

    d = forced_BD.shape[1]
    xs = (forced_BD[:, :-1].T, forced_BD[:, 1:].T, jnp.arange(d - 1, dtype=jnp.int32))
    rest = jax.lax.scan(step, caches, xs)[1]
    return jnp.concatenate([first[:, None], rest.T], axis=1)


def generate(graphdef, params, tokens_BT, lengths_B, rng_bits, surplus_B, *, policy, sampling,
             cache_dtype, sink_layer):
    """Prefill right-padded prompts ``tokens [B, T]`` of ``lengths [B]``, then sample
    ``[B, sampling.max_new_tokens]`` int32 tokens (``eos_id`` after a row's end).
    ``rng_bits``: ``jax.random.key_data`` of the sampling key; ``surplus [B]`` or None: see
    ``_fresh_caches``."""
    model = nnx.merge(graphdef, params)
    last, caches = _prompt_logits(model, tokens_BT, lengths_B, surplus_B, policy, cache_dtype,
                                  sink_layer)
    return _sample_loop(model, last, caches, lengths_B, rng_bits, policy, sampling)


def generate_split(graphdef, params, context_BT, context_len_B, question_BQ, question_len_B,
                   rng_bits, surplus_B, *, policy, sampling, cache_dtype, sink_layer):
    """``generate`` of prompts given as a context ``[B, T]`` of ``context_len [B]`` tokens and a
    question ``[B, Q]`` of ``question_len [B]``, prefilled as two chunks
    (``_split_prompt_logits``) -> ``[B, sampling.max_new_tokens]`` int32."""
    model = nnx.merge(graphdef, params)
    last, caches = _split_prompt_logits(model, context_BT, context_len_B, question_BQ,
                                        question_len_B, surplus_B, policy, cache_dtype,
                                        sink_layer)
    return _sample_loop(model, last, caches, context_len_B + question_len_B, rng_bits, policy,
                        sampling)


def generate_scored(graphdef, params, tokens_BT, lengths_B, rng_bits, surplus_B, forced_BD, *,
                    policy, sampling, cache_dtype, sink_layer):
    """``generate`` plus the teacher-forced NLL ``[B, D]`` of ``forced [B, D]`` (a reference
    answer) from the same prefill: one program instead of a generation and a scoring one."""
    model = nnx.merge(graphdef, params)
    last, caches = _prompt_logits(model, tokens_BT, lengths_B, surplus_B, policy, cache_dtype,
                                  sink_layer)
    return (_sample_loop(model, last, caches, lengths_B, rng_bits, policy, sampling),
            _forced_nll(model, last, caches, lengths_B, forced_BD, policy))


def window_nll(graphdef, params, windows_BW, last_B, targets_B):
    """A fresh full forward over each window ``[B, W]`` -> NLL ``[B]`` of ``targets [B]`` after
    the token at column ``last [B]`` (the sliding window with recomputation)."""
    logits = nnx.merge(graphdef, params)(windows_BW)
    return token_nll(jnp.take_along_axis(logits, last_B[:, None, None], axis=1)[:, 0], targets_B)


def analyze(graphdef, params, tokens_NT):
    """``Transformer.analyze`` of ``tokens [N, T]``: logits, residual stream, attention weights
    and values (layer axis first; ``K`` sink tokens included)."""
    out = nnx.merge(graphdef, params).analyze(tokens_NT)
    return {k: v for k, v in out.items() if k != "num_sink_tokens"}
