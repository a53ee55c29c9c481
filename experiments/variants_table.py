"""Markdown tables from an ``experiments/sinks.py`` workdir, next to the published sink rates.

    python -m experiments.variants_table --workdir=runs/sinks

Prints the per-variant table (``summary.csv``), per-layer tables of the sink rate and the value
norm of the first token over that of the others (``sinks.csv``, means over heads) and of the
largest |hidden| (``massive.csv``) and, for Bigram-Backcopy models, the per-head active/dormant
table (``backcopy_heads.csv``). Published numbers (ε = 0.3, first token) come from
algorithms.md §10: Gu et al. 2025 Table 6 and §7 (60M LLaMA-style, 5B tokens) and Softpick
(Zuhri et al. 2025) Table 3 (340M, 10k steps).
"""

from __future__ import annotations

import csv
import os

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "an experiments/sinks.py workdir", required=True)

# (attention, gated, learnable sink tokens, analysed first token is a sink token) -> published
PUBLISHED = {
    ("softmax", False, False, False): "18.18 (Gu T6) · 34.89 (Softpick T3)",
    ("sigmoid", False, False, False): "0.44 (Gu T6, sigmoid w/o norm.)",
    ("softmax", True, False, False): "2.00 (Softpick T3, gated)",
    ("off_by_one", False, False, False): "16.36 (Softpick T3, softmax+1)",
    ("sink_logit", False, False, False): "8.78 (Softpick T3, gpt-oss sink)",
    ("softpick", False, False, False): "0.00 (Softpick T3)",
    ("softmax", False, True, True): "73.34 on the learned K/V bias (Gu §7, ≈ sink token)",
    ("softmax", False, True, False): "0.00 on token 1 with a K/V bias (Gu §7)",
}


def read(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def published(row: dict) -> str:
    if row["task"] != "text":
        return "—"
    key = (row["attention"], row["gated"] == "True", int(row["sink_tokens"]) > 0,
           row["first_token"] == "<sink>")
    return PUBLISHED.get(key, "—")


def summary_table(rows: list[dict]) -> str:
    head = ("| variant | first token | steps | tokens (M) | held-out loss / ppl here (T=64) "
            "| held-out loss at training (T=512) | sink rate % (95% CI) | raw-weight sink rate % "
            "| sink tokens + BOS merged: sink rate % "
            "| first-token share | max abs h (layer, token) | published sink rate % |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        f = lambda k, p=3, r=r: f"{float(r[k]):.{p}f}"
        lines.append(
            f"| {r['variant']} | `{r['first_token']}` | {r['steps']} "
            f"| {int(r['tokens_seen']) / 1e6:.1f} | {f('heldout_loss')} / {f('heldout_ppl')} "
            f"| {f('train_heldout_loss')} | {f('sink_rate_pct', 2)} ({f('sink_rate_lo_pct', 1)}"
            f"–{f('sink_rate_hi_pct', 1)}) | {f('raw_sink_rate_pct', 2)} "
            f"| {f('prefix_sink_rate_pct', 2)} "
            f"| {f('first_token_share')} | {f('max_activation', 2)} ({r['max_layer']}, "
            f"`{r['max_token']}`) | {published(r)} |")
    return "\n".join(lines)


def per_layer_table(rows: list[dict], cell, title: str) -> str:
    """One line per variant, one column per layer; ``cell(rows of a layer) -> str``."""
    by = {}
    for r in rows:
        by.setdefault(r["variant"], {}).setdefault(int(r["layer"]), []).append(r)
    n = max(len(layers) for layers in by.values())
    lines = [f"| {title} | " + " | ".join(f"layer {i}" for i in range(n)) + " |",
             "|---|" + "---|" * n]
    for variant, layers in by.items():
        cells = [cell(layers[i]) if i in layers else "" for i in range(n)]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean(rows: list[dict], key: str) -> float:
    return sum(float(r[key]) for r in rows) / len(rows)


def backcopy_table(rows: list[dict]) -> str:
    lines = ["| variant | layer | head | A[t,0] at trigger queries | A[t,0] at other queries "
             "| A[t,t-1] at trigger queries |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['layer']} | {r['head']} | {float(r['share_trigger']):.3f} "
              f"| {float(r['share_other']):.3f} | {float(r['copy_share']):.3f} |" for r in rows]
    return "\n".join(lines)


def main(argv):
    del argv
    workdir = _WORKDIR.value
    print(summary_table(read(os.path.join(workdir, "summary.csv"))))
    heads = read(os.path.join(workdir, "sinks.csv"))
    for cell, title in (
            (lambda rs: f"{100 * mean(rs, 'sink_rate'):.1f}", "sink rate % by layer"),
            (lambda rs: f"{mean(rs, 'sink_value_norm') / mean(rs, 'other_value_norm'):.2f}",
             "‖v‖ first token / others")):
        print()
        print(per_layer_table(heads, cell, title))
    print()
    print(per_layer_table(
        read(os.path.join(workdir, "massive.csv")),
        lambda rs: f"{float(rs[0]['max_abs']):.2f} ({float(rs[0]['ratio']):.0f}×)"
                   + ("*" if rs[0]["token"] == "<bos>" else ""),
        "max abs h (× median), * = on BOS"))
    path = os.path.join(workdir, "backcopy_heads.csv")
    if os.path.exists(path):
        print()
        print(backcopy_table(read(path)))


if __name__ == "__main__":
    app.run(main)
