"""Generation on a device layout (``lcache.sharding``): compiled prefill and multi-step decode.

The model calls of ``lcache.generate`` (prefill the right-padded prompts, then one token per
step, any policy) as one compiled program (``Generator.generate``) or as separate prefill and
decode calls, so callers can time decode, inspect the caches between calls and read every step's
logits. ``decode`` runs ``steps`` tokens in one ``lax.scan`` and compiles once per ``steps``
value, never per token.

Sampling is layout-invariant: row ``r``'s draw for output ``i`` uses ``fold_in(fold_in(key(seed),
i), r)``, so a batch split over any number of devices samples the same tokens as one device. With
``temperature > 0`` this differs from ``lcache.generate`` (one key per step for the whole batch);
greedy decoding is identical.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lcache.cache import Policy
from lcache.eval.batching import check_fits, pad_prompts
from lcache.sampling import Sampling, sample_logits
from lcache.sharding import MeshLayout, PmapLayout, make_mesh


def sample_rows(logits_BV, seed, index, rows_B, sampling: Sampling):
    """``[B]`` tokens for output ``index``; row ``rows_B[b]`` draws with its own key."""
    key = jax.random.fold_in(jax.random.key(seed), index)
    keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(rows_B)
    return jax.vmap(lambda lg, k: sample_logits(lg[None], k, sampling)[0])(logits_BV, keys)


def _prefill(graphdef, params, tokens_BT, lengths_B, rows_B, seed, *, policy, sampling,
             constrain):
    """-> first token ``[B]``, its logits ``[B, V]`` and the caches holding the prompts."""
    model = nnx.merge(graphdef, params)
    b, t = tokens_BT.shape
    steps = jnp.arange(t, dtype=jnp.int32)
    pos = jnp.where(steps[None] < lengths_B[:, None], steps[None], -1)
    caches = constrain(model.init_cache(policy, b))
    logits, caches = model.prefill(tokens_BT, pos, caches, policy)
    last = jnp.take_along_axis(logits, (lengths_B - 1)[:, None, None], axis=1)[:, 0]
    return sample_rows(last, seed, 0, rows_B, sampling), last, constrain(caches)


def _decode(graphdef, params, token_B, lengths_B, rows_B, seed, index, caches, *, policy,
            sampling, constrain, steps, keep_logits):
    """Feed output ``index`` (text position ``lengths + index``) and ``steps - 1`` more.

    -> tokens ``[B, steps]`` (outputs ``index+1 ..``), logits ``[B, steps, V]`` (or None
    without ``keep_logits``), caches.
    """
    model = nnx.merge(graphdef, params)

    def step(carry, i):
        tok, caches = carry
        logits, caches = model.decode(tok, lengths_B + i - 1, caches, policy)
        nxt = sample_rows(logits, seed, i, rows_B, sampling)
        return (nxt, constrain(caches)), (nxt, logits if keep_logits else None)

    outs = index + 1 + jnp.arange(steps, dtype=jnp.int32)
    (_, caches), (toks_NB, logits_NBV) = jax.lax.scan(step, (token_B, caches), outs)
    logits = None if logits_NBV is None else logits_NBV.transpose(1, 0, 2)
    return toks_NB.T, logits, caches


def _generate(graphdef, params, tokens_BT, lengths_B, rows_B, seed, *, steps, keep_logits,
              **kw):
    """Prefill then ``steps`` decode steps in one program -> tokens ``[B, steps + 1]``, logits
    ``[B, steps + 1, V]`` or None."""
    first, logits_BV, caches = _prefill(graphdef, params, tokens_BT, lengths_B, rows_B, seed, **kw)
    toks, logits, _ = _decode(graphdef, params, first, lengths_B, rows_B, seed, 0, caches,
                              steps=steps, keep_logits=keep_logits, **kw)
    toks = jnp.concatenate([first[:, None], toks], axis=1)
    return toks, jnp.concatenate([logits_BV[:, None], logits], axis=1) if keep_logits else None


@dataclasses.dataclass
class Stream:
    """A batch in flight, in the layout's device form: ``token`` (output ``index``) is sampled
    but not yet fed; ``lengths`` are the prompt lengths (token ``i`` sits at ``lengths + i``)."""

    token: jax.Array
    lengths: jax.Array
    rows: jax.Array
    seed: jax.Array
    index: int
    caches: list


@dataclasses.dataclass
class Generation:
    tokens: list[np.ndarray]  # one int32 row per prompt, cut after its eos
    logits: np.ndarray | None  # [B, max_new_tokens, V] float32 if asked for


# pmap in_axes (the mesh layout ignores them): params and scalars broadcast, batch split.
_BATCH_IN = (None, 0, 0, 0, None)  # params, tokens [B, T] or token [B], lengths, rows, seed
_DECODE_IN = _BATCH_IN + (None, 0)  # + index, caches


class Generator:
    """``model`` + ``policy`` + ``sampling`` compiled for a layout (default: one device).

    ``layout``: ``MeshLayout(make_mesh(data, model))`` or ``PmapLayout(num_devices)``. Host
    arrays in and out are batch-major; device arrays are in the layout's form.
    """

    def __init__(self, model, policy: Policy | Sequence[Policy],
                 sampling: Sampling | None = None, layout: MeshLayout | PmapLayout | None = None):
        self.model, self.policy, self.sampling = model, policy, sampling or Sampling()
        self.layout = layout or MeshLayout(make_mesh())
        self.layout.check(model, policy)
        self.graphdef, params = nnx.split(model)
        self.params = self.layout.put_params(params)
        self._cache = {}  # (function, static args) -> compiled

    def _compiled(self, fn, in_axes, donate=(), **static):
        key = (fn, *sorted(static.items()))
        if key not in self._cache:
            bound = functools.partial(fn, self.graphdef, policy=self.policy,
                                      sampling=self.sampling, constrain=self.layout.constrain,
                                      **static)
            self._cache[key] = self.layout.compile(bound, in_axes, donate)
        return self._cache[key]

    def _batch(self, lengths_B, seed: int):
        """Validated layout, then placed ``lengths``, row ids and seed."""
        self.layout.check_batch(len(lengths_B))
        put = self.layout.put
        return (put(np.asarray(lengths_B, np.int32)),
                put(np.arange(len(lengths_B), dtype=np.int32)), put(np.int32(seed)))

    def start(self, token_B, lengths_B, caches, seed: int = 0) -> Stream:
        """A stream at output 0 from host ``token``/``lengths`` ``[B]`` and caches already on
        the layout (e.g. filled directly by a benchmark)."""
        return Stream(self.layout.put(np.asarray(token_B, np.int32)),
                      *self._batch(lengths_B, seed), 0, caches)

    def prefill(self, tokens_BT, lengths_B, seed: int = 0):
        """Prompts ``[B, T]`` (right-padded) -> (stream at output 0, its logits ``[B, V]``)."""
        lengths, rows, seed_ = self._batch(lengths_B, seed)
        first, logits, caches = self._compiled(_prefill, _BATCH_IN)(
            self.params, self.layout.put(tokens_BT), lengths, rows, seed_)
        return Stream(first, lengths, rows, seed_, 0, caches), logits

    def decode(self, stream: Stream, steps: int, keep_logits: bool = False):
        """``steps`` more tokens -> (stream, tokens ``[B, steps]``, logits or None), on device.
        ``stream.caches`` is donated."""
        toks, logits, caches = self._compiled(
            _decode, _DECODE_IN, donate=(6,), steps=steps, keep_logits=keep_logits)(
            self.params, stream.token, stream.lengths, stream.rows, stream.seed, stream.index,
            stream.caches)
        return dataclasses.replace(stream, token=toks[..., -1], index=stream.index + steps,
                                   caches=caches), toks, logits

    def generate(self, prompts: Sequence[Sequence[int]], seed: int = 0, pad_multiple: int = 16,
                 return_logits: bool = False) -> Generation:
        """Token-id prompts -> a ``Generation`` (same rows as ``lcache.generate.generate``);
        prefill and decode run as one program."""
        tokens, lengths = pad_prompts(prompts, pad_multiple)
        vocab = self.model.cfg.vocab_size
        if tokens.min() < 0 or tokens.max() >= vocab:
            raise ValueError(f"token ids must be in [0, {vocab})")
        n = self.sampling.max_new_tokens
        check_fits(self.model.cfg, self.policy, int(lengths.max()), n)
        lengths, rows, seed_ = self._batch(lengths, seed)
        toks, logits = self._compiled(_generate, _BATCH_IN, steps=n - 1,
                                      keep_logits=return_logits)(
            self.params, self.layout.put(tokens), lengths, rows, seed_)
        eos = self.sampling.eos_id
        rows = [r[: int(np.argmax(r == eos)) + 1] if eos is not None and (r == eos).any() else r
                for r in self.layout.get(toks)]
        return Generation(rows, self.layout.get(logits) if return_logits else None)
