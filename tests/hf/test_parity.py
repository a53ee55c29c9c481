"""Logits and greedy parity with transformers 5.2 on the tiny fixtures (fp32, 1e-4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_fixtures import FAMILIES, FIXTURES, copy_fixture, edit_config, loaded, reference
from safetensors.numpy import load_file, save_file

from lcache.cache import Dense, SlidingWindow
from lcache.generate import generate
from lcache.hf import load_hf
from lcache.model.rope import model_inv_freq
from lcache.sampling import Sampling

TOL = 1e-4


@nnx.jit
def forward(model, ids_BT):
    return model(ids_BT)


def max_err(model, ids, want) -> float:
    return float(np.abs(np.asarray(forward(model, jnp.asarray(ids))) - want).max())


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(family):
    ref = reference(family)
    assert max_err(loaded(family)[0], ref["input_ids"], ref["logits"]) < TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_rope_inv_freq_matches(family):
    inv = model_inv_freq(loaded(family)[0].cfg)
    np.testing.assert_allclose(inv, reference(family)["rope_inv_freq"], rtol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_tokens_identical_with_dense_cache(family):
    ref = reference(family)
    out = generate(loaded(family)[0], [ref["greedy_prompt"][0].tolist()], Dense(64),
                   Sampling(max_new_tokens=ref["greedy_tokens"].shape[1]))
    np.testing.assert_array_equal(out[0], ref["greedy_tokens"][0])


def test_family_specifics_mapped():
    assert loaded("llama")[0].cfg.rope_scaling == "llama3"
    qwen = loaded("qwen2")[0].cfg
    assert qwen.qkv_bias and qwen.tie_embeddings and qwen.rope_theta == 1e6
    assert loaded("mistral")[0].cfg.sliding_window == 16


def test_mistral_long_input_full_forward():
    ref = reference("mistral")
    model = loaded("mistral")[0]
    assert max_err(model, ref["long_ids"], ref["long_logits"]) < TOL
    unwindowed = load_hf(FIXTURES / "mistral", sliding_window=0)[0]
    assert max_err(unwindowed, ref["long_ids"], ref["long_logits"]) > 1.0  # window exercised


def cached_logits(model, ids_1T, start: int, policy) -> np.ndarray:
    """``[T, V]``: prefill ``ids[:, :start]`` in one chunk, then decode the rest one at a time."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, ids):
        m = nnx.merge(graphdef, state)
        caches = m.init_cache(policy, 1)
        first, caches = m.prefill(ids[:, :start], jnp.arange(start)[None], caches, policy)

        def step(caches, t):
            logits, caches = m.decode(ids[:, t], t[None], caches, policy)
            return caches, logits[0]

        _, rest = jax.lax.scan(step, caches, jnp.arange(start, ids.shape[1]))
        return jnp.concatenate([first[0], rest])

    return np.asarray(run(state, jnp.asarray(ids_1T)))


@pytest.mark.parametrize("policy", [Dense(48), SlidingWindow(16, positions="original")],
                         ids=["dense", "sliding_window_policy"])
def test_mistral_long_input_cached(policy):
    """Prefill 20 tokens (> W), decode 28 more: every position matches transformers."""
    ref = reference("mistral")
    got = cached_logits(loaded("mistral")[0], ref["long_ids"], 20, policy)
    assert np.abs(got - ref["long_logits"][0]).max() < TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_params(family):
    ref = reference(family)
    model = load_hf(FIXTURES / family, dtype=jnp.bfloat16)[0]
    assert model.cfg.compute_dtype == "bfloat16"
    assert model.blocks[0].attn.q.kernel[...].dtype == jnp.bfloat16
    assert max_err(model, ref["input_ids"], ref["logits"]) < 0.2


def test_bfloat16_checkpoint_loads_as_float32(tmp_path):
    folder = copy_fixture(tmp_path, "qwen2")
    tensors = load_file(folder / "model.safetensors")
    save_file({k: v.astype(jnp.bfloat16) for k, v in tensors.items()},
              folder / "model.safetensors")
    model = load_hf(folder)[0]
    assert model.embed.embedding[...].dtype == jnp.float32
    ref = reference("qwen2")
    assert max_err(model, ref["input_ids"], ref["logits"]) < 0.2


def test_sharded_checkpoint_with_index(tmp_path):
    folder = copy_fixture(tmp_path, "llama")
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, folder / shard)
    index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    ref = reference("llama")
    assert max_err(load_hf(folder)[0], ref["input_ids"], ref["logits"]) < TOL


def test_legacy_rope_fields(tmp_path):
    """Pre-5.x configs: top-level ``rope_theta`` and ``rope_scaling`` (key ``type``)."""
    folder = copy_fixture(tmp_path, "llama")
    params = json.loads((folder / "config.json").read_text())["rope_parameters"]
    theta = params.pop("rope_theta")
    params["type"] = params.pop("rope_type")
    edit_config(folder, rope_parameters=..., rope_theta=theta, rope_scaling=params)
    assert load_hf(folder)[0].cfg == loaded("llama")[0].cfg


MESH_CHILD = """
import jax, jax.numpy as jnp, numpy as np, sys
from flax import nnx
from jax.sharding import PartitionSpec as P
from lcache.hf import load_hf
from lcache.sharding import make_mesh
model = load_hf(sys.argv[1], mesh=make_mesh(data=1, model=2))[0]
assert model.blocks[0].attn.q.kernel[...].sharding.spec == P(None, "model")
assert model.blocks[0].mlp.down.kernel[...].sharding.spec == P("model", None)
ref = np.load(sys.argv[1] + "/reference.npz")
logits = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(ref["input_ids"]))
print(float(np.abs(np.asarray(logits) - ref["logits"]).max()))
"""


def test_mesh_splits_params_over_model_axis():
    """On a 1 x 2 mesh (two host CPU devices, in a child process) params follow
    ``lcache.sharding``'s rules and the logits still match."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", MESH_CHILD, str(FIXTURES / "qwen2")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.split()[-1]) < TOL


def test_mesh_without_model_axis():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    with pytest.raises(ValueError, match="the mesh needs a 'model' axis"):
        load_hf(FIXTURES / "qwen2", mesh=mesh)
