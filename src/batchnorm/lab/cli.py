"""`batchnorm lab [EXPERIMENT ...] [--quick|--full] [--data ...] [--seeds N] [--seed-base K] [--jobs N] [--out DIR]
[--force]`: run the lab's experiments and write DIR/index.html and DIR/results.json."""

from __future__ import annotations

import argparse
import os
import sys
import time

from .data import DATA_CHOICES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                        help="experiments to run (E1, E2, ...; default: all, in order; --list shows them)")
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--quick", dest="scale", action="store_const", const="quick",
                       help="tiny scale (seconds per experiment; what the tests run)")
    scale.add_argument("--full", dest="scale", action="store_const", const="full",
                       help="larger scale: more steps and seeds (tens of minutes)")
    parser.set_defaults(scale="default")
    parser.add_argument("--data", default="digits",
                        help=f"dataset: {' | '.join(DATA_CHOICES)} (default: digits, bundled with scikit-learn)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm (default: per experiment, >= 5)")
    parser.add_argument("--seed-base", type=int, default=0, metavar="K",
                        help="first seed: runs seeds K .. K+seeds-1 (default 0; a second run with another K "
                             "checks that the verdicts are stable)")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="training runs in parallel worker processes, one torch thread each (default: the "
                             "number of cores); results are identical for any N")
    parser.add_argument("--out", default="lab-report", help="report directory (default: lab-report)")
    parser.add_argument("--force", action="store_true", help="ignore cached results and run again")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the main process (default 1: the lab's models are small)")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")


def _refuse(message: str) -> int:
    print(f"batchnorm lab: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    import torch

    from .experiments import EXPERIMENTS, load_experiment
    from .runner import run_all

    if args.list:
        for e in EXPERIMENTS:
            print(f"{e:>4}  {load_experiment(e).TITLE}")
        return 0
    if args.threads < 1:
        return _refuse(f"--threads must be >= 1, got {args.threads}")
    from .jobs import default_workers

    jobs = args.jobs if args.jobs is not None else default_workers()
    if jobs < 1:
        return _refuse(f"--jobs must be >= 1 (worker processes), got {args.jobs}")
    if args.seed_base < 0:
        return _refuse(f"--seed-base must be >= 0 (the first seed), got {args.seed_base}")
    if args.seeds is not None and args.seeds < 1:
        return _refuse(f"--seeds must be >= 1, got {args.seeds}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    from .jobs import cpu_seconds

    cpu_start = cpu_seconds()
    try:
        from .data import load

        load(args.data)   # a dataset that cannot be read is refused before any experiment starts
        results = run_all(args.experiments, args.scale, args.data, args.seeds, args.out, args.force,
                          seed_base=args.seed_base, jobs=jobs)
    except ValueError as error:
        return _refuse(str(error))
    counts = {}
    for r in results:
        for f in r.findings:
            counts[f.verdict] = counts.get(f.verdict, 0) + 1
    print(f"batchnorm lab: {len(results)} experiments, {sum(counts.values())} findings ("
          + ", ".join(f"{n} {v}" for v, n in counts.items()) + f") in {time.perf_counter() - start:.0f} s wall-clock, {cpu_seconds() - cpu_start:.0f} s CPU; "
          f"report: {os.path.abspath(os.path.join(args.out, 'index.html'))}")
    return 0
