"""The policy registry: every name builds with its documented budget split and round-trips
through ``spec``; storage suffixes; every error is raised before any work."""

import os
import textwrap
import types

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lcache.cache import (
    H2O,
    TOVA,
    AdaKV,
    DecodeCompaction,
    Dense,
    ExpectedAttention,
    ExpectedScores,
    KeyNorm,
    LayerPolicies,
    Quantized,
    Random,
    Recompress,
    SlidingWindow,
    SnapKV,
    SnapVote,
    StreamingLLM,
    ValueAware,
    duo_layers,
    dynamic,
    headkv_layers,
    pyramid,
    razor_layers,
    registry,
)

T, L, NEW, SINKS = 96, 3, 5, 1  # prompt tokens, layers, new tokens, model sink tokens


def probe_caches(policy):
    """A stand-in for DynamicKV's probe prefill: per-layer states with fixed random votes."""
    assert policy == SnapKV(T + SINKS, policy.window, policy.kernel, policy.pooling, policy.gqa,
                           decode_capacity=0)
    rng = np.random.default_rng(0)
    pos = np.broadcast_to(np.arange(T), (1, 2, T))
    return [types.SimpleNamespace(pos=pos, seen=np.array([T]), score=rng.random((1, 2, T)))
            for _ in range(L)]


GATES = np.array([[0.3, 0.9], [0.1, 0.5], [0.7, 0.2]])  # DuoAttention head gates [L, Hkv]
CTX = dict(prompt_len=T, num_layers=L, max_new=NEW, num_model_sinks=SINKS, probe=probe_caches,
           head_scores=GATES)
B = 24  # the budget of the split checks

# spec -> the policy it must build at budget B with CTX: the documented splits, by hand
SPLITS = {
    "dense": Dense(T + NEW + SINKS),
    "window": SlidingWindow(24),
    "streaming_llm(sinks=2)": StreamingLLM(window=22, num_sinks=2),
    "h2o": H2O(heavy=12, recent=12),
    "h2o(recent=0.1)": H2O(heavy=22, recent=2),  # 2.4 -> 2
    "value(recent=0.125,normalize=true)": ValueAware(heavy=21, recent=3, normalize=True),
    "snapkv(window=8,kernel=7,pool=max)": SnapKV(24, 8, 7, "max", "mean", NEW),
    "snapkv(window=8,decode=0)": SnapKV(24, 8, decode_capacity=0),
    "pyramidkv(window=8)": tuple(SnapKV(b, 8, decode_capacity=NEW)
                                 for b in pyramid(24, L, T, window=8)),
    "dynamickv(window=8)": tuple(SnapKV(b, 8, decode_capacity=NEW)
                                 for b in dynamic(probe_caches(SnapKV(T + SINKS, 8,
                                                                      decode_capacity=0)), 24, 8)),
    "adakv(window=8,alpha=0.5)": AdaKV(24, SnapVote(8), alpha=0.5, decode_capacity=NEW),
    "expected_attention(sinks=2)": ExpectedAttention(24, ExpectedScores(sinks=2),
                                                     decode_capacity=NEW),
    "duo(sinks=2)": duo_layers(GATES, 0.5, 2, 22, Dense(T + NEW + SINKS)),
    "headkv(window=8)": headkv_layers(GATES, 24, 0.2, window=8, kernel=5, pool="avg",
                                      decode=NEW),
    "razor(sinks=2)": razor_layers(GATES > 0.5, 2, 21, Dense(T + NEW + SINKS)),
    "compaction(recent=4)": DecodeCompaction(24, 16, 4, 4),
    "tova": TOVA(24, window=1),
    "knorm": KeyNorm(24),
    "random(seed=3)": Random(24, seed=3),
    "recompress(window=8,interval=4)": Recompress(SnapKV(24, 8, decode_capacity=0), interval=4,
                                                  target=24),
}


def test_every_name_has_a_split_check():
    assert {registry.parse(s).name for s in SPLITS} == set(registry.names())


@pytest.mark.parametrize("text", list(SPLITS))
def test_documented_split_and_round_trip(text):
    policy = registry.build(text, B, **CTX)
    assert policy == SPLITS[text]
    assert registry.build(registry.spec(policy), B, **CTX) == policy


def test_per_layer_budgets_keep_the_mean():
    for name in ("pyramidkv", "dynamickv"):
        layers = registry.build(f"{name}(window=8)", B, **CTX)
        assert isinstance(layers, LayerPolicies) and len(layers) == L
        assert sum(p.budget for p in layers) == pytest.approx(B * L, abs=L)
        assert {p.capacity - p.budget for p in layers} == {NEW}


def test_spec_is_canonical():
    assert registry.spec(SnapKV(64, decode_capacity=0)) == "snapkv(decode=0)"  # always written
    assert registry.spec(SnapKV(64)) == "snapkv"  # None: room sized by the context's max_new
    assert registry.spec(StreamingLLM(window=60)) == "streaming_llm"
    assert registry.spec(H2O(heavy=3, recent=1)) == "h2o(recent=0.25)"
    built = registry.build(" snapkv( window = 8 , pool=max ) @ int4 + sinks4 ", B, **CTX)
    assert registry.spec(built) == "snapkv(window=8,pool=max,decode=5)@int4+sinks4"
    assert registry.spec(registry.build("pyramidkv(window=8,decode=0)@int2", B, **CTX)) == (
        "pyramidkv(window=8,decode=0)@int2")


STORAGES = {
    "@int8": dict(bits=8, keep_sinks=0, sink_detect=None),
    "@int4+sinks4": dict(bits=4, keep_sinks=4, sink_detect=None),
    "@int2+kvsink5": dict(bits=2, keep_sinks=5, sink_detect="outlier"),
    "@int4(group=8,residual=0)": dict(bits=4, group=8, residual=0, keep_sinks=0),
}


@pytest.mark.parametrize("suffix", list(STORAGES))
@pytest.mark.parametrize("base", ["dense", "streaming_llm", "snapkv(window=8)",
                                  "pyramidkv(window=8)"])
def test_storage_suffixes(base, suffix):
    policy = registry.build(base + suffix, B, **CTX)
    inner = registry.build(base, B, **CTX)
    layers = policy if isinstance(policy, tuple) else (policy,)
    for q, p in zip(layers, inner if isinstance(inner, tuple) else (inner,), strict=True):
        want = dict(group=16, residual=32) | STORAGES[suffix]
        assert isinstance(q, Quantized) and q.inner == p
        assert {k: getattr(q, k) for k in want} == want
    assert registry.build(registry.spec(policy), B, **CTX) == policy


def test_layer_policies_are_tuples():
    layers = registry.build("pyramidkv(window=8)", B, **CTX)
    assert layers == tuple(layers) and hash(layers) == hash(tuple(layers))
    with pytest.raises(ValueError, match="plain tuple .* has no spec"):
        registry.spec(tuple(layers))


def test_unexpressible_policies_have_no_spec():
    with pytest.raises(ValueError, match="not registered; registered classes: .*SnapKV"):
        registry.spec(object())
    with pytest.raises(ValueError, match="has no spec"):
        registry.spec(Recompress(H2O(heavy=4, recent=4), interval=4, target=8))
    with pytest.raises(ValueError, match="has no spec"):
        registry.spec(Quantized(Dense(8), scale_dtype="float16"))


# -- errors: all raised before any work ---------------------------------------------------------

ERRORS = [
    ("snapkvv", B, "unknown policy 'snapkvv' .* registered: adakv, compaction, dense, duo, "
                   "dynamickv, expected_attention, h2o"),
    ("snapkv(windw=8)", B, "snapkv has no argument 'windw'; it accepts window, kernel, pool, "
                           "gqa, decode"),
    ("tova(seed=1)", B, "tova has no argument 'seed'; it accepts window"),
    ("dense(window=1)", B, "dense has no argument 'window'; it takes no arguments"),
    ("snapkv(kernel=4)", B, r"snapkv: argument kernel=4 must be >= 1 and odd"),
    ("snapkv(pool=mean)", B, r"snapkv: argument pool=mean must be one of avg\|max"),
    ("snapkv(window=8.5)", B, "snapkv: argument window=8.5 must be an int"),
    ("h2o(recent=2)", B, r"h2o: argument recent=2.0 must be >= 0.0 and <= 1.0"),
    ("h2o(normalize=1)", B, "h2o: argument normalize=1 must be true or false"),
    ("streaming_llm(positions=1)", B, "streaming_llm: argument positions=1 must be a word"),
    ("streaming_llm", 4, "streaming_llm cannot hold a budget of 4 tokens: it needs at least 5 "
                         r"\(4 sinks \+ a window"),
    ("snapkv(window=8)", 8, "snapkv cannot hold a budget of 8 tokens: it needs at least 9 "
                            r"\(an observation window of 8"),
    ("recompress", 32, "recompress cannot hold a budget of 32 tokens"),
    ("tova(window=30)", B, "tova cannot hold a budget of 24 tokens: it needs at least 30"),
    ("window", 0, "window cannot hold a budget of 0 tokens"),
    ("pyramidkv(window=8)", T + 1, f"pyramidkv budget={T + 1} is larger than the {T}-token "
                                   "prompt: nothing would be compressed"),
    ("dense@mla", B, "'@mla' is not a storage: MLA latent storage is a model property"),
    ("dense@int3", B, "unknown storage '@int3'; expected @int8, @int4, @int2"),
    ("dense@int4(bits=2)", B, "@int4 has no argument 'bits'; it accepts group, residual"),
    ("dynamickv(window=8)@int4(group=8,residual=12)", B,
     "residual=12 must be a multiple of group=8"),
    ("window", 24.0, "budget must be a whole number of tokens, got 24.0"),
]


@pytest.mark.parametrize("text,budget,message", ERRORS)
def test_errors_are_raised_before_any_work(text, budget, message):
    calls = []
    ctx = dict(CTX, probe=lambda policy: calls.append(policy))
    for fn in (registry.build, registry.check):
        with pytest.raises(ValueError, match=message):
            fn(text, budget, **ctx)
    assert not calls


@pytest.mark.parametrize("text,where,expected", [
    ("snapkv(window=32", 16, "',' or ')'"),
    ("snapkv(window32)", 15, "'='"),
    ("snapkv(window=8,window=9)", 16, "each argument once"),
    ("snapkv+sinks4", 6, "'@int8', '@int4' or '@int2' before '+'"),
    ("snapkv@int4 x", 12, "the end or '+sinksN'"),
    ("snapkv)", 6, "the end or '@<storage>'"),
    ("dense@int4+sink4", 11, "sinksN or kvsinkN"),
    ("dense@int4+sinks0", 11, "sinksN or kvsinkN"),
    ("(window=8)", 0, "a policy name"),
    ("snapkv(window=)", 14, "a value"),
])
def test_malformed_specs_show_where(text, where, expected):
    with pytest.raises(ValueError, match="malformed policy spec") as err:
        registry.parse(text)
    message = str(err.value)
    assert f"expected {expected}" in message and f"at character {where}" in message
    assert message.endswith(f"    {text}\n    {' ' * where}^")


def test_missing_context():
    with pytest.raises(ValueError, match="pyramidkv needs num_layers"):
        registry.build("pyramidkv(window=8)", B, prompt_len=T)
    with pytest.raises(ValueError, match="dynamickv needs probe"):
        registry.build("dynamickv(window=8)", B, prompt_len=T, num_layers=L)
    registry.check("dynamickv(window=8)", B, prompt_len=T)  # no prompts to probe yet: fine


# -- round trip over random valid arguments -----------------------------------------------------


def arg_strategy(arg: registry.Arg):
    if arg.choices:
        return st.sampled_from(arg.choices)
    if arg.type is bool:
        return st.booleans()
    if arg.type is float:
        return st.floats(arg.low, arg.high if arg.high is not None else 40.0)
    values = st.integers(int(arg.low), int(arg.low) + 12)
    return values.filter(lambda v: v % 2) if arg.odd else values


@st.composite
def specs(draw):
    name = draw(st.sampled_from(registry.names()))
    entry = registry.REGISTRY[name]
    args = {k: draw(arg_strategy(a)) for k, a in entry.args.items() if draw(st.booleans())}
    text = name + (f"({','.join(f'{k}={registry.format_value(v)}' for k, v in args.items())})"
                   if args else "")
    budget = draw(st.integers(1, 40))
    storage = draw(st.sampled_from(["", "@int8", "@int4+sinks2", "@int2+kvsink3",
                                    "@int4(group=8,residual=16)"]))
    return text + storage, budget


@settings(max_examples=150, deadline=None)
@given(specs())
def test_round_trip_over_valid_arguments(case):
    text, budget = case
    try:
        registry.check(text, budget, **CTX)
    except ValueError as err:
        assume("cannot hold" not in str(err))
        raise
    policy = registry.build(text, budget, **CTX)
    assert registry.build(registry.spec(policy), budget, **CTX) == policy


def test_table_is_documented():
    assert textwrap.indent(registry.table(), "    ") in registry.__doc__
    readme = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
    with open(readme) as f:
        assert registry.table() in f.read()
