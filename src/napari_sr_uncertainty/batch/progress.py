"""A terminal progress bar over inputs (and over the blocks of a huge image): an updating line on a
terminal, a line every ~10 % otherwise (logs, CI)."""

from __future__ import annotations

import sys
import time


class Bar:
    """``done``/``total`` units (``total`` may grow: a batch learns a stack's planes when it opens it) and the
    number of failed inputs."""

    def __init__(self, total: int, unit: str = "inputs", stream=None, enabled: bool = True, width: int = 28):
        self.total, self.unit, self.width, self.enabled = max(int(total), 0), unit, width, enabled
        self.stream = stream or sys.stderr
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done = self.failed = 0
        self.start = time.perf_counter()
        self.last_decile = -1
        self.label = ""

    def update(self, done: int | None = None, failed: int | None = None, label: str = "") -> None:
        if done is not None:
            self.done = done
        if failed is not None:
            self.failed = failed
        self.label = label
        if not self.enabled:
            return
        frac = self.done / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        elapsed = time.perf_counter() - self.start
        eta = ""
        if 0 < self.done < self.total:
            eta = f", ~{elapsed / self.done * (self.total - self.done):.0f} s left"
        failed = f", {self.failed} failed input{'s' if self.failed > 1 else ''}" if self.failed else ""
        line = (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {self.unit}{failed}"
            f"  {elapsed:.1f} s{eta}  {label}"
        )
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(100) + ("\n" if self.done >= self.total else ""))
        else:
            decile = (10 * self.done) // max(self.total, 1)
            if decile == self.last_decile:
                return
            self.last_decile = decile
            self.stream.write(line.rstrip() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self.done < self.total:
            self.stream.write("\n")
            self.stream.flush()
