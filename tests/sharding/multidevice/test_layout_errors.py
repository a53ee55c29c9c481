"""Layouts the model or the devices cannot take fail with a clear error before any compile."""

import pytest
from flax import nnx

from lcache.cache import Dense
from lcache.model import Transformer
from lcache.sampling import Sampling
from lcache.sharded_generate import Generator
from lcache.sharding import MeshLayout, PmapLayout, make_mesh

SAMPLING = Sampling(max_new_tokens=2)


@pytest.mark.parametrize("layout", [lambda: MeshLayout(make_mesh(4, 2)), lambda: PmapLayout(8)])
def test_batch_not_divisible(model, prompts, compiles, layout):
    gen = Generator(model, Dense(32), SAMPLING, layout())
    with pytest.raises(ValueError, match="batch = 6 is not divisible"):
        gen.generate(prompts[:6])
    assert compiles() == 0


def test_kv_heads_not_divisible_by_model_axis(model, compiles):
    with pytest.raises(ValueError, match="num_kv_heads = 2 is not divisible by the 'model'"):
        Generator(model, Dense(32), SAMPLING, MeshLayout(make_mesh(2, 4)))
    assert compiles() == 0


def test_mesh_larger_than_devices():
    with pytest.raises(ValueError, match="needs 16 devices, only 8 present"):
        make_mesh(4, 4)
    with pytest.raises(ValueError, match="pmap over 9 devices, only 8"):
        PmapLayout(9)


def test_pallas_kernel_on_mesh_is_refused(model):
    kernel_model = Transformer(model.cfg.replace(attention_impl="pallas"), nnx.Rngs(0))
    with pytest.raises(ValueError, match="cannot partition"):
        Generator(kernel_model, Dense(32), SAMPLING, MeshLayout(make_mesh(2, 1)))
