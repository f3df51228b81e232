"""Progress bars with ETA for the lab: one bar per experiment, fed by the experiment's loop over its jobs
(`progress.jobs(...)`) and by the training loop within a job (`progress.within(fraction)`).

Outside a `bar(...)` block both calls do nothing, so experiments run silently in tests.

Example:
    >>> with bar("E1 demo"):
    ...     for job in jobs(range(3)):
    ...         for step in range(10):
    ...             within((step + 1) / 10)
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

__all__ = ["bar", "jobs", "within", "Bar"]

_current: "Bar | None" = None


class Bar:
    """A text progress bar: done fraction = (finished jobs + fraction of the current one) / jobs."""

    def __init__(self, label: str, stream=None, width: int = 28, interval: float = 0.25):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.interval = interval
        self.total = 1
        self.done = 0
        self.fraction = 0.0
        self.start = time.perf_counter()
        self.last = -1e9
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.printed_tenths = -1

    def progress(self) -> float:
        return min(1.0, (self.done + min(self.fraction, 1.0)) / max(self.total, 1))

    def render(self, force: bool = False, final: bool = False) -> None:
        now = time.perf_counter()
        if self.tty and not force and now - self.last < self.interval:
            return
        self.last = now
        p = self.progress()
        elapsed = now - self.start
        eta = elapsed * (1 - p) / p if p > 0 else float("nan")
        filled = int(round(p * self.width))
        text = (f"{self.label:<34.34} [{'#' * filled}{'.' * (self.width - filled)}] {100 * p:5.1f}% "
                f"{elapsed:6.1f}s" + (f" ETA {eta:5.0f}s" if not final and eta == eta else ""))
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
            self.stream.flush()
        else:  # logs: one line per 10% (and at the end)
            tenths = int(p * 10)
            if final or tenths > self.printed_tenths:
                self.printed_tenths = tenths
                self.stream.write(text + "\n")
                self.stream.flush()


@contextmanager
def bar(label: str, stream=None):
    """Show a progress bar for the block (the runner wraps each experiment in one)."""
    global _current
    previous, _current = _current, Bar(label, stream)
    try:
        yield _current
        _current.done, _current.fraction = _current.total, 0.0
        _current.render(force=True, final=True)
    finally:
        _current = previous


def jobs(items):
    """Iterate over an experiment's jobs (settings x seeds), advancing the bar after each.

    An experiment may submit its jobs in stages (e.g. tuning runs, then the remaining seeds at the chosen rates):
    each stage adds its jobs to the bar's total, so the bar shows finished / submitted jobs of the experiment.
    """
    items = list(items)
    current = _current
    if current is not None:
        current.total = current.done + len(items)
        current.fraction = 0.0
        current.render(force=True)
    for item in items:
        yield item
        if current is not None:
            current.done += 1
            current.fraction = 0.0
            current.render()


def within(fraction: float) -> None:
    """Report how far the current job is (0..1); the training loop calls this."""
    if _current is not None:
        _current.fraction = fraction
        _current.render()
