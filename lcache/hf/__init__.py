"""Import local Hugging Face checkpoints (Llama, Qwen2, Mistral; safetensors only).

``model, tokenizer, hf_config = load_hf("path/to/folder", dtype=jnp.bfloat16)``.
"""

from lcache.hf.config import model_config
from lcache.hf.load import load_hf
from lcache.hf.tokenizer import HFTokenizer

__all__ = ["HFTokenizer", "load_hf", "model_config"]
