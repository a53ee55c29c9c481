"""Attention-sink analysis of trained checkpoints (algorithms.md §10).

    python -m experiments.sinks --config=configs/sinks.py:default --workdir=runs/sinks

For every checkpoint: N held-out sequences of T tokens, BOS first (windows of the stdlib held-out
split, or fresh samples for a Bigram-Backcopy model), one ``Transformer.analyze`` pass, weights of
non-softmax variants turned into Gu et al.'s proxy scores ``w / Σ_row w``, then per (layer, head)
the sink rate (``α_k > ε``), first-token share and value norms of the sink vs the other tokens.
A model with K learnable sink tokens is analysed twice: with the sink token as "the first token"
(variant ``name``) and with BOS, the first text token (``name@bos``, the map cut at BOS).

Writes to ``--workdir``:
  sinks.csv           variant,layer,head,sink_rate,first_token_share,sink_value_norm,
                      other_value_norm (value norms of the KV head that the query head reads)
  summary.csv         per variant: held-out loss / ppl measured here on the analysed tokens,
                      steps, tokens seen, sink rate % (with a bootstrap 95% interval over the
                      sequences; on the raw weights; on sink tokens + BOS merged into one key),
                      first-token share, value norms, largest |hidden|
  massive.csv         per layer: largest and median |hidden|, where the largest sits
  top_sinks.csv       distributed sinks: key positions >= 1 and token ids with ``α > ε``
  backcopy_heads.csv  Bigram-Backcopy models: per head, first-token share at trigger queries
                      (active: must copy) vs other queries (dormant) and attention on the copy
                      source
  *.png               sink map and value norms per variant; first-token share and largest
                      |hidden| per layer of all variants; backcopy active/dormant maps
"""

from __future__ import annotations

import csv
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from lcache.analysis import (
    first_token_share,
    massive_activations,
    plots,
    sink_map,
    sink_scores,
    top_sink_tokens,
    value_drain,
)
from lcache.attention.variants import proxy_scores
from lcache.checkpoint import load_model
from lcache.data import BigramBackcopy, list_files, load_tokens, sample_batch, split_files
from lcache.eval import Engine

_CONFIG = config_flags.DEFINE_config_file("config", "configs/sinks.py:smoke")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory", required=True)

SINKS_COLUMNS = ("variant", "layer", "head", "sink_rate", "first_token_share",
                 "sink_value_norm", "other_value_norm")


# -- inputs ------------------------------------------------------------------------------------
def parse_checkpoints(spec: str) -> list[tuple[str, str]]:
    """``"a=dir1,b=dir2"`` or a lone ``"dir"`` -> ``[(name, dir)]``; a lone dir is named after
    its folder (the run folder for ``.../run/model``)."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ValueError("config.checkpoints is empty")
    if len(parts) == 1 and "=" not in parts[0]:
        path = os.path.normpath(parts[0])
        if os.path.basename(path) == "model":
            path = os.path.dirname(path)
        return [(os.path.basename(path) or "model", parts[0])]
    out = []
    for part in parts:
        name, sep, directory = part.partition("=")
        if not (sep and name and directory) or "@" in name:
            raise ValueError(f"bad checkpoint entry {part!r}: expected name=dir, no '@' in name")
        out.append((name, directory))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate checkpoint names in {names}")
    return out


def check_config(c) -> None:
    if not 0.0 < c.eps < 1.0:
        raise ValueError(f"eps must lie in (0, 1), got {c.eps}")
    if c.num_sequences < 1 or c.seq_len < 2:
        raise ValueError(f"need num_sequences >= 1 and seq_len >= 2, got {c.num_sequences} "
                         f"and {c.seq_len}")


def load(name: str, directory: str):
    """``load_model`` with the checkpoint's name in the error."""
    try:
        return load_model(directory)
    except (ValueError, TypeError, OSError) as e:
        raise ValueError(f"checkpoint {name!r} ({directory}): {e}") from e


def sequences(c, model, tokenizer, meta, heldout: dict):
    """-> ``(tokens [N, T+1] int32, BOS first; task or None; where they come from)``.
    Inputs are ``tokens[:, :-1]``."""
    rng = np.random.default_rng([c.seed, 7])
    if meta.get("data", {}).get("task") == "backcopy":
        task = BigramBackcopy(vocab_size=model.cfg.vocab_size - 1, **c.backcopy.to_dict())
        # fresh samples: training drew from default_rng([seed, step]), held-out from 10**9
        tokens = task.sample(np.random.default_rng([10**9 + 1, c.seed]), c.num_sequences,
                             c.seq_len + 1)
        return tokens, task, "fresh Bigram-Backcopy samples"
    if tokenizer is None:
        raise ValueError("a text checkpoint needs its tokenizer files")
    key = tokenizer.fingerprint
    if key not in heldout:
        _, files = split_files(list_files(c.corpus_path), c.heldout_fraction)
        ids = load_tokens(files, tokenizer)
        heldout[key] = ids, f"held-out split here: {len(files)} files, {ids.size} tokens"
    ids, where = heldout[key]
    return sample_batch(ids, c.num_sequences, c.seq_len, rng, tokenizer.bos_id), None, where


def token_label(tok_id: int, bos_id: int, tokenizer=None, task=None) -> str:
    if tok_id < 0:
        return "<sink>"
    if tok_id == bos_id:
        return "<bos>"
    if task is not None:
        return f"t{tok_id}" + (" (trigger)" if tok_id in task.trigger_ids else "")
    if tokenizer.kind == "byte" and tok_id < 256:
        return repr(chr(tok_id))
    return repr(tokenizer.decode([tok_id]))


# -- one model ---------------------------------------------------------------------------------
def run_model(model, tokens_in):
    """``analyze`` -> numpy, sample axis first: ``attn [N, L, H, S, S]`` (proxy scores for
    non-softmax variants), ``raw`` (the variant's weights), ``values [N, L, Hkv, S, D]``,
    ``hidden [N, L+1, S, dim]``, ``logits [N, T, V]``; ``S = K + T``."""
    out = Engine.create(model).analyze(tokens_in)
    raw = out["weights"]
    attn = raw if model.cfg.attention == "softmax" else np.asarray(proxy_scores(raw), np.float32)
    return dict(attn=attn, raw=raw, values=out["values"], hidden=out["hidden"],
                logits=out["logits"])


def mean_nll(logits_NTV, targets_NT) -> float:
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits_NTV), axis=-1))
    return float(-np.take_along_axis(logp, targets_NT[..., None], axis=-1).mean())


def head_rows(label: str, attn, values, eps: float):
    """Per (layer, head) rows of ``sinks.csv`` for key 0 of ``attn [N, L, H, S, S]``."""
    smap, share = sink_map(attn, eps), first_token_share(attn)
    drain = value_drain(values, sinks=0)
    group = attn.shape[2] // values.shape[2]
    rows = [dict(variant=label, layer=layer, head=head, sink_rate=smap[layer, head],
                 first_token_share=share[layer, head],
                 sink_value_norm=drain.sink_norm[layer, head // group],
                 other_value_norm=drain.other_norm[layer, head // group])
            for layer in range(smap.shape[0]) for head in range(smap.shape[1])]
    return rows, smap, share, drain


def bootstrap_pct(attn, eps: float, seed: int, draws: int = 1000) -> tuple[float, float]:
    """95% interval (%) of the sink rate over resampled sequences: sampling noise of the N
    sequences only, not of training (one seed per variant)."""
    per_seq = (sink_scores(attn)[..., 0] > eps).mean(axis=(1, 2))  # [N]
    idx = np.random.default_rng(seed).integers(0, len(per_seq), (draws, len(per_seq)))
    lo, hi = np.percentile(per_seq[idx].mean(axis=1), [2.5, 97.5])
    return 100 * lo, 100 * hi


def prefix_sink_rate_pct(attn, k_sinks: int, eps: float) -> float:
    """% of (sample, layer, head) in which the K sink tokens and BOS, merged into one key, get
    mean attention ``> eps`` from the queries from BOS on (= the sink rate when K = 0)."""
    merged = attn[..., k_sinks:, :k_sinks + 1].sum(axis=-1)  # [N, L, H, T]
    return 100 * float((merged.mean(axis=-1) > eps).mean())


def distributed_sinks(label, attn, ids, c, label_of) -> list[dict]:
    """Top ``c.top_sinks`` key positions >= 1 and token ids (seen >= ``c.top_sinks_min_count``
    times) with ``α > ε``; keys seen by fewer than ``c.top_sinks_min_queries`` queries are
    skipped (a local head makes any late key look like a sink)."""
    found = top_sink_tokens(attn, ids, c.eps, top=attn.shape[-1] * 8,
                            min_queries=c.top_sinks_min_queries)
    rows = [dict(variant=label, kind="position", key=p.position, rate=p.rate,
                 detail=" ".join(label_of(i) for i in p.token_ids[:8]))
            for p in found.positions[:c.top_sinks]]
    frequent = [t for t in found.token_ids if t.count >= c.top_sinks_min_count]
    return rows + [dict(variant=label, kind="token", key=label_of(t.token_id), rate=t.rate,
                        detail=f"{t.count} occurrences") for t in frequent[:c.top_sinks]]


def backcopy_rows(label: str, attn, tokens_in, task):
    """Active vs dormant heads: mean ``A[t, 0]`` over queries ``t >= 1`` whose token is a
    trigger (the next token copies ``x[t-1]``) vs the others, and mean ``A[t, t-1]`` at triggers.
    """
    trig = np.isin(tokens_in[:, 1:], task.trigger_ids)[:, None, None, :]  # [N, 1, 1, T-1]
    first = attn[..., 1:, 0]  # [N, L, H, T-1]
    prev = np.diagonal(attn, offset=-1, axis1=-2, axis2=-1)  # A[t, t-1], t = 1..T-1

    def mean_where(x, m):
        m = np.broadcast_to(m, x.shape)
        return (x * m).sum(axis=(0, 3)) / np.maximum(m.sum(axis=(0, 3)), 1)

    at_trig, at_other, copy = (mean_where(first, trig), mean_where(first, ~trig),
                               mean_where(prev, trig))
    return [dict(variant=label, layer=layer, head=head, share_trigger=at_trig[layer, head],
                 share_other=at_other[layer, head], copy_share=copy[layer, head])
            for layer in range(at_trig.shape[0]) for head in range(at_trig.shape[1])]


def massive_rows(name: str, hidden, ids, label_of) -> list[dict]:
    """Per layer of ``hidden [N, L+1, S, dim]``: largest and median |h|, where the largest sits."""
    mass = massive_activations(hidden)
    return [dict(variant=name, layer=layer, max_abs=mass.max_abs[layer],
                 median_abs=mass.median_abs[layer], ratio=mass.ratio[layer],
                 position=mass.position[layer], channel=mass.channel[layer],
                 token=label_of(ids[mass.sample[layer], mass.position[layer]]))
            for layer in range(len(mass.max_abs))]


def analyse(name: str, directory: str, c, heldout: dict) -> dict:
    """Every table row and plot series of one checkpoint."""
    model, tokenizer, meta = load(name, directory)
    tokens, task, where = sequences(c, model, tokenizer, meta, heldout)
    inputs = tokens[:, :-1]
    r = run_model(model, inputs)
    k_sinks = model.cfg.num_sink_tokens
    bos = tokenizer.bos_id if task is None else task.bos_id
    label_of = lambda i: token_label(int(i), bos, tokenizer, task)
    ids = np.concatenate([np.full((len(inputs), k_sinks), -1), inputs], axis=1)  # -1 = sink
    massive = massive_rows(name, r["hidden"], ids, label_of)
    peak = max(massive, key=lambda row: row["max_abs"])
    loss = mean_nll(r["logits"], tokens[:, 1:])
    out = dict(name=name, heads=[], summary=[], massive=massive, top=[], backcopy=[], maps={},
               drains={}, shares={}, max_abs=[row["max_abs"] for row in massive])
    for label, k in [(name, 0)] + ([(f"{name}@bos", k_sinks)] if k_sinks else []):
        attn, raw = r["attn"][..., k:, k:], r["raw"][..., k:, k:]
        rows, smap, share, drain = head_rows(label, attn, r["values"][..., k:, :], c.eps)
        lo, hi = bootstrap_pct(attn, c.eps, c.seed)
        out["heads"] += rows
        out["maps"][label], out["drains"][label] = smap, drain
        out["shares"][label] = share.mean(axis=1)
        out["summary"].append(dict(
            variant=label, checkpoint=directory, attention=model.cfg.attention,
            gated=model.cfg.gated_attention, sink_tokens=k_sinks,
            first_token="<sink>" if k < k_sinks else label_of(bos),
            task="text" if task is None else "backcopy", eval_data=where,
            steps=meta.get("steps", ""),
            tokens_seen=meta.get("tokens_seen", ""),
            train_tokens=meta.get("data", {}).get("train_tokens", ""),
            train_heldout_tokens=meta.get("data", {}).get("heldout_tokens", ""),
            train_heldout_loss=meta.get("heldout_loss", ""), heldout_loss=loss,
            heldout_ppl=np.exp(loss), sink_rate_pct=100 * smap.mean(), sink_rate_lo_pct=lo,
            sink_rate_hi_pct=hi, raw_sink_rate_pct=100 * sink_map(raw, c.eps).mean(),
            prefix_sink_rate_pct=prefix_sink_rate_pct(r["attn"], k_sinks, c.eps),
            first_token_share=share.mean(), sink_value_norm=np.nanmean(drain.sink_norm),
            other_value_norm=np.nanmean(drain.other_norm), max_activation=peak["max_abs"],
            max_layer=peak["layer"], max_token=peak["token"],
            max_over_median=peak["ratio"]))
        out["top"] += distributed_sinks(label, attn, ids[:, k:], c, label_of)
        if task is not None:
            out["backcopy"] += backcopy_rows(label, attn, inputs, task)
    return out


# -- outputs -----------------------------------------------------------------------------------
def write_csv(path: str, rows: list[dict], columns=None) -> None:
    columns = list(columns or (rows[0] if rows else []))
    fmt = lambda v: f"{v:.6g}" if isinstance(v, float | np.floating) else v
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: fmt(row[k]) for k in columns} for row in rows)


def padded(series: dict) -> dict:
    """Per-layer series of different lengths -> NaN-padded to the longest (gaps in the plot)."""
    n = max(len(v) for v in series.values())
    return {k: np.pad(np.asarray(v, float), (0, n - len(v)), constant_values=np.nan)
            for k, v in series.items()}


def write_plots(results: list[dict], workdir: str, eps: float) -> None:
    shares, max_abs = {}, {}
    for res in results:
        max_abs[res["name"]] = res["max_abs"]
        for label, smap in res["maps"].items():
            stem = label.replace("@", "_")
            plots.plot_sink_map(smap, os.path.join(workdir, f"sink_map_{stem}.png"),
                                f"{label}: sink rate (ε = {eps})")
            drain = res["drains"][label]
            plots.plot_value_norms(drain.sink_norm, drain.other_norm,
                                   os.path.join(workdir, f"value_norms_{stem}.png"),
                                   f"{label}: ‖v‖ of the first token vs the others")
            shares[label] = res["shares"][label]
        for label in {row["variant"] for row in res["backcopy"]}:
            rows = [row for row in res["backcopy"] if row["variant"] == label]
            heads = 1 + max(row["head"] for row in rows)
            for key, what in (("share_trigger", "trigger queries (active)"),
                              ("share_other", "other queries (dormant)")):
                grid = np.array([row[key] for row in rows]).reshape(-1, heads)
                plots.plot_sink_map(grid, os.path.join(workdir, f"backcopy_{key}_{label}.png"),
                                    f"{label}: A[t, 0] at {what}")
    plots.plot_first_token_share(padded(shares), os.path.join(workdir, "first_token_share.png"))
    plots.plot_lines(np.arange(max(len(v) for v in max_abs.values())), padded(max_abs),
                     os.path.join(workdir, "massive_activations.png"), "layer (0 = embeddings)",
                     "largest |h|", "massive activations", logy=True)


def run(c, workdir: str) -> list[dict]:
    """Analyse every checkpoint of ``c.checkpoints``; writes ``workdir``; returns the summary."""
    check_config(c)
    checkpoints = parse_checkpoints(c.checkpoints)
    os.makedirs(workdir, exist_ok=True)
    heldout: dict = {}
    results = []
    for name, directory in checkpoints:
        logging.info("analysing %s (%s)", name, directory)
        results.append(analyse(name, directory, c, heldout))
    gather = lambda key: [row for res in results for row in res[key]]
    write_csv(os.path.join(workdir, "sinks.csv"), gather("heads"), SINKS_COLUMNS)
    write_csv(os.path.join(workdir, "summary.csv"), gather("summary"))
    write_csv(os.path.join(workdir, "massive.csv"), gather("massive"))
    write_csv(os.path.join(workdir, "top_sinks.csv"), gather("top"),
              ("variant", "kind", "key", "rate", "detail"))
    if gather("backcopy"):
        write_csv(os.path.join(workdir, "backcopy_heads.csv"), gather("backcopy"))
    write_plots(results, workdir, c.eps)
    return gather("summary")


def main(argv):
    del argv
    for row in run(_CONFIG.value, _WORKDIR.value):
        print(f"{row['variant']:>16}  loss {row['heldout_loss']:.4f}  sink rate "
              f"{row['sink_rate_pct']:6.2f}%  first-token share {row['first_token_share']:.3f}  "
              f"max |h| {row['max_activation']:.1f} (layer {row['max_layer']})")


if __name__ == "__main__":
    app.run(main)
