"""Timing for `batchnorm bench`: calls per round, the timer, and the environment of the measuring
subprocesses (every benchmark module times with these, so that their numbers compare)."""

from __future__ import annotations

import os
import time


def timer(fn, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def calls_per_round(fn, min_round_seconds: float) -> int:
    """How many calls of fn make a round of about `min_round_seconds`, judged from the fastest of three timed
    calls after three warm-up calls (the first calls of a process load kernels, start thread pools and touch
    fresh memory, and would make every round a single call)."""
    for _ in range(3):
        fn()
    once = max(min(timer(fn, 1) for _ in range(3)), 1e-7)
    return max(1, int(min_round_seconds / once))


def environment(omp_passive: bool) -> dict:
    """The child processes' environment: this one's, with OMP_WAIT_POLICY=PASSIVE when asked for."""
    env = dict(os.environ)
    if omp_passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env
