"""Result tables: CSV files and markdown, from rows of dicts with the same keys."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence


def write_csv(path: str, rows: Sequence[dict]) -> str:
    """Rows -> CSV at ``path`` (folders created; columns from the first row) -> ``path``."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def markdown(rows: Sequence[dict], floats: str = "{:.3f}") -> str:
    """Rows -> a markdown table, floats formatted with ``floats``."""
    if not rows:
        raise ValueError("no rows for a markdown table")

    def cell(v):
        return floats.format(v) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(cell(v) for v in r.values()) + " |" for r in rows]
    return "\n".join(lines)
