"""Split-K planning shared by the GPU decode kernels (bf16, quantized, MLA).

A decode kernel runs ``heads * splits`` programs, each streaming ``nb`` KV blocks and writing a
partial ``(m, den, acc)`` that a small merge step reads back. Too few programs leave SMs idle;
too many pay a fixed cost each and more partial traffic. ``split_cost`` models the time of a
split count and ``auto_num_splits`` minimises it.
"""

from __future__ import annotations

from pallas_kernels.gpu_common import DEFAULT_NUM_SMS, cdiv

# Streaming rate of one SM with k resident programs, as a fraction of its share of the chip's
# bandwidth. H200 decode, jax 0.11.2 (docs/bench/decode_bench_h200.json): 128 programs on 132
# SMs (one each) streamed at 2.9 TB/s, 256 programs (two per SM) at 4.25 TB/s.
SM_RATE = (0.70, 0.95, 1.0)
SMEM_BYTES = 227 << 10  # per SM, H100/H200


def occupancy(tile_bytes, num_stages=2, max_programs=4):
    """Programs resident per SM, bounded by shared memory: Triton keeps ``num_stages - 1``
    prefetched tiles plus ~8 KB (jax 0.11.2 IR compiled by triton 3.6 for sm_90: 72 KB at
    64 KB of K+V per block, i.e. 3 programs per SM; registers allow 4 at 114/thread)."""
    smem = max(1, num_stages - 1) * tile_bytes + (8 << 10)
    return max(1, min(max_programs, SMEM_BYTES // smem))


def split_cost(heads, nblocks, splits, sms=DEFAULT_NUM_SMS, occ=2, overhead_blocks=8.0,
               partial_blocks=0.25):
    """Modelled time, in KV-block streaming times of one SM, of ``splits`` splits.

    ``heads * splits`` programs of ``nb + overhead_blocks`` blocks each spread over ``sms``;
    the busiest SM runs ``ceil(P / sms)`` of them in rounds of ``occ`` resident programs
    (a round of ``k`` streams at ``SM_RATE[k]``), so a last round that leaves the SM
    under-occupied costs nearly a full round: H100, B = 32 at 32K, 3 resident per SM: 2 splits
    (512 programs, 1.3 rounds) ran 1674 us, 1 split 1510 us and 4 splits 1514 us
    (docs/bench/bench_kernels_h100_explore.csv). Each program's partial output (written, then
    read by the merge) costs ``partial_blocks`` blocks. The fixed cost of 8 blocks per program
    fits the B=1 sweeps (H200 partial run; H100 explore: 32K at 32 splits, 128K at 32).
    """
    nb = cdiv(nblocks, splits)
    programs = heads * cdiv(nblocks, nb)
    per_sm = cdiv(programs, sms)
    rate = lambda k: SM_RATE[min(k, len(SM_RATE)) - 1]  # noqa: E731
    rounds, rest = divmod(per_sm, occ)
    time = rounds * occ * (nb + overhead_blocks) / rate(occ)
    if rest:
        time += rest * (nb + overhead_blocks) / rate(rest)
    return time + partial_blocks * programs / sms


def auto_num_splits(heads, nblocks, sms=DEFAULT_NUM_SMS, overhead_blocks=8.0, max_splits=64,
                    occ=2, partial_blocks=0.25):
    """The split count minimising ``split_cost`` (ties: fewer splits).

    ``heads = B * Hkv`` programs per split. The model wants >= 2 resident programs per SM
    (e.g. B=8, Hkv=8 at 32K: 4 splits rather than 2) and no partial last wave; bench sweeps of
    ``num_splits`` (``experiments/bench_kernels.py``) are the data to re-fit ``SM_RATE`` with.
    """
    best, best_cost = 1, None
    for s in range(1, min(nblocks, max_splits) + 1):
        cost = split_cost(heads, nblocks, s, sms, occ, overhead_blocks, partial_blocks)
        if best_cost is None or cost < best_cost * (1 - 1e-6):
            best, best_cost = s, cost
    return best


def even_splits(nblocks, splits):
    """``(splits, blocks per split)`` with no empty split: ``splits`` recomputed from the
    per-split block count."""
    nb = cdiv(nblocks, max(1, min(splits, nblocks)))
    return cdiv(nblocks, nb), nb
