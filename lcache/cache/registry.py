"""Policy specs: one string names a cache policy, its arguments and its storage, and back.

    build("snapkv(window=32,kernel=7,pool=max)@int4+sinks4", 205, prompt_len=1024, max_new=16)
    spec(policy)  # 'snapkv(kernel=7,pool=max,decode=16)@int4+sinks4'

Grammar: ``name`` or ``name(arg=value,...)``, then optionally a storage suffix ``@int8``,
``@int4`` or ``@int2`` (KIVI codes, ``quantized``; ``@int4(group=32,residual=128)`` overrides
its ``group=16`` / ``residual=32``), then optionally ``+sinksN`` (the first ``N`` tokens kept in
full precision: Preserve-First-N) or ``+kvsinkN`` (``N`` prefill tokens KVSink-detected,
``sink_detect="outlier"``). Values are ints, floats, ``true``/``false`` or bare words; spaces
between tokens are ignored. ``@mla`` is refused: MLA latent storage is a model property
(``ModelConfig.mla_kv_lora_rank > 0`` stores the latent and the shared RoPE key as one cache
head), so every policy already selects latent tokens on an MLA model.

Budget: ``budget`` is the total tokens kept per layer and head, sinks and windows included;
each policy registers how it splits it next to its class (``register``), listed below.
Prompt compressors (the snapkv family) keep ``budget`` prompt tokens and get ``decode`` more
slots, by default ``max_new``, so their prompt selection survives generation (capacity
``budget + decode``; ``decode=0`` evicts instead). ``dense`` ignores the budget.

``spec(policy)`` writes every argument that differs from its default, and always the ones
whose default comes from the build context (``decode``), so ``build(spec(p), budget, **ctx) ==
p`` for the budget and context ``p`` was built with (``SnapKV(decode_capacity=None)``, room
sized by ``generate``, is written without ``decode``: the context's ``max_new`` sizes it).
Per-layer policies (``pyramidkv``, ``dynamickv``) come back as a ``LayerPolicies`` tuple that
remembers its spec.

Every mistake is a ValueError raised before any work (the DynamicKV probe included): an
unknown name or argument lists the valid ones, a bad value names its argument, and a budget
that a policy cannot hold, or that is larger than the prompt of a compressor, says so.

Adding a policy: after its class, ``register(name, cls, split=..., make=..., args=...,
args_of=..., least=...)`` (see ``Entry``); import its module in ``lcache/cache/__init__.py``;
its oracle and its test. Nothing else names it.

Registered policies (``table()``; arguments with their defaults, then the budget split):

    adakv(window=32, kernel=5, pool=avg [avg|max], decode=max_new, alpha=0.2)
        H * budget prompt tokens per layer by one top-k of SnapKV's pooled votes across the heads
        (every head keeps its window and its alpha * budget best), ragged per head; plus decode ring
        slots per head (capacity budget + decode on average)
    compaction(interval=16, sinks=4, recent=8, n_future=512)
        budget slots after each compaction (sinks and recent kept, the rest by expected attention
        from the prompt's query centre), compacted in place whenever the budget + interval slots are
        full
    dense
        ignores the budget: prompt_len + max_new + num_model_sinks slots, nothing evicted
    duo(sparsity=0.5, sinks=4)
        streaming heads (the sparsity lowest head_scores of the model) keep sinks + budget - sinks
        recent tokens; retrieval heads keep everything (prompt_len + max_new + num_model_sinks)
    dynamickv(window=32, kernel=5, pool=avg [avg|max], gqa=mean [mean|max|per_query_head],
              decode=max_new, r_max=10.0)
        per-layer snapkv budgets (mean = budget) from DynamicKV's global top votes of a probe
        prefill that keeps everything
    expected_attention(n_future=512, sinks=4, epsilon=0.0, alpha=1.0, kernel=1, pool=max [avg|max],
                       decode=max_new)
        H * budget prompt tokens per layer by expected attention from the prompt's query statistics
        (the sinks first), each head its top budget (alpha=1) or one top-k across the heads with an
        alpha * budget safeguard (AdaKV); plus decode ring slots per head
    h2o(recent=0.5, normalize=false)
        recent * budget newest tokens (rounded half up) + the rest heavy hitters by accumulated
        attention
    headkv(window=32, kernel=5, pool=avg [avg|max], decode=max_new, base=0.2)
        H * budget prompt tokens per layer: every head its window + 1 + base of the rest of budget,
        the remainder shared in proportion to head_scores; each head selects by snapkv (group mean);
        plus decode slots per head
    knorm(window=0)
        budget tokens of smallest key norm, the window newest always kept
    pyramidkv(window=32, kernel=5, pool=avg [avg|max], gqa=mean [mean|max|per_query_head],
              decode=max_new, beta=20.0)
        per-layer snapkv budgets (mean = budget) from the PyramidKV schedule (KVCache-Factory
        rounding), largest in layer 0
    random(window=0, seed=0)
        budget tokens kept uniformly at random (seeded), the window newest always kept
    razor(sinks=4)
        head_scores > 0.5 (razor_heads: retrieval heads) keep everything (prompt_len + max_new +
        num_model_sinks); the others sinks + budget - sinks - 1 recent tokens + one compensation
        token (mean of the dropped keys and values)
    recompress(window=32, kernel=5, pool=avg [avg|max], gqa=mean [mean|max|per_query_head],
               interval=16)
        snapkv with no decode slots: budget prompt tokens, then every interval decode tokens
        re-selected down to budget (capacity budget + interval)
    snapkv(window=32, kernel=5, pool=avg [avg|max], gqa=mean [mean|max|per_query_head],
           decode=max_new)
        budget - window prompt tokens by the pooled vote of the last window queries + the window
        newest; plus decode slots for generation (capacity budget + decode)
    streaming_llm(sinks=4, positions=cache [cache|original])
        sinks first tokens + a ring of the budget - sinks newest
    tova(window=1)
        budget tokens by the current query's attention (head mean), the window newest always kept
    value(recent=0.5, normalize=false)
        as h2o, heavy hitters ranked by accumulated attention x ||v||
    window(positions=cache [cache|original])
        the budget newest tokens
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import re
import textwrap
from collections.abc import Callable
from typing import Any

BITS = (8, 4, 2)
KINDS = {int: "an int", float: "a number", bool: "true or false", str: "a word"}
SINK_SUFFIXES = {"sinks": None, "kvsink": "outlier"}  # +sinksN / +kvsinkN -> sink_detect


def default_of(fn: Callable, name: str):
    """The default of parameter ``name`` of ``fn`` (a class: its ``__init__``): registrations
    take their defaults from the class, so the two never disagree."""
    return inspect.signature(fn).parameters[name].default


@dataclasses.dataclass(frozen=True)
class Arg:
    """One spec argument. ``default``'s type is the argument's type (``kind`` when the default
    is None); ``context`` names the ``Context`` field a None default is taken from."""

    default: Any
    doc: str
    kind: type | None = None
    context: str = ""
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    odd: bool = False

    @property
    def type(self) -> type:
        return self.kind or type(self.default)

    def rule(self) -> str:
        parts = [f"one of {'|'.join(self.choices)}"] if self.choices else []
        parts += [f">= {self.low}"] if self.low is not None else []
        parts += [f"<= {self.high}"] if self.high is not None else []
        parts += ["odd"] if self.odd else []
        return " and ".join(parts)

    def fits(self, value) -> bool:
        return ((not self.choices or value in self.choices)
                and (self.low is None or value >= self.low)
                and (self.high is None or value <= self.high)
                and (not self.odd or value % 2 == 1))

    def shown(self) -> str:
        text = self.context or format_value(self.default)
        return text + (f" [{'|'.join(self.choices)}]" if self.choices else "")


@dataclasses.dataclass(frozen=True)
class Context:
    """What a spec is built for besides its budget.

    ``prompt_len``: tokens of the (padded) prompt; ``num_layers``: the model's layers;
    ``max_new``: tokens to generate after the prompt; ``num_model_sinks``: the model's learnable
    sink tokens (``ModelConfig.num_sink_tokens``); ``probe(policy) -> caches``: a prefill of the
    prompts under ``policy`` (one state per layer), for DynamicKV; ``head_scores``: the model's
    per-head scores ``[L, Hkv]`` (DuoAttention gates, HeadKV importance; ``duo.load_gates``)."""

    prompt_len: int = 0
    num_layers: int = 0
    max_new: int = 0
    num_model_sinks: int = 0
    probe: Callable | None = None
    head_scores: Any = None


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered policy: ``make(budget, context, **args)`` builds it; ``args_of(policy)``
    gives the arguments back (``spec``); ``least(**args) -> (tokens, reason)`` is the smallest
    budget it can hold (None: the budget is ignored); ``compresses``: a prompt compressor (the
    budget may not exceed the prompt); ``needs``: ``Context`` fields that must be set."""

    name: str
    cls: type | None
    split: str
    make: Callable
    args: dict[str, Arg]
    args_of: Callable | None = None
    least: Callable | None = None
    compresses: bool = False
    needs: tuple[str, ...] = ()


REGISTRY: dict[str, Entry] = {}
_BY_CLASS: dict[type, Entry] = {}


def register(name: str, cls: type | None, *, split: str, make: Callable,
             args: dict[str, Arg] | None = None, **kw) -> None:
    """Register a policy under ``name`` (see ``Entry``; ``cls=None`` for per-layer policies,
    which ``spec`` names through ``LayerPolicies``). Called next to the class definition."""
    if name in REGISTRY:
        raise ValueError(f"policy name {name!r} is registered twice")
    entry = Entry(name, cls, split, make, args or {}, **kw)
    REGISTRY[name] = entry
    if cls is not None:
        _BY_CLASS[cls] = entry


def names() -> tuple[str, ...]:
    """The registered policy names, sorted."""
    return tuple(sorted(REGISTRY))


class LayerPolicies(tuple):
    """Per-layer policies built from one spec: a plain tuple for the model (one policy per
    layer, caches of different sizes) that remembers its canonical ``spec``."""

    spec: str

    def __new__(cls, policies, spec: str):
        self = super().__new__(cls, policies)
        self.spec = spec
        return self

    def __getnewargs__(self):
        return tuple(self), self.spec


# -- the grammar -------------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_]\w*")
_VALUE = re.compile(r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|[A-Za-z_]\w*)")
_SINKS = re.compile(r"(sinks|kvsink)(\d+)")


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A spec string split into its parts (values still as typed: int, float, bool or str)."""

    name: str
    args: dict
    storage: str = ""
    storage_args: dict = dataclasses.field(default_factory=dict)
    sinks: str = ""  # 'sinks' / 'kvsink' / ''
    num_sinks: int = 0


class _Scanner:
    def __init__(self, text: str):
        self.text, self.i = text, 0

    def fail(self, expected: str):
        found = repr(self.text[self.i]) if self.i < len(self.text) else "the end"
        raise ValueError(f"malformed policy spec {self.text!r}: expected {expected} at "
                         f"character {self.i}, found {found}\n    {self.text}\n    "
                         f"{' ' * self.i}^")

    def skip(self):
        while self.i < len(self.text) and self.text[self.i].isspace():
            self.i += 1

    def take(self, char: str) -> bool:
        self.skip()
        if self.text.startswith(char, self.i):
            self.i += len(char)
            return True
        return False

    def match(self, pattern: re.Pattern, expected: str) -> str:
        self.skip()
        m = pattern.match(self.text, self.i)
        if not m:
            self.fail(expected)
        self.i = m.end()
        return m.group()

    def kwargs(self) -> dict:
        """``(k=v,...)`` after the opening parenthesis."""
        out = {}
        if self.take(")"):
            return out
        while True:
            start = self.i
            key = self.match(_NAME, "an argument name")
            if key in out:
                self.i = start
                self.fail(f"each argument once ({key!r} is given twice)")
            if not self.take("="):
                self.fail("'='")
            out[key] = parse_value(self.match(_VALUE, "a value (int, float, true/false, word)"))
            if self.take(")"):
                return out
            if not self.take(","):
                self.fail("',' or ')'")


def parse_value(token: str):
    """``'7'`` -> 7, ``'0.5'`` -> 0.5, ``'true'`` -> True, ``'max'`` -> 'max'."""
    for convert in (int, float):
        try:
            return convert(token)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(token.lower(), token)


def format_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def parse(text: str) -> Parsed:
    """Split a spec string (grammar in the module docstring); ValueError shows where it is
    malformed."""
    s = _Scanner(text)
    name = s.match(_NAME, "a policy name")
    args = s.kwargs() if s.take("(") else {}
    storage, storage_args, sinks, num = "", {}, "", 0
    if s.take("@"):
        storage = s.match(_NAME, "a storage name after '@'")
        storage_args = s.kwargs() if s.take("(") else {}
        if s.take("+"):
            start = s.i
            m = _SINKS.fullmatch(s.match(_NAME, "sinksN or kvsinkN after '+'"))
            if not m or int(m.group(2)) < 1:
                s.i = start
                s.fail("sinksN or kvsinkN (N >= 1) after '+'")
            sinks, num = m.group(1), int(m.group(2))
    s.skip()
    if s.i < len(text):
        s.fail("the end or '+sinksN' / '+kvsinkN'" if storage
               else "'@int8', '@int4' or '@int2' before '+'" if text[s.i] == "+"
               else "the end or '@<storage>'")
    return Parsed(name, args, storage, storage_args, sinks, num)


# -- storage -----------------------------------------------------------------------------------

STORAGE_ARGS = {
    "group": Arg(16, "KIVI group: channels per value scale, slots per key block", low=1),
    "residual": Arg(32, "newest tokens kept in full precision (a multiple of group)", low=0),
}


def _storage(p: Parsed) -> dict | None:
    """``quantized`` keyword arguments of the storage suffix (None: full precision), checked
    by wrapping a stand-in policy."""
    from lcache.cache.base import Dense  # base registers Dense through this module
    from lcache.cache.quantized import quantized

    if not p.storage:
        return None
    if p.storage == "mla":
        raise ValueError("'@mla' is not a storage: MLA latent storage is a model property "
                         "(ModelConfig.mla_kv_lora_rank > 0 caches the latent and the shared "
                         "RoPE key as one cache head), so every policy already runs over MLA "
                         "latents on an MLA model; drop '@mla' and use an MLA model config")
    m = re.fullmatch(r"int(\d+)", p.storage)
    if not m or int(m.group(1)) not in BITS:
        raise ValueError(f"unknown storage '@{p.storage}'; expected "
                         f"{', '.join(f'@int{b}' for b in BITS)}")
    kw = dict(_typed(f"@{p.storage}", STORAGE_ARGS, p.storage_args, Context()),
              bits=int(m.group(1)), keep_sinks=p.num_sinks, sink_detect=SINK_SUFFIXES.get(p.sinks))
    quantized(Dense(1), **kw)
    return kw


def _storage_spec(q) -> str:
    """The suffix of a ``Quantized`` policy."""
    from lcache.cache.quantized import Quantized  # see _storage

    q = getattr(q, "storage", q)  # head groups: the storage of their groups
    if q.scale_dtype != default_of(Quantized, "scale_dtype") or (
            q.keep_sinks == 0 and q.sink_detect is not None):
        raise ValueError(f"{q!r} has no spec: the storage suffix has the default scale_dtype "
                         "and sink detection only with sinks")
    args = dict(group=q.group, residual=q.residual)
    suffix = {None: "sinks", "outlier": "kvsink"}[q.sink_detect]
    return (f"@int{q.bits}" + _format_args(STORAGE_ARGS, args)
            + (f"+{suffix}{q.keep_sinks}" if q.keep_sinks else ""))


# -- build and spec ----------------------------------------------------------------------------


def _typed(owner: str, accepted: dict[str, Arg], given: dict, ctx: Context) -> dict:
    """Given values checked against ``accepted`` -> every argument (defaults filled in,
    context defaults resolved)."""
    for key in given:
        if key not in accepted:
            takes = (f"it accepts {', '.join(accepted)}" if accepted
                     else "it takes no arguments")
            raise ValueError(f"{owner} has no argument {key!r}; {takes}")
    out = {}
    for key, arg in accepted.items():
        if key not in given:
            out[key] = getattr(ctx, arg.context) if arg.default is None else arg.default
            continue
        value, want = given[key], arg.type
        if want is float and type(value) is int:
            value = float(value)
        if type(value) is not want:
            raise ValueError(f"{owner}: argument {key}={format_value(value)} must be "
                             f"{KINDS[want]}")
        if not arg.fits(value):
            raise ValueError(f"{owner}: argument {key}={format_value(value)} must be "
                             f"{arg.rule()}")
        out[key] = value
    return out


def _format_args(accepted: dict[str, Arg], values: dict) -> str:
    """``(k=v,...)`` of the values that differ from their default; context ones always, unless
    None (left to the context, e.g. ``SnapKV(decode_capacity=None)``)."""
    shown = [f"{k}={format_value(values[k])}" for k, a in accepted.items()
             if values[k] is not None and (a.default is None or values[k] != a.default)]
    return f"({','.join(shown)})" if shown else ""


def _unset(value) -> bool:
    """A ``Context`` field left at its default (0, None; arrays are set)."""
    return value is None or (not hasattr(value, "shape") and not value)


def _resolve(text: str, budget: int, ctx: Context, need_probe: bool):
    """Every check of ``build`` that needs no work -> ``(entry, args, storage kwargs)``."""
    p = parse(text)
    entry = REGISTRY.get(p.name)
    if entry is None:
        raise ValueError(f"unknown policy {p.name!r} in spec {text!r}; registered: "
                         f"{', '.join(names())}")
    args = _typed(p.name, entry.args, p.args, ctx)
    try:
        storage = _storage(p)
    except ValueError as err:
        raise ValueError(f"policy spec {text!r}: {err}") from err
    missing = [n for n in entry.needs if _unset(getattr(ctx, n)) and (n != "probe" or need_probe)]
    if missing:
        raise ValueError(f"{p.name} needs {' and '.join(missing)} (see registry.Context)")
    if entry.least is not None:
        least, reason = entry.least(**args)
        if budget < least:
            raise ValueError(f"{p.name} cannot hold a budget of {budget} tokens: it needs at "
                             f"least {least} ({reason})")
    if entry.compresses and budget > ctx.prompt_len:
        raise ValueError(f"{p.name} budget={budget} is larger than the {ctx.prompt_len}-token "
                         "prompt: nothing would be compressed")
    return entry, args, storage


def _tokens(budget) -> int:
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral):
        raise ValueError(f"budget must be a whole number of tokens, got {budget!r}")
    return int(budget)


def check(text: str, budget: int, **context) -> None:
    """Raise ValueError if ``build(text, budget, **context)`` would. DynamicKV is checked up to
    its probe, which is not called (nor required: there may be no prompts yet)."""
    entry = _resolve(text, _tokens(budget), Context(**context), need_probe=False)[0]
    if "probe" not in entry.needs:
        build(text, budget, **context)


def build(text: str, budget: int, *, prompt_len: int = 0, num_layers: int = 0,
          max_new: int = 0, num_model_sinks: int = 0, probe: Callable | None = None,
          head_scores=None):
    """The policy of spec ``text`` keeping ``budget`` tokens per layer and head (sinks and
    windows included; see ``Context`` for the rest) -> a ``Policy``, or ``LayerPolicies``
    (one per layer) for per-layer budgets. Raises ValueError before any work."""
    ctx = Context(prompt_len, num_layers, max_new, num_model_sinks, probe, head_scores)
    budget = _tokens(budget)
    entry, args, storage = _resolve(text, budget, ctx, need_probe=True)
    try:
        policy = entry.make(budget, ctx, **args)
        if storage is not None:
            from lcache.cache.quantized import quantized  # see _storage

            wrap = lambda p: quantized(p, **storage)
            policy = tuple(map(wrap, policy)) if isinstance(policy, tuple) else wrap(policy)
    except ValueError as err:
        raise ValueError(f"policy spec {text!r} with budget {budget}: {err}") from err
    if isinstance(policy, tuple):
        suffix = _storage_spec(policy[0]) if storage is not None else ""
        return LayerPolicies(policy, entry.name + _format_args(entry.args, args) + suffix)
    return policy


def spec(policy) -> str:
    """The canonical spec of a policy built by ``build`` (or constructed to match a registered
    class), so that ``build(spec(p), budget, **context) == p``. ValueError for a policy the
    grammar cannot express."""
    if isinstance(policy, LayerPolicies):
        return policy.spec
    if isinstance(policy, tuple):
        raise ValueError("a plain tuple of per-layer policies has no spec; build it with "
                         "registry.build (pyramidkv, dynamickv) to keep one")
    from lcache.cache.quantized import Quantized  # see _storage

    suffix = ""
    if isinstance(policy, Quantized):
        suffix, policy = _storage_spec(policy), policy.inner
    entry = _BY_CLASS.get(type(policy))
    if entry is None:
        raise ValueError(f"{type(policy).__name__} is not registered; registered classes: "
                         f"{', '.join(sorted(c.__name__ for c in _BY_CLASS))}")
    return entry.name + _format_args(entry.args, entry.args_of(policy)) + suffix


def table(width: int = 96) -> str:
    """Names with their arguments and defaults, and each budget split (module docstring,
    README)."""
    lines = []
    for name in names():
        e = REGISTRY[name]
        sig = ", ".join(f"{k}={a.shown()}" for k, a in e.args.items())
        lines += textwrap.wrap(f"{name}({sig})" if sig else name, width,
                               subsequent_indent=" " * (len(name) + 1), break_on_hyphens=False)
        lines += textwrap.wrap(e.split, width, initial_indent="    ", subsequent_indent="    ",
                               break_on_hyphens=False)
    return "\n".join(lines)


def round_half_up(x: float) -> int:
    """Budget fractions to tokens: ``floor(x + 0.5)`` (recovers ``n`` from ``n / b * b``)."""
    return math.floor(x + 0.5)
