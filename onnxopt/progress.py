"""A minimal progress line on stderr, shown only on a TTY and when not quiet."""

from __future__ import annotations

import sys
import time


class Progress:
    """``with Progress(total, "calibrating") as bar: bar.advance()`` - redraws at most 10x a second."""

    enabled_default = False  # the CLI turns this on for TTYs unless -q

    def __init__(self, total: int, desc: str, enabled: bool | None = None):
        self.total = max(total, 0)
        self.desc = desc
        self.done = 0
        self.enabled = (self.enabled_default and sys.stderr.isatty()) if enabled is None else enabled
        self._last = 0.0
        self._start = time.perf_counter()

    def __enter__(self) -> Progress:
        self._draw(force=True)
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < 0.1 and self.done < self.total:
            return
        self._last = now
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * 20)
        sys.stderr.write(f"\r{self.desc:<28} [{bar:<20}] {self.done}/{self.total} {now - self._start:5.1f}s")
        sys.stderr.flush()

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._draw(force=True)
            sys.stderr.write("\r" + " " * 80 + "\r")
            sys.stderr.flush()
