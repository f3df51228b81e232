"""Run an experiment's independent training runs in parallel worker processes, with the same results for any
number of workers.

A job is a call `function(**kwargs)` of a module-level function of an experiment file that takes plain
values (names, numbers), seeds itself, loads its data by name and returns a JSON-able dict of numbers. Such a
call is a pure function of its arguments, so it gives the same numbers whether it runs in this process or in a
worker. Workers are spawned (never forked: a forked child cannot use the OpenMP pool of its parent) and run
one torch thread each; they are started once and reused by every experiment of a run.

Example:
    >>> from batchnorm.lab.jobs import run_jobs
    >>> run_jobs(dict, [dict(seed=0), dict(seed=1)])   # any module-level function of keyword arguments
    [{'seed': 0}, {'seed': 1}]
"""

from __future__ import annotations

import atexit
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Any, Callable

from . import progress

__all__ = ["run_jobs", "set_workers", "workers", "default_workers", "cpu_seconds"]

_workers = 1
_executor: ProcessPoolExecutor | None = None
_worker_cpu = 0.0  # CPU seconds the worker processes spent in the calls of run_jobs so far


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and by the calls it ran in worker processes (time.process_time
    of each call, measured in its worker): what a run costs, whatever else the machine is doing."""
    return time.process_time() + _worker_cpu


def _timed(function: Callable[..., Any], kwargs: dict) -> tuple[Any, float]:
    """`function(**kwargs)` in a worker, with the CPU seconds it took there."""
    start = time.process_time()
    result = function(**kwargs)
    return result, time.process_time() - start


def default_workers() -> int:
    """The number of cores this process may use (the default of `batchnorm lab --jobs`)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def set_workers(count: int) -> None:
    """Use `count` worker processes for later `run_jobs` calls (1: run jobs in this process)."""
    global _workers
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"jobs must be an integer >= 1 (worker processes), got {count!r}")
    if count != _workers:
        shutdown()
        _workers = count


def workers() -> int:
    """The number of worker processes `run_jobs` uses now."""
    return _workers


def shutdown() -> None:
    """Stop the worker processes (they are started again when needed)."""
    global _executor
    if _executor is not None:
        _executor.shutdown(wait=True, cancel_futures=True)
        _executor = None


atexit.register(shutdown)


def use_own_kernels() -> None:
    """Every batch norm of the lab on this package's kernels (`BATCHNORM_BACKEND=numba`), small inputs included:
    the lab studies the project's layers (E15 times their kernels against torch's), and its results must not
    depend on the measured crossover to torch's native batch norm."""
    from ..kernels import config

    config.BACKEND = "numba"


def _start_worker() -> None:
    import torch

    torch.set_num_threads(1)
    use_own_kernels()


def _executor_for_run() -> ProcessPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ProcessPoolExecutor(max_workers=_workers, mp_context=get_context("spawn"),
                                        initializer=_start_worker)
    return _executor


def run_jobs(function: Callable[..., Any], calls: list[dict]) -> list[Any]:
    """`[function(**kwargs) for kwargs in calls]`, in worker processes when `set_workers(n > 1)` was called.

    Results come back in the order of `calls`; the progress bar advances as each call finishes. An exception in a
    call is raised here (the remaining calls are cancelled).

    Args:
        function: a module-level function (workers import it by name) taking keyword arguments.
        calls: one dict of keyword arguments per call; plain values only (they are pickled).
    """
    calls = list(calls)
    if not callable(function):
        raise TypeError(f"function must be callable, got {type(function).__name__}")
    if _workers == 1 or len(calls) <= 1:
        return [function(**kwargs) for kwargs in progress.jobs(calls)]
    global _worker_cpu
    executor = _executor_for_run()
    futures = [executor.submit(_timed, function, kwargs) for kwargs in calls]
    pending = set(futures)
    try:
        for _ in progress.jobs(range(len(futures))):
            if not any(f.done() for f in pending):
                wait(pending, return_when=FIRST_COMPLETED)
            finished = next(f for f in pending if f.done())
            pending.discard(finished)
            finished.result()  # raise a failed call's exception now
    except BaseException:
        for future in pending:
            future.cancel()
        raise
    _worker_cpu += sum(f.result()[1] for f in futures)
    return [f.result()[0] for f in futures]
