"""Model configuration, validated at construction."""

from __future__ import annotations

import dataclasses

from lcache.cache import validate as v
from lcache.model.rope import ROPE_SCALINGS

ATTENTION_VARIANTS = ("softmax", "off_by_one", "sink_logit", "softpick", "sigmoid", "relu")
# decode/prefill attention (``lcache.attention.decode``): Pallas kernels by ``pallas_kernels.
# dispatch`` ('xla', 'pallas', 'auto'), or 'cudnn' decode (the benchmarks' baseline)
ATTENTION_IMPLS = ("xla", "pallas", "auto", "cudnn")
TRAIN_ATTENTION = ("xla", "cudnn", "auto")
MLA_IMPLS = ("naive", "absorb")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A Llama-style decoder: RMSNorm, RoPE, GQA, SwiGLU.

    ``attention`` picks the weight function (see ``lcache.attention.variants``);
    ``gated_attention`` multiplies each head's output by a sigmoid gate computed from the layer
    input (Qiu et al., position G1); ``num_sink_tokens`` learnable tokens are prepended to every
    sequence (StreamingLLM's learnable sink / registers), excluded from the loss.
    ``mla_kv_lora_rank > 0`` replaces GQA by multi-head latent attention (``model/mla.py``;
    ``num_kv_heads`` and ``head_dim`` are then unused by attention).
    ``register_depth = D > 0`` adds one learned register embedding per offset ``d = 1..D``
    (MuToR-style multi-token prediction, ``model/registers.py``; drafts for self-speculative
    decoding); ``mtp_depth > 0`` adds DeepSeek-V3-style MTP modules (``model/mtp.py``).
    """

    vocab_size: int = 259
    dim: int = 256
    num_layers: int = 4
    num_heads: int = 8
    num_kv_heads: int = 4
    head_dim: int = 0  # 0 means dim // num_heads
    ffn_dim: int = 704
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    qkv_bias: bool = False
    rope_theta: float = 10000.0
    rope_scaling: str = "none"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_pos: int = 8192
    max_seq_len: int = 512  # training context
    attention: str = "softmax"
    sigmoid_bias: float = 0.0
    gated_attention: bool = False
    num_sink_tokens: int = 0
    sliding_window: int = 0  # W > 0: a query at t sees keys in (t - W, t] only (Mistral)
    attention_impl: str = "xla"  # ATTENTION_IMPLS
    # full-sequence (training) attention: 'cudnn' = fused flash attention (softmax variant, 16-bit
    # compute, GPU), 'xla' = explicit masks (materialises T x T), 'auto' = cudnn where it applies
    train_attention: str = "auto"
    compute_dtype: str = "float32"  # "bfloat16" for mixed precision (params stay float32)
    mla_kv_lora_rank: int = 0  # latent width d_c; > 0 turns MLA on
    mla_q_lora_rank: int = 0  # query latent width; 0 = no query compression
    mla_qk_nope_dim: int = 0  # per-head query/key width without RoPE
    mla_qk_rope_dim: int = 0  # width of the RoPE query part and of the shared RoPE key
    mla_v_dim: int = 0  # per-head value width
    mla_impl: str = "absorb"  # cached attention: 'naive' (up-project K/V) or 'absorb'
    register_depth: int = 0  # D learned register tokens, register d predicts token t + d
    mtp_depth: int = 0  # DeepSeek-style MTP modules (one extra block per depth)

    def __post_init__(self):
        size, count, flag, scale = v.integer(1), v.integer(0), v.boolean(), v.real(0, lo_open=True)
        v.check_fields(
            self, vocab_size=size, dim=size, num_layers=size, num_heads=size, num_kv_heads=size,
            head_dim=count, ffn_dim=size, norm_eps=scale, tie_embeddings=flag, qkv_bias=flag,
            rope_theta=scale, rope_factor=scale, rope_low_freq_factor=scale,
            rope_high_freq_factor=scale, rope_original_max_pos=size, max_seq_len=size,
            sigmoid_bias=v.real(), gated_attention=flag, num_sink_tokens=count,
            sliding_window=count, mla_kv_lora_rank=count, mla_q_lora_rank=count,
            mla_qk_nope_dim=count, mla_qk_rope_dim=count, mla_v_dim=count,
            register_depth=count, mtp_depth=count)
        if self.register_depth and self.sliding_window:
            raise ValueError("register tokens see their anchor's context; a model sliding_window "
                             "would cut it differently: use sliding_window=0 with registers")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not divisible by "
                             f"num_kv_heads={self.num_kv_heads}")
        if self.head_dim < 0:
            raise ValueError(f"head_dim must be >= 0 (0 = dim // num_heads), got {self.head_dim}")
        if self.head_dim == 0 and self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}; "
                             "set head_dim explicitly")
        if self.head_size % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_size}")
        if self.rope_scaling not in ROPE_SCALINGS:
            raise ValueError(f"unknown rope_scaling {self.rope_scaling!r}; "
                             f"expected one of {ROPE_SCALINGS}")
        if self.rope_scaling == "llama3" and self.rope_high_freq_factor <= \
                self.rope_low_freq_factor:
            raise ValueError("llama3 RoPE needs rope_high_freq_factor > rope_low_freq_factor, "
                             f"got {self.rope_high_freq_factor} <= {self.rope_low_freq_factor}")
        if self.attention not in ATTENTION_VARIANTS:
            raise ValueError(f"unknown attention variant {self.attention!r}; "
                             f"expected one of {ATTENTION_VARIANTS}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"unknown attention_impl {self.attention_impl!r}; "
                             f"expected one of {ATTENTION_IMPLS}")
        if self.train_attention not in TRAIN_ATTENTION:
            raise ValueError(f"unknown train_attention {self.train_attention!r}; "
                             f"expected one of {TRAIN_ATTENTION}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError("compute_dtype must be float32 or bfloat16, got "
                             f"{self.compute_dtype!r}")
        if self.attention_impl == "cudnn" and (self.compute_dtype != "bfloat16" or self.use_mla):
            raise ValueError("attention_impl='cudnn' (cuDNN decode) needs compute_dtype="
                             "'bfloat16' and no MLA, got compute_dtype="
                             f"{self.compute_dtype!r}, mla_kv_lora_rank={self.mla_kv_lora_rank}")
        self._check_mla()

    def _check_mla(self):
        if not self.use_mla:
            return
        dims = dict(mla_qk_nope_dim=self.mla_qk_nope_dim, mla_qk_rope_dim=self.mla_qk_rope_dim,
                    mla_v_dim=self.mla_v_dim)
        for name, val in dims.items():
            if val < 1:
                raise ValueError(f"MLA needs {name} >= 1, got {val}")
        if self.mla_qk_rope_dim % 2:
            raise ValueError(f"RoPE needs an even mla_qk_rope_dim, got {self.mla_qk_rope_dim}")
        if self.mla_impl not in MLA_IMPLS:
            raise ValueError(f"unknown mla_impl {self.mla_impl!r}; expected one of {MLA_IMPLS}")
        if self.gated_attention:
            raise ValueError("MLA supports no gated_attention")
        if self.attention_impl == "pallas" and (self.attention, self.mla_impl) != ("softmax",
                                                                                "absorb"):
            raise ValueError("attention_impl='pallas' decodes MLA through the absorbed MLA "
                             "kernel: it needs attention='softmax' and mla_impl='absorb', got "
                             f"attention={self.attention!r}, mla_impl={self.mla_impl!r}")

    @property
    def head_size(self) -> int:
        return self.head_dim or self.dim // self.num_heads

    @property
    def use_mla(self) -> bool:
        return self.mla_kv_lora_rank > 0

    @property
    def cache_dims(self) -> tuple[int, int, int, int]:
        """``(kv_heads, q_heads, key_dim, value_dim)`` of one layer's cache; MLA caches one
        latent head (keys = the shared RoPE key, values = the latent) read by every query."""
        if self.use_mla:
            return 1, 1, self.mla_qk_rope_dim, self.mla_kv_lora_rank
        return self.num_kv_heads, self.num_heads, self.head_size, self.head_size

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
