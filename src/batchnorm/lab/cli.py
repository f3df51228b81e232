"""`batchnorm lab [EXPERIMENT ...] [--quick|--full] [--data ...] [--seeds N] [--out DIR]`: run the lab's
experiments and write DIR/index.html."""

from __future__ import annotations

import argparse
import os
import sys
import time

from .data import DATA_CHOICES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                        help="experiments to run (E1 .. E15; default: all, in order)")
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--quick", dest="scale", action="store_const", const="quick",
                       help="tiny scale (seconds per experiment; what the tests run)")
    scale.add_argument("--full", dest="scale", action="store_const", const="full",
                       help="larger scale: more steps and seeds (tens of minutes)")
    parser.set_defaults(scale="default")
    parser.add_argument("--data", default="digits",
                        help=f"dataset: {' | '.join(DATA_CHOICES)} (default: digits, bundled with scikit-learn)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per setting (default: per experiment)")
    parser.add_argument("--out", default="lab-report", help="report directory (default: lab-report)")
    parser.add_argument("--force", action="store_true", help="ignore cached results and run again")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the lab's models are small; more threads cost more)")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")


def run(args: argparse.Namespace) -> int:
    import torch

    from .experiments import EXPERIMENTS, load_experiment
    from .runner import run_all

    if args.list:
        for e in EXPERIMENTS:
            print(f"{e:>4}  {load_experiment(e).TITLE}")
        return 0
    if args.threads < 1:
        raise SystemExit(f"batchnorm lab: --threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        results = run_all(args.experiments, args.scale, args.data, args.seeds, args.out, args.force)
    except ValueError as error:
        print(f"batchnorm lab: {error}", file=sys.stderr)
        return 2
    counts = {}
    for r in results:
        for f in r.findings:
            counts[f.verdict] = counts.get(f.verdict, 0) + 1
    print(f"batchnorm lab: {len(results)} experiments, {sum(counts.values())} claims ("
          + ", ".join(f"{n} {v}" for v, n in counts.items()) + f") in {time.perf_counter() - start:.0f} s; "
          f"report: {os.path.abspath(os.path.join(args.out, 'index.html'))}")
    return 0
