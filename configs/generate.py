"""Config of text generation on one device, a (data, model) mesh or pmap (experiments/generate).

    python -m experiments.generate --config=configs/generate.py:smoke
    python -m experiments.generate --config=configs/generate.py --config.prompt='def fib(n):'
    python -m experiments.generate --config=configs/generate.py --config.policy=streaming_llm \
        --config.budget=64 --config.batch=4 --config.mesh.data=2 --config.mesh.model=1
    python -m experiments.generate --config=configs/generate.py --config.layout=pmap \
        --config.mesh.data=8 --config.batch=8

Variants: smoke (a random tiny model, CPU, seconds), default (``checkpoint`` or, unset, the GPU
reference model ``runs/gpu/softmax/model``). ``hf_path`` is reserved for Hugging Face
checkpoints (``experiments.generate.load_any``). ``policy`` is a policy spec
(``lcache.cache.registry``, e.g. ``dense``, ``streaming_llm(sinks=4)``, ``h2o(recent=0.125)``,
``snapkv(window=32)``) keeping ``budget`` tokens per layer and head (dense: prompt + new tokens;
the snapkv family: ``budget`` prompt tokens plus room for the new ones). ``layout=pmap``
splits the batch over ``mesh.data`` local devices (``mesh.model`` must be 1).
``distributed.enabled=True`` calls ``jax.distributed.initialize()`` first (multi-host; see the
README).
"""

import ml_collections

RANDOM_MODEL = dict(vocab_size=259, dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                    ffn_dim=160)


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
    if arg not in ("smoke", "default"):
        raise ValueError(f"unknown generate variant {arg!r}; expected smoke or default")
    c = ml_collections.ConfigDict()
    c.checkpoint = ml_collections.FieldReference(None, field_type=str)
    c.hf_path = ml_collections.FieldReference(None, field_type=str)
    c.random_model = ml_collections.ConfigDict(RANDOM_MODEL if arg == "smoke" else {})
    c.attention_impl = "xla"  # 'auto' uses the Pallas decode kernel on GPU/TPU (one device/pmap)
    c.policy = "dense"
    c.budget = 256
    c.prompt = "def fibonacci(n):\n"
    c.batch = 1  # copies of the prompt (rows differ when sampling)
    c.layout = "mesh"
    c.mesh = ml_collections.ConfigDict(dict(data=1, model=1))
    # multi-host: enabled=True calls jax.distributed.initialize; unset values are auto-detected
    c.distributed = ml_collections.ConfigDict(dict(enabled=False, coordinator="",
                                                   num_processes=0, process_id=-1))
    c.seed = 0
    c.sampling = ml_collections.ConfigDict(dict(
        max_new_tokens=16 if arg == "smoke" else 200, temperature=0.0, top_k=0, top_p=1.0))
    c.sampling.eos_id = ml_collections.FieldReference(None, field_type=int)
    return c
