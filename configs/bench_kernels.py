"""Kernel benchmark (``experiments/bench_kernels.py``): decode bf16 / quantized / MLA, prefill.

    python -m experiments.bench_kernels --config=configs/bench_kernels.py:smoke --workdir=DIR
    python -m experiments.bench_kernels --config=configs/bench_kernels.py:default --workdir=DIR

Variants: smoke (CPU, interpreted kernels, tiny shapes, < 1 min), default (one GPU: B in
{1, 8, 32} x context in {4K, 32K, 128K}, 32 q / 8 kv heads, D=128, few sweeps; < 4 min),
explore (default's rows plus wide sweeps of the kernels' tiling: the data the defaults are
chosen from), final (bf16 decode at the nine shapes and quantized decode at four, no sweeps:
the second run of a session, with ``--check``, in ~1 min of timing). Args after the variant:
ops=<decode+quant+mla+prefill subset, '+'-separated>, sweep=<bool>. Anything else:
--config.key=value.
"""

from configs.common import parse_arg

try:
    from ml_collections import ConfigDict
except ImportError:  # the GPU image has no ml_collections: a plain attribute dict will do

    class ConfigDict(dict):
        __getattr__ = dict.__getitem__
        __setattr__ = dict.__setitem__

OPS = ("decode", "quant", "mla", "prefill")
VARIANTS = ("smoke", "default", "explore", "final")

# quantized decode (``quant_decode_gpu`` arguments) swept at ``sweep_shape``; the fastest is
# used for every later quantized row. The first is the kernel's default.
QUANT_DEFAULT = ({},)
QUANT_EXPLORE = (
    {}, dict(dequant="jnp"), dict(block_k=32), dict(block_k=32, num_stages=3),
    dict(num_stages=3), dict(block_k=128), dict(num_warps=8), dict(block_k=128, num_warps=8),
    dict(block_k=32, num_warps=2), dict(dequant="jnp", block_k=32, num_stages=3))
# bf16 decode (``decode_attention_gpu`` arguments) swept at the worst shapes
DECODE_EXPLORE = (dict(num_warps=8), dict(num_stages=3), dict(block_k=64, num_stages=3),
                  dict(block_k=64, num_stages=4), dict(block_k=64, num_warps=8, num_stages=3))


def get_config(arg: str = "smoke") -> ConfigDict:
    a = parse_arg(arg, variant="smoke", ops="+".join(OPS), sweep=True)
    v = a["variant"]
    if v not in VARIANTS:
        raise ValueError(f"unknown bench variant {v!r}; expected one of {VARIANTS}")
    ops = tuple(o for o in a["ops"].split("+") if o)
    if set(ops) - set(OPS):
        raise ValueError(f"unknown ops {sorted(set(ops) - set(OPS))}; expected a subset of {OPS}")
    smoke, explore, final = v == "smoke", v == "explore", v == "final"
    c = ConfigDict()
    c.ops = ("decode", "quant") if final else ops
    c.interpret = smoke  # Pallas kernels interpreted (CPU)
    c.batches = (2,) if smoke else (1, 8, 32)
    c.contexts = (200,) if smoke else (4096, 32768, 131072)
    c.hq, c.hkv, c.d = (4, 2, 64) if smoke else (32, 8, 128)
    c.dtype = "float32" if smoke else "bfloat16"
    c.iters = 1 if smoke else 3  # timed measurements per row (median)
    c.calls = 1 if smoke else 4  # kernel calls per executable (distinct queries)
    c.copy_bytes = (16 << 20) if smoke else (4 << 30)
    c.mem_fraction = 0.8  # of the device's memory a shape may use; larger ones are skipped
    c.time_budget_s = 1e9 if smoke else {"explore": 150.0, "final": 70.0}.get(v, 200.0)
    c.xla_max_tokens = 512 if smoke else 32768  # XLA references only up to this B * context
    c.sweep_shape = (2, 200) if smoke else (8, 32768)  # quant / MLA variants are swept here
    # rows run in priority order (Bench.tasks) until time_budget_s: the target rows (bf16 /
    # int4 / MLA decode, prefill), then int8/int2, sweeps (sweep=True: bf16 splits and tiles
    # at the sweep_worst shapes of lowest pallas/cudnn ratio; MLA and prefill tiles), 16-head
    # MLA and the XLA references
    c.sweep = a["sweep"] and not final
    c.sweep_worst = 1 if smoke else (4 if explore else 2)
    c.sweeps_early = explore  # bf16 sweeps right after the quant sweep, before the other rows
    c.split_factors = (0.5,) if smoke else (0.5, 2.0)
    c.decode_variants = DECODE_EXPLORE[:1] if smoke else (DECODE_EXPLORE if explore else ())
    # quantized decode: KIVI bits; group, residual ring and sinks as lcache's defaults
    c.quant_bits = (4,) if smoke else (8, 4, 2)
    c.quant_shapes = ((1, 32768), (8, 32768), (8, 131072), (32, 32768)) if final else ()
    # --check's small cases (large ones: every kernel): final re-checks what changed since
    # the explore run (decode's plan; prefill, not reached there)
    c.check_ops = ("decode", "prefill") if final else OPS
    c.check_dequant = ("asm", "jnp")  # quantized small cases on a GPU
    c.quant_variants = (QUANT_EXPLORE if explore else QUANT_DEFAULT) if not smoke else (
        {}, dict(block_k=64))
    c.quant_group = 32
    c.quant_residual = 32 if smoke else 128
    c.quant_sinks = 4
    # MLA absorbed decode (DeepSeek-V3 latent sizes)
    c.mla_heads = (4,) if smoke else (16, 128)
    c.mla_dc, c.mla_dr = (64, 16) if smoke else (512, 64)
    c.mla_block_h = () if smoke else ((16, 64) if explore else ())  # default: 32
    # prefill (causal, GQA) with SnapKV observation scores; shapes capped by FLOPs
    c.prefill_shapes = ((1, 64),) if smoke else ((1, 4096), (8, 4096), (1, 32768), (2, 32768))
    c.prefill_sweep = (1, 32768)  # the shape where prefill_blocks are swept
    c.prefill_window = 8 if smoke else 32
    c.prefill_blocks = ((32, 16, 4, 2),) if smoke else (
        (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 64, 8, 2), (128, 64, 4, 3))
    return c
