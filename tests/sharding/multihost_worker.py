"""One process of the two-process CPU run (``test_children.py``): 2 CPU devices per process, a
(data 2, model 2) mesh across both processes, gloo collectives. Prints one JSON line with the
mesh run's tokens and logits and a one-device run's.

    python tests/sharding/multihost_worker.py PROCESS_ID PORT
"""

import json
import sys

import jax
import numpy as np
from flax import nnx

from lcache.cache import StreamingLLM
from lcache.model import ModelConfig, Transformer
from lcache.sampling import Sampling
from lcache.sharded_generate import Generator
from lcache.sharding import MeshLayout, initialize_distributed, make_mesh


def main(process_id: int, port: str):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    initialize_distributed(f"localhost:{port}", num_processes=2, process_id=process_id)
    cfg = ModelConfig(dim=32, num_layers=1, num_heads=4, num_kv_heads=2, ffn_dim=64)
    model = Transformer(cfg, nnx.Rngs(0))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in (5, 9, 12, 3)]
    policy, sampling = StreamingLLM(window=6, num_sinks=2), Sampling(max_new_tokens=4)
    # Same work on both processes, so that neither waits long at the shutdown barrier.
    layouts = {"one_device": MeshLayout(make_mesh(devices=jax.local_devices())),
               "mesh": MeshLayout(make_mesh(2, 2))}
    result = dict(process=jax.process_index(), devices=jax.device_count())
    for name, layout in layouts.items():
        out = Generator(model, policy, sampling, layout).generate(prompts, return_logits=True)
        result[name] = dict(tokens=np.stack(out.tokens).tolist(), logits=out.logits.tolist())
    print(json.dumps(result))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
