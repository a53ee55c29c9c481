"""pmap and (data, model) mesh generation reproduce one device, for every policy family."""

import functools

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lcache.cache import H2O, Dense, SnapKV, StreamingLLM
from lcache.generate import generate, pad_prompts
from lcache.sampling import Sampling
from lcache.sharded_generate import Generator
from lcache.sharding import MeshLayout, PmapLayout, make_mesh

SAMPLING = Sampling(max_new_tokens=5)
# Capacities below the prompt lengths, so every non-dense policy evicts during prefill and decode.
POLICIES = {
    "dense": Dense(48),
    "streaming_llm": StreamingLLM(window=6, num_sinks=2),
    "h2o": H2O(heavy=4, recent=4),
    "snapkv": SnapKV(budget=8, window=4, decode_capacity=0),  # the old default, by name
}
LAYOUTS = {"mesh4x2": lambda: MeshLayout(make_mesh(4, 2)), "pmap8": lambda: PmapLayout(8)}


@pytest.fixture(scope="module")
def one_device(model, prompts):
    """``one_device(name)`` -> generation with logits on one device (computed once)."""
    return functools.cache(lambda name: Generator(model, POLICIES[name], SAMPLING).generate(
        prompts, return_logits=True))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("policy", POLICIES)
def test_same_tokens_and_logits_as_one_device(model, prompts, one_device, policy, layout):
    ref = one_device(policy)
    out = Generator(model, POLICIES[policy], SAMPLING, LAYOUTS[layout]()).generate(
        prompts, return_logits=True)
    np.testing.assert_array_equal(np.stack(out.tokens), np.stack(ref.tokens))
    np.testing.assert_allclose(out.logits, ref.logits, atol=1e-5, rtol=1e-5)


def test_mesh_caches_params_and_steps(model, prompts, one_device, compiles):
    """Caches and weights are split as asked; stepwise decode never recompiles; one device and
    stepwise mesh decoding both give the tokens of ``lcache.generate``."""
    ref = np.stack(generate(model, prompts, POLICIES["dense"], SAMPLING))
    np.testing.assert_array_equal(np.stack(one_device("dense").tokens), ref)
    gen = Generator(model, POLICIES["dense"], SAMPLING, MeshLayout(make_mesh(4, 2)))
    tokens, lengths = pad_prompts(prompts)
    stream, _ = gen.prefill(tokens, lengths)
    toks = [gen.layout.get(stream.token)]
    stream, step, _ = gen.decode(stream, 1)  # compiles the one-step decoder
    toks.append(gen.layout.get(step)[:, 0])
    before = compiles()
    for _ in range(3):
        stream, step, _ = gen.decode(stream, 1)
        toks.append(gen.layout.get(step)[:, 0])
    assert compiles() == before
    np.testing.assert_array_equal(np.stack(toks, 1), ref)

    cache = stream.caches[0]
    b, h, c, d = cache.keys.shape
    for leaf, spec, shard in [(cache.keys, P("data", "model"), (b // 4, h // 2, c, d)),
                              (cache.pos, P("data", "model"), (b // 4, h // 2, c)),
                              (cache.seen, P("data"), (b // 4,))]:
        assert leaf.sharding.spec == spec
        assert leaf.sharding.shard_shape(leaf.shape) == shard
    attn = gen.params["blocks"][0]["attn"]
    assert attn["k"]["kernel"].sharding.spec == P(None, "model")
    assert attn["o"]["kernel"].sharding.spec == P("model", None)
    assert gen.params["blocks"][0]["mlp"]["down"]["kernel"].sharding.spec == P("model", None)
    assert gen.params["embed"]["embedding"].sharding.spec == P()


def test_pmap_keeps_one_cache_per_device(model, prompts):
    gen = Generator(model, POLICIES["streaming_llm"], SAMPLING, PmapLayout(8))
    stream, _ = gen.prefill(*pad_prompts(prompts))
    keys = stream.caches[0].keys  # [devices, B / devices, H, C, D]
    assert keys.shape[:2] == (8, len(prompts) // 8)
    assert len(keys.sharding.device_set) == 8
    assert keys.sharding.shard_shape(keys.shape) == (1, *keys.shape[1:])
