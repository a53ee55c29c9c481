"""Generate text with any cache policy on one device, a (data, model) mesh or pmap.

    python -m experiments.generate --config=configs/generate.py:smoke
    python -m experiments.generate --config=configs/generate.py --config.policy=streaming \
        --config.mesh.data=2 --config.batch=2

Prints one continuation per row (process 0 only when multi-host).
"""

from __future__ import annotations

import os

import jax
from absl import app, logging
from flax import nnx
from ml_collections import config_flags

from lcache.cache import H2O, Dense, SnapKV, StreamingLLM
from lcache.checkpoint import load_model
from lcache.data import ByteTokenizer
from lcache.generate import pad_prompts
from lcache.model import ModelConfig, Transformer
from lcache.sampling import Sampling
from lcache.sharded_generate import Generator
from lcache.sharding import MeshLayout, PmapLayout, initialize_distributed, make_mesh

_CONFIG = config_flags.DEFINE_config_file("config", "configs/generate.py:smoke")
DEFAULT_CHECKPOINT = "runs/gpu/softmax/model"
POLICIES = ("dense", "streaming", "h2o", "snapkv")


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


def make_policy(c, prompt: list[int], model):
    """The cache policy named by ``c.policy`` with the config's budget fields."""
    new, prompt_len = c.sampling.max_new_tokens, len(prompt)
    if c.policy == "dense":  # holds the padded prompt, the new tokens and any sink tokens
        return Dense(pad_prompts([prompt])[0].shape[1] + new + model.cfg.num_sink_tokens)
    if c.policy == "streaming":
        return StreamingLLM.from_budget(c.budget, num_sinks=c.num_sinks)
    if c.policy == "h2o":
        return H2O(heavy=c.budget - c.window, recent=c.window)
    if c.policy == "snapkv":
        return SnapKV.for_prompt(prompt_len, c.budget, window=c.window, decode_capacity=new)
    raise ValueError(f"unknown policy {c.policy!r}; expected one of {POLICIES}")


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
    policy = make_policy(c, prompt, model)
    layout = make_layout(c)
    logging.info("policy %s, layout %s, %d devices", policy, layout, jax.device_count())
    gen = Generator(model, policy, Sampling(**c.sampling.to_dict()), layout)
    out = gen.generate([prompt] * c.batch, seed=c.seed)
    if jax.process_index() == 0:
        for i, row in enumerate(out.tokens):
            print(f"--- row {i} ({policy}) ---\n{c.prompt}{tok.decode(row)}")


if __name__ == "__main__":
    app.run(main)
