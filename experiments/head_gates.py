"""Per-model head scores for the head-wise specs (``duo``, ``headkv``, ``razor``).

    python -m experiments.head_gates --config=configs/head_gates.py:smoke --workdir=runs/gates

From our own held-out text (nothing downloaded), for the checkpoint ``config.model``:
  duo_proxy.json  DuoAttention gates from kvpress's cheap proxy (``head_patterns``)
  razor.json      RazorAttention retrieval heads (1/0) from induction / echo scores on
                  repeated random blocks (top 14% / 1%)
  duo_gates.json  DuoAttention's optimised gates (``duo_optimise``) on passkey prompts, when
                  ``config.steps > 0``
Each file is ``lcache.cache.duo.save_gates``'s format; load one with
``duo.load_gates(path, num_layers=, num_kv_heads=)`` and pass it as ``head_scores`` to
``registry.build`` / ``eval.policy_for_prompts``.
"""

from __future__ import annotations

from experiments.common import cli
from lcache.analysis.head_gates import write_head_gates


def run(c, workdir: str) -> dict:
    """``lcache.analysis.head_gates.write_head_gates`` into ``workdir``."""
    return write_head_gates(c, workdir)


if __name__ == "__main__":
    cli(run, "configs/head_gates.py:smoke")
