"""Generate text with any cache policy on one device, a (data, model) mesh or pmap.

    python -m experiments.generate --config=configs/generate.py:smoke
    python -m experiments.generate --config=configs/generate.py --config.policy=streaming_llm \
        --config.mesh.data=2 --config.batch=2

Prints one continuation per row (process 0 only when multi-host).
"""

from __future__ import annotations

import os

import jax
from absl import app, logging
from flax import nnx
from ml_collections import config_flags

from lcache.cache import registry
from lcache.checkpoint import load_model
from lcache.data import ByteTokenizer
from lcache.generate import pad_prompts
from lcache.model import ModelConfig, Transformer
from lcache.sampling import Sampling
from lcache.sharded_generate import Generator
from lcache.sharding import MeshLayout, PmapLayout, initialize_distributed, make_mesh

_CONFIG = config_flags.DEFINE_config_file("config", "configs/generate.py:smoke")
DEFAULT_CHECKPOINT = "runs/gpu/softmax/model"


def load_any(c):
    """-> ``(model, tokenizer)`` from ``c.random_model``, ``c.hf_path`` or ``c.checkpoint``."""
    if c.random_model:
        cfg = ModelConfig(**c.random_model.to_dict(), attention_impl=c.attention_impl)
        return Transformer(cfg, nnx.Rngs(c.seed)), ByteTokenizer()
    if c.hf_path:
        raise NotImplementedError(f"hf_path={c.hf_path!r}: Hugging Face import is not wired "
                                  "into load_any yet; use --config.checkpoint=DIR")
    directory = c.checkpoint or DEFAULT_CHECKPOINT
    if not os.path.isdir(directory):
        raise ValueError(f"no checkpoint at {directory!r}: pass --config.checkpoint=DIR (a "
                         "save_model directory) or use --config=configs/generate.py:smoke")
    model, tokenizer, _ = load_model(directory, attention_impl=c.attention_impl)
    return model, tokenizer or ByteTokenizer()


def build_policy(c, prompt: list[int], model):
    """The policy of spec ``c.policy`` (``lcache.cache.registry``) keeping ``c.budget`` tokens
    for the padded prompt and ``max_new_tokens`` new ones (dense holds all of them)."""
    return registry.build(c.policy, c.budget, prompt_len=pad_prompts([prompt])[0].shape[1],
                          num_layers=model.cfg.num_layers, max_new=c.sampling.max_new_tokens,
                          num_model_sinks=model.cfg.num_sink_tokens)


def make_layout(c):
    if c.layout == "mesh":
        return MeshLayout(make_mesh(c.mesh.data, c.mesh.model))
    if c.layout == "pmap":
        if c.mesh.model != 1:
            raise ValueError(f"pmap is data-parallel only; got mesh.model={c.mesh.model}")
        return PmapLayout(c.mesh.data)
    raise ValueError(f"unknown layout {c.layout!r}; expected 'mesh' or 'pmap'")


def main(argv):
    del argv
    c = _CONFIG.value
    if c.distributed.enabled:
        initialize_distributed(c.distributed.coordinator, c.distributed.num_processes,
                               c.distributed.process_id)
    model, tok = load_any(c)
    prompt = tok.encode(c.prompt).tolist()
    policy = build_policy(c, prompt, model)
    layout = make_layout(c)
    logging.info("policy %s, layout %s, %d devices", policy, layout, jax.device_count())
    gen = Generator(model, policy, Sampling(**c.sampling.to_dict()), layout)
    out = gen.generate([prompt] * c.batch, seed=c.seed)
    if jax.process_index() == 0:
        for i, row in enumerate(out.tokens):
            print(f"--- row {i} ({c.policy}) ---\n{c.prompt}{tok.decode(row)}")


if __name__ == "__main__":
    app.run(main)
