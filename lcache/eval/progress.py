"""A one-line progress bar on stderr for long evaluations (the RULER suite's cells, the demo's
runs): steps done of a known total, elapsed seconds and an estimate of the seconds left (the mean
step time so far times the steps left; rough when steps differ in cost)."""

from __future__ import annotations

import shutil
import sys
import time


class Progress:
    """``Progress(total, label)``, then ``step(note)`` after each of the ``total`` steps: redraws
    the bar in place (a carriage return, cut to the terminal's width so it never wraps; a
    newline after the last step)."""

    def __init__(self, total: int, label: str = "steps"):
        self.total, self.label, self.done, self.start = total, label, 0, time.perf_counter()

    def step(self, note: str = "") -> None:
        self.done += 1
        spent = time.perf_counter() - self.start
        left = spent / self.done * (self.total - self.done)
        bar = "#" * int(20 * self.done / self.total)
        line = (f"[{bar:<20}] {self.done}/{self.total} {self.label} {spent:.0f}s, "
                f"~{left:.0f}s left  {note}")
        width = shutil.get_terminal_size().columns - 1
        sys.stderr.write(f"\r{line[:width]:<{width}}")
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()
