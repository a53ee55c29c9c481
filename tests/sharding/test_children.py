"""Results of the child runs started by ``conftest.children``."""

import json

import numpy as np


def test_multidevice_suite(children):
    """tests/sharding/multidevice: pmap and (data, model) mesh vs one device, cache and weight
    shardings, no recompilation, layout errors, the shard_map'd Pallas kernel."""
    code, out, err = children["multidevice"].result()
    assert code == 0, f"{out[-8000:]}\n{err[-4000:]}"


def test_two_processes_match_one_device(children):
    """The same mesh code after ``jax.distributed.initialize``: a mesh spanning two processes
    gives every process the tokens and logits of one device."""
    results = []
    for pid in range(2):
        code, out, err = children[f"process{pid}"].result()
        assert code == 0, err[-4000:]
        results.append(json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1]))
    ref = results[0]["one_device"]
    for r in results:
        assert r["devices"] == 4
        np.testing.assert_array_equal(r["mesh"]["tokens"], ref["tokens"])
        np.testing.assert_allclose(r["mesh"]["logits"], ref["logits"], atol=1e-5, rtol=1e-5)


def test_generate_command_on_a_mesh(children):
    code, out, err = children["generate_cli"].result()
    assert code == 0, err[-4000:]
    assert out.count("--- row") == 2
